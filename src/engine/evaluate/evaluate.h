// Perplexity and KL-divergence of quantized models against their base, the way llama-perplexity measures them:
// chunks of ctx tokens (BOS first), each scored on its second half. The base model's log-probabilities are
// computed once and kept on disk at 16 bits an entry (core/format/logprob_file.h): in the cache (atomically,
// the cache folder kept under a size limit, least recently used files first out), or without one in a temporary
// file removed at the end. A quant's pass reads them back one chunk at a time, so memory does not grow with the
// text or the vocabulary beyond one chunk's rows.
#pragma once

#include "core/report/eval_stats.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace imx {
class TemporaryFile;
}

namespace imx::engine {

struct EvalOptions {
    std::string text_file;
    uint32_t    ctx = 512;
    int         max_chunks = -1;
    int         threads = 0;
    int         n_gpu_layers = 99;
    std::string cache_dir;  // empty: no cache (a temporary file)
    uint64_t    cache_limit = 16ull << 30;  // bytes the cache folder may hold
    bool        verbose = false;
    // called after each chunk of each model: which model, chunks done, chunks in all
    std::function<void(const std::string & model, uint32_t done, uint32_t total)> progress;
};

class Evaluator {
public:
    // Tokenizes the text with the base's vocabulary and loads or computes the base's log-probabilities.
    Evaluator(const std::string & base, const EvalOptions & o);
    ~Evaluator();

    const TokenScores & base_scores() const { return base_scores_; }
    uint32_t chunks() const { return (uint32_t) chunks_.size(); }
    bool base_from_cache() const { return from_cache_; }
    const std::string & cache_file() const { return cache_file_; }

    // Runs `model` over the same chunks and scores every token against the base.
    TokenScores score(const std::string & model) const;

private:
    // runs a model and hands the logits of each scored token to `use(token_index, logits, next_token)`
    void run(const std::string & model,
             const std::function<void(size_t, const float *, int32_t)> & use) const;

    // the base's pass, written to `path`
    void compute_base(const std::string & base, const std::string & path);

    EvalOptions                       o_;
    std::vector<std::vector<int32_t>> chunks_;
    size_t                            n_vocab_ = 0;
    size_t                            n_scored_ = 0;
    uint64_t                          key_ = 0;
    std::string                       logprobs_;  // the file holding the base's log-probs
    std::unique_ptr<TemporaryFile>    temporary_;  // that file, without a cache
    TokenScores                       base_scores_;
    bool                              from_cache_ = false;
    std::string                       cache_file_;
};

}  // namespace imx::engine
