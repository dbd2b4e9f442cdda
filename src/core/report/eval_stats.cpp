#include "core/report/eval_stats.h"

#include <algorithm>
#include <cmath>

namespace imx {

namespace {
constexpr double kZ = 1.959963984540054;  // two-sided 95%
}

Estimate mean_estimate(std::span<const float> x) {
    const size_t n = x.size();
    if (n == 0) {
        return {};
    }
    double s = 0;
    for (float v : x) s += v;
    const double mean = s / (double) n;
    double ss = 0;
    for (float v : x) ss += ((double) v - mean) * ((double) v - mean);
    const double se = n > 1 ? std::sqrt(ss / (double) (n - 1) / (double) n) : 0;
    return {mean, mean - kZ * se, mean + kZ * se};
}

Estimate quantile_estimate(std::span<const float> x, double q) {
    const size_t n = x.size();
    if (n == 0) {
        return {};
    }
    std::vector<float> v(x.begin(), x.end());
    std::sort(v.begin(), v.end());
    auto at = [&](double rank) {
        const long r = std::lround(rank);
        return (double) v[(size_t) std::clamp<long>(r, 0, (long) n - 1)];
    };
    // the ranks between which the q-quantile lies with 95% probability (binomial, normal approximation)
    const double centre = q * (double) (n - 1);
    const double half = kZ * std::sqrt((double) n * q * (1 - q));
    return {at(centre), at(centre - half), at(centre + half)};
}

Estimate proportion_estimate(int64_t hits, int64_t n) {
    if (n == 0) {
        return {};
    }
    const double p = (double) hits / (double) n;
    const double se = std::sqrt(p * (1 - p) / (double) n);
    return {p, std::max(0.0, p - kZ * se), std::min(1.0, p + kZ * se)};
}

Estimate paired_difference(std::span<const float> a, std::span<const float> b) {
    std::vector<float> d(std::min(a.size(), b.size()));
    for (size_t i = 0; i < d.size(); ++i) d[i] = a[i] - b[i];
    return mean_estimate(d);
}

Estimate paired_ppl_ratio(std::span<const float> nll_a, std::span<const float> nll_b) {
    const Estimate d = paired_difference(nll_a, nll_b);
    return {std::exp(d.value), std::exp(d.lo), std::exp(d.hi)};
}

QualitySummary summarize(const TokenScores & s) {
    QualitySummary q;
    q.n_tokens = s.nll.size();
    const Estimate nll = mean_estimate(s.nll);
    q.ppl = {std::exp(nll.value), std::exp(nll.lo), std::exp(nll.hi)};
    if (!s.kld.empty()) {
        q.kld_mean = mean_estimate(s.kld);
        q.kld_median = quantile_estimate(s.kld, 0.5);
        q.kld_p99 = quantile_estimate(s.kld, 0.99);
        int64_t hits = 0;
        for (uint8_t t : s.top1) hits += t;
        q.top1 = proportion_estimate(hits, (int64_t) s.top1.size());
    }
    return q;
}

void log_softmax(const float * logits, size_t n, float * out) {
    const float mx = *std::max_element(logits, logits + n);
    double sum = 0;
    for (size_t i = 0; i < n; ++i) sum += std::exp((double) (logits[i] - mx));
    const float lse = (float) (mx + std::log(sum));
    for (size_t i = 0; i < n; ++i) out[i] = logits[i] - lse;
}

void score_token(const float * base_logp, const float * logits, size_t n_vocab, int32_t next_token,
                 TokenScores & out, std::vector<float> & scratch) {
    scratch.resize(n_vocab);
    log_softmax(logits, n_vocab, scratch.data());
    out.nll.push_back(-scratch[(size_t) next_token]);
    if (!base_logp) {
        return;
    }
    double kld = 0;
    size_t best_p = 0, best_q = 0;
    for (size_t v = 0; v < n_vocab; ++v) {
        if (base_logp[v] != -INFINITY) {  // p = 0 (core/format/logprob_file.h) adds nothing
            kld += std::exp((double) base_logp[v]) * ((double) base_logp[v] - (double) scratch[v]);
        }
        best_p = base_logp[v] > base_logp[best_p] ? v : best_p;
        best_q = scratch[v] > scratch[best_q] ? v : best_q;
    }
    out.kld.push_back((float) kld);
    out.top1.push_back(best_p == best_q);
}

}  // namespace imx
