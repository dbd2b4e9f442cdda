// Quality numbers of a quantized model against its base, from per-token scores, each with a 95% interval.
//
// Per scored token t (llama-perplexity's tokens: the second half of every chunk):
//     nll[t] = -log q(token)        kld[t] = Σ_v p(v) (log p(v) - log q(v))        top1[t] = argmax p == argmax q
// with p the base model's distribution and q the quantized one's. Intervals: normal approximation for means
// and proportions (PPL via its log), distribution-free order statistics for the median and p99. Tokens of one
// text are not independent, so the intervals are a little optimistic; a paired difference between two quants
// over the same tokens is the sharper test of "is A better than B".
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace imx {

struct Estimate {
    double value = 0, lo = 0, hi = 0;
};

Estimate mean_estimate(std::span<const float> x);
Estimate quantile_estimate(std::span<const float> x, double q);  // q in [0, 1]
Estimate proportion_estimate(int64_t hits, int64_t n);
Estimate paired_difference(std::span<const float> a, std::span<const float> b);  // mean of a - b
// PPL(a) / PPL(b) over the same tokens: exp of the paired mean difference of their nll (the sharper test of
// "is A's perplexity worse than B's" than the two PPL intervals side by side)
Estimate paired_ppl_ratio(std::span<const float> nll_a, std::span<const float> nll_b);

struct TokenScores {
    std::vector<float>   nll;
    std::vector<float>   kld;   // empty for the base itself
    std::vector<uint8_t> top1;  // 1 where the quant's most likely token is the base's
};

struct QualitySummary {
    size_t   n_tokens = 0;
    Estimate ppl, kld_mean, kld_median, kld_p99, top1;
};

QualitySummary summarize(const TokenScores & s);

// log p(v) for all v: logits minus their log-sum-exp (accumulated in double, as llama-perplexity).
void log_softmax(const float * logits, size_t n, float * out);

// Adds one token's scores: `base_logp` from log_softmax of the base, `logits` the quant's raw logits.
void score_token(const float * base_logp, const float * logits, size_t n_vocab, int32_t next_token,
                 TokenScores & out, std::vector<float> & scratch);

}  // namespace imx
