// collect --target-model: the matmul inputs of the target (unquantized) model over one chunk, recorded through
// its eval callback, so that the collector — running the quantized model over the same chunk — can form the
// cross covariance X̃ᵀX of each input (core/covariance.h) for sequential quantization.
//
// The two models share one graph shape and one tokenisation, so an input is found by the name of the weight
// that reads it, and its rows line up token for token. Routed experts are the exception: the quantized model may
// route a token elsewhere, so each input keeps the target's routing (ids) too.
//
// For some weights the output is recorded instead of the input (record_outputs_of): the cross term then takes
// X̃ᵀY, Y = X Wᵀ, in place of X̃ᵀX (core/covariance.h: cross_out) — smaller where the weight has fewer rows than
// columns, and less to keep per token.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

struct ggml_tensor;

namespace imx::engine {

class TargetInputs {
public:
    // One matmul input of the chunk, copied to the host: row (i1, i2, i3) of ne[0] floats at
    // rows[((i3·ne[2] + i2)·ne[1] + i1)·ne[0]]. For MUL_MAT_ID, ids[tok·n_used + k] is the expert of slot k.
    struct Input {
        std::vector<float>   rows;
        int64_t              ne[4] = {0, 0, 0, 0};
        std::vector<int32_t> ids;
        int64_t              n_used = 0;
        const float * row(int64_t i1, int64_t i2 = 0, int64_t i3 = 0) const {
            return rows.data() + ((i3 * ne[2] + i2) * ne[1] + i1) * ne[0];
        }
    };

    // The ggml_backend_sched_eval_callback: user_data is the TargetInputs.
    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);
    // Also the output head's input (collect --process-output).
    void record_output_head(bool on) { output_head_ = on; }
    // Only the inputs of weights matching (empty: all); the pass stops after the last of them (as the collector),
    // and load() steps over the others.
    void only(const std::string & regex) { only_ = std::regex(regex.empty() ? std::string(".*") : regex); }
    // Weights matching `regex` whose matmul is a plain 2-D one (MUL_MAT, one matrix) with fewer rows than
    // columns have their output recorded instead of their input; each must be its input's only reader (the
    // output serves that reader alone).
    void record_outputs_of(const std::string & regex) { outputs_of_ = std::regex(regex); }
    // Off: the pass goes on after the last input recorded (a block run alone reads the block's output after it).
    void stop_after_last_input(bool on) { stop_after_last_ = on; }
    // Before each chunk's forward pass of the target model.
    void begin_chunk();
    // The input `weight` read in this chunk; null if the target model has no such matmul.
    const Input * find(const std::string & weight) const;
    // The output of `weight` recorded in this chunk (record_outputs_of): row i1 of ne[0] values; else null.
    const Input * find_output(const std::string & weight) const;
    // This chunk's inputs appended to `f` (inputs shared by several weights once), and read back in the same
    // order in place of a forward pass: --sequential records the float block's inputs in its first pass over the
    // block and reads them in the second. Throw imx::Error naming `path` on a short write or read.
    void save(std::FILE * f, const std::string & path) const;
    void load(std::FILE * f, const std::string & path);

private:
    bool wants(const ggml_tensor * t);
    // false once the last input wanted has been recorded: the rest of the graph is not needed
    bool record(const ggml_tensor * t);

    std::map<std::string, std::shared_ptr<Input>> inputs_, outputs_;
    const ggml_tensor *                            last_input_ = nullptr;  // q/k/v, gate/up share one input
    const ggml_tensor *                            last_ids_ = nullptr;
    std::shared_ptr<Input>                         last_;
    bool                                           output_head_ = false;
    std::vector<char>                              copy_;
    std::regex                                     only_{".*"};
    std::optional<std::regex>                      outputs_of_;
    std::string                                    last_recorded_, final_;  // final_: learned from the first chunk
    bool                                           stop_after_last_ = true;
};

}  // namespace imx::engine
