// The estimates behind imx eval's table: means, quantiles, proportions and their intervals, and per-token KLD.
#include "core/report/eval_stats.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace imx;

TEST(EvalStats, MeanIntervalShrinksWithMoreData) {
    std::vector<float> small, large;
    for (int i = 0; i < 100; ++i) small.push_back((float) (i % 10));
    for (int i = 0; i < 10000; ++i) large.push_back((float) (i % 10));
    const Estimate a = mean_estimate(small), b = mean_estimate(large);
    EXPECT_NEAR(a.value, 4.5, 1e-9);
    EXPECT_NEAR(b.value, 4.5, 1e-9);
    EXPECT_LT(a.lo, 4.5);
    EXPECT_GT(a.hi, 4.5);
    EXPECT_NEAR((a.hi - a.lo) / (b.hi - b.lo), 10.0, 0.1);
}

TEST(EvalStats, QuantilesAndTheirIntervals) {
    std::vector<float> x;
    for (int i = 0; i < 1001; ++i) x.push_back((float) (1000 - i));
    const Estimate med = quantile_estimate(x, 0.5);
    EXPECT_EQ(med.value, 500);
    EXPECT_LT(med.lo, 500);
    EXPECT_GT(med.hi, 500);
    EXPECT_EQ(quantile_estimate(x, 0.99).value, 990);
}

TEST(EvalStats, ProportionInterval) {
    const Estimate p = proportion_estimate(90, 100);
    EXPECT_DOUBLE_EQ(p.value, 0.9);
    EXPECT_NEAR(p.hi - p.value, 1.96 * std::sqrt(0.09 / 100), 1e-3);
    EXPECT_LE(proportion_estimate(100, 100).hi, 1.0);
}

TEST(EvalStats, KldIsZeroAgainstItselfAndPositiveOtherwise) {
    const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f};
    std::vector<float> base(4), scratch;
    log_softmax(logits.data(), 4, base.data());
    double total = 0;
    for (float v : base) total += std::exp(v);
    EXPECT_NEAR(total, 1.0, 1e-6);

    TokenScores s;
    score_token(base.data(), logits.data(), 4, 1, s, scratch);
    EXPECT_EQ(s.kld[0], 0.0f);
    EXPECT_EQ(s.top1[0], 1);
    EXPECT_NEAR(s.nll[0], -base[1], 1e-7);

    const std::vector<float> other = {2.5f, 1.0f, 0.5f, -1.0f};
    score_token(base.data(), other.data(), 4, 1, s, scratch);
    EXPECT_GT(s.kld[1], 0.01f);
    EXPECT_EQ(s.top1[1], 0);
}

TEST(EvalStats, PairedDifferenceSeesWhatUnpairedIntervalsHide) {
    std::vector<float> a, b;
    for (int i = 0; i < 1000; ++i) {
        a.push_back((float) (i % 50));        // wide spread
        b.push_back((float) (i % 50) + 0.1f);  // always a little worse
    }
    const Estimate d = paired_difference(b, a);
    EXPECT_NEAR(d.value, 0.1, 1e-5);
    EXPECT_GT(d.lo, 0.0);  // clearly worse, paired
    const Estimate ea = mean_estimate(a), eb = mean_estimate(b);
    EXPECT_LT(eb.lo, ea.hi);  // while the unpaired intervals overlap
}
