// Thin RAII wrappers over libllama: load a model, make a context, tokenize. Errors name the file.
#pragma once

#include "llama.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace imx::engine {

struct ModelFree { void operator()(llama_model * m) const { llama_model_free(m); } };
struct ContextFree { void operator()(llama_context * c) const { llama_free(c); } };
using ModelPtr = std::unique_ptr<llama_model, ModelFree>;
using ContextPtr = std::unique_ptr<llama_context, ContextFree>;

// Initialises the backends once and routes llama.cpp's log: errors always, the rest only when verbose.
void init_llama(bool verbose);

// While alive, llama.cpp's error lines are collected (and not printed unless verbose) so that the caller can
// report a failure in one line; other lines go to `on_info` (progress parsing). One at a time.
class LogCapture {
public:
    explicit LogCapture(std::function<void(const std::string &)> on_info = {});
    ~LogCapture();
    LogCapture(const LogCapture &) = delete;
    LogCapture & operator=(const LogCapture &) = delete;
    const std::string & errors() const { return errors_; }
    void on_line(int level, const char * text);

private:
    std::function<void(const std::string &)> on_info_;
    std::string errors_;
};

struct ModelOptions {
    int n_gpu_layers = 99;
    int experts_used = 0;  // > 0: override the model's <arch>.expert_used_count
};
ModelPtr load_model(const std::string & path, const ModelOptions & o);

// The model's general.architecture, read without loading weights.
std::string model_architecture(const std::string & path);

// The model's metadata and vocabulary only (no weights): enough to tokenize.
ModelPtr load_vocab_only(const std::string & path);

// A context for one chunk at a time: n_ctx = n_batch = n_ubatch = `chunk` tokens, one sequence, so that the
// result for a chunk never depends on batch sizes. threads <= 0: all cores.
llama_context_params chunk_context_params(uint32_t chunk, int threads);

// Puts one sequence (id 0, positions from 0) into `batch`; tokens from `first_output` on produce logits.
void fill_batch(llama_batch & batch, const std::vector<llama_token> & tokens, size_t first_output);

std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool parse_special);

}  // namespace imx::engine
