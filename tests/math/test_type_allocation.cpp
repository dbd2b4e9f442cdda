// The type allocation solver against brute force: within the budget, never below its own lower bound, and
// that bound never above the true optimum.
#include "core/error.h"
#include "core/math/type_allocation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

using namespace imx;

namespace {

// the least damage within the budget, by trying every combination
double brute_force(const std::vector<TensorTypeOptions> & t, uint64_t budget, size_t i = 0, uint64_t bytes = 0,
                   double damage = 0) {
    if (bytes > budget) {
        return INFINITY;
    }
    if (i == t.size()) {
        return damage;
    }
    double best = INFINITY;
    for (const auto & o : t[i].options) {
        best = std::min(best, brute_force(t, budget, i + 1, bytes + o.bytes, damage + o.damage));
    }
    return best;
}

std::vector<TensorTypeOptions> random_tensors(std::mt19937 & rng, int n) {
    std::uniform_int_distribution<int> rows(1, 20), noise(0, 3);
    std::vector<TensorTypeOptions> t;
    for (int i = 0; i < n; ++i) {
        TensorTypeOptions x{"t" + std::to_string(i), {}};
        const double sensitivity = std::uniform_real_distribution<double>(0.01, 1.0)(rng);
        const int r = rows(rng);
        for (int bits = 2; bits <= 8; ++bits) {  // damage falls about 4× per bit, with some options dominated
            x.options.push_back({"b" + std::to_string(bits), (uint64_t) (r * (bits * 32 + noise(rng))),
                                 sensitivity * std::pow(4.0, -bits) * (1 + 0.5 * noise(rng))});
        }
        t.push_back(x);
    }
    return t;
}

}  // namespace

TEST(TypeAllocation, WithinBudgetAndBracketsTheOptimum) {
    std::mt19937 rng(7);
    for (int trial = 0; trial < 40; ++trial) {
        const auto t = random_tensors(rng, 5);
        const uint64_t lo = smallest_allocation(t), hi = largest_allocation(t);
        const uint64_t budget = lo + (hi - lo) * (uint64_t) (trial % 10) / 10;
        const TypeAllocation a = allocate_types(t, budget);
        const double best = brute_force(t, budget);
        EXPECT_LE(a.bytes, budget);
        EXPECT_LE(a.lower_bound, best + 1e-12) << trial;
        EXPECT_GE(a.damage, best - 1e-12) << trial;
        // the choice adds up
        uint64_t bytes = 0;
        double damage = 0;
        for (size_t i = 0; i < t.size(); ++i) {
            bytes += t[i].options[a.choice[i]].bytes;
            damage += t[i].options[a.choice[i]].damage;
        }
        EXPECT_EQ(bytes, a.bytes);
        EXPECT_NEAR(damage, a.damage, 1e-12);
        // the rounded DP is optimal but for its rounding of bytes to 1/4096 of the budget
        EXPECT_LE(a.damage, best * 1.02 + 1e-12) << trial;
    }
}

TEST(TypeAllocation, EndsAndFrontier) {
    std::mt19937 rng(3);
    const auto t = random_tensors(rng, 8);
    // the whole budget: every tensor at its least damage, and the bound is exact
    const TypeAllocation top = allocate_types(t, largest_allocation(t));
    EXPECT_DOUBLE_EQ(top.damage, top.lower_bound);
    // the least budget: every tensor at its smallest option
    const TypeAllocation bottom = allocate_types(t, smallest_allocation(t));
    EXPECT_EQ(bottom.bytes, smallest_allocation(t));
    EXPECT_THROW(allocate_types(t, smallest_allocation(t) - 1), Error);
    // the frontier only grows in bytes and falls in damage
    const auto f = allocation_frontier(t);
    ASSERT_GE(f.size(), 2u);
    for (size_t i = 1; i < f.size(); ++i) {
        EXPECT_GT(f[i].bytes, f[i - 1].bytes);
        EXPECT_LT(f[i].damage, f[i - 1].damage);
    }
    EXPECT_DOUBLE_EQ(f.back().damage, top.damage);
}
