// GPTQ-style rounding (core/hessian_rounding) with a small symmetric 4-bit block quantizer standing in for
// ggml's: the loss bookkeeping must be exact, and feedback through a correlated Hessian must beat the diagonal.
#include "core/covariance.h"
#include "core/hessian_rounding.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

namespace imx {
namespace {

// bytes: float scale | int8 q[block]; decoded = scale·q, q in [-7, 7]; the scale minimises the weighted error
// over a few candidates (so importances matter, as in ggml's quantizers)
BlockQuantizer toy_quantizer(int64_t block) {
    BlockQuantizer q;
    q.block = block;
    q.block_bytes = sizeof(float) + (size_t) block;
    q.encode = [block](const float * t, const float * imp, uint8_t * bytes, float * decoded) {
        float amax = 0;
        for (int64_t i = 0; i < block; ++i) {
            amax = std::max(amax, std::fabs(t[i]));
        }
        float best_scale = 0, best_err = INFINITY;
        for (int c = 0; c < 8; ++c) {
            const float scale = amax / (7.0f - 0.25f * c);
            float err = 0;
            for (int64_t i = 0; i < block && scale > 0; ++i) {
                const float v = scale * std::clamp(std::nearbyint(t[i] / scale), -7.0f, 7.0f);
                err += imp[i] * (v - t[i]) * (v - t[i]);
            }
            if (err < best_err) {
                best_err = err;
                best_scale = scale;
            }
        }
        std::memcpy(bytes, &best_scale, sizeof best_scale);
        for (int64_t i = 0; i < block; ++i) {
            const float r = best_scale > 0 ? std::clamp(std::nearbyint(t[i] / best_scale), -7.0f, 7.0f) : 0.0f;
            bytes[sizeof(float) + i] = (uint8_t) (int8_t) r;
            decoded[i] = best_scale * r;
        }
    };
    return q;
}

// XᵀX of tokens whose columns are strongly correlated (a few shared factors plus noise), as activations are
std::vector<double> correlated_hessian(int64_t n, int64_t tokens, std::mt19937 & rng) {
    std::normal_distribution<float> g(0, 1);
    const int64_t factors = 4;
    std::vector<float> mix((size_t) (factors * n));
    for (auto & m : mix) {
        m = g(rng);
    }
    std::vector<float> columns((size_t) (n * tokens));  // transposed, as Covariance::add takes them
    for (int64_t t = 0; t < tokens; ++t) {
        float f[factors];
        for (auto & x : f) {
            x = g(rng);
        }
        for (int64_t i = 0; i < n; ++i) {
            float v = 0.3f * g(rng);
            for (int64_t k = 0; k < factors; ++k) {
                v += f[k] * mix[k * n + i];
            }
            columns[i * tokens + t] = v;
        }
    }
    Covariance c(n, n, 1);
    c.add(0, columns.data(), tokens, 2);
    return c.dense(0);
}

TEST(HessianRounding, LossOfTheBlocksIsTheLossOfTheRow) {
    std::mt19937 rng(1);
    const int64_t n = 64, block = 16;
    const HessianRounder r(correlated_hessian(n, 400, rng), n, block, {});
    const BlockQuantizer q = toy_quantizer(block);
    std::normal_distribution<float> g(0, 1);
    for (int row = 0; row < 5; ++row) {
        std::vector<float> w((size_t) n), dec((size_t) n);
        for (auto & x : w) {
            x = g(rng);
        }
        std::vector<uint8_t> bytes((n / block) * q.block_bytes);
        const double claimed = r.round_row(w.data(), q, bytes.data(), dec.data());
        EXPECT_NEAR(claimed, r.loss(w.data(), dec.data()), 1e-9 * r.loss(w.data(), dec.data()));
        // the bytes decode to what round_row reported
        for (int64_t b = 0; b < n / block; ++b) {
            float scale;
            std::memcpy(&scale, bytes.data() + b * q.block_bytes, sizeof scale);
            for (int64_t i = 0; i < block; ++i) {
                const int8_t v = (int8_t) bytes[b * q.block_bytes + sizeof(float) + i];
                EXPECT_EQ(dec[b * block + i], scale * v);
            }
        }
    }
}

TEST(HessianRounding, FeedbackBeatsTheDiagonalOnCorrelatedInputs) {
    std::mt19937 rng(2);
    const int64_t n = 128, block = 32;
    const std::vector<double> h = correlated_hessian(n, 1000, rng);
    const HessianRounder r(h, n, block, {});
    const BlockQuantizer q = toy_quantizer(block);
    std::normal_distribution<float> g(0, 1);
    double hessian = 0, diagonal = 0;
    for (int row = 0; row < 20; ++row) {
        std::vector<float> w((size_t) n), dec((size_t) n), diag_dec((size_t) n);
        for (auto & x : w) {
            x = g(rng);
        }
        std::vector<uint8_t> bytes((n / block) * q.block_bytes);
        hessian += r.round_row(w.data(), q, bytes.data(), dec.data());
        // the imatrix way: each block alone, importance diag(H)
        std::vector<float> imp((size_t) n);
        for (int64_t i = 0; i < n; ++i) {
            imp[i] = (float) h[i * n + i];
        }
        for (int64_t b = 0; b < n; b += block) {
            q.encode(w.data() + b, imp.data() + b, bytes.data(), diag_dec.data() + b);
        }
        diagonal += r.loss(w.data(), diag_dec.data());
    }
    EXPECT_LT(hessian, 0.7 * diagonal) << "hessian " << hessian << " vs diagonal " << diagonal;
    RecordProperty("ratio", std::to_string(hessian / diagonal));
}

TEST(HessianRounding, DiagonalHessianChangesNothing) {
    // without correlations there is nothing to feed back, and the shifted targets equal the plain ones
    const int64_t n = 32, block = 16;
    std::vector<double> h((size_t) (n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) {
        h[i * n + i] = 1.0 + i % 3;
    }
    const HessianRounder r(h, n, block, {});
    const BlockQuantizer q = toy_quantizer(block);
    std::mt19937 rng(3);
    std::normal_distribution<float> g(0, 1);
    std::vector<float> w((size_t) n), dec((size_t) n), plain((size_t) n);
    for (auto & x : w) {
        x = g(rng);
    }
    std::vector<uint8_t> bytes((n / block) * q.block_bytes);
    r.round_row(w.data(), q, bytes.data(), dec.data());
    std::vector<float> imp((size_t) n);
    for (int64_t i = 0; i < n; ++i) {
        imp[i] = (float) h[i * n + i];
    }
    for (int64_t b = 0; b < n; b += block) {
        q.encode(w.data() + b, imp.data() + b, bytes.data(), plain.data() + b);
    }
    EXPECT_EQ(dec, plain);
}

TEST(Covariance, BlocksHoldTheDiagonalBlocksOfTheWholeMatrix) {
    std::mt19937 rng(4);
    std::normal_distribution<float> g(0, 1);
    const int64_t n = 512, tokens = 37;
    std::vector<float> columns((size_t) (n * tokens));
    for (auto & x : columns) {
        x = g(rng);
    }
    Covariance whole(n, n, 2), blocks(n, 256, 2);
    whole.add(1, columns.data(), tokens, 3);
    blocks.add(1, columns.data(), tokens, 1);
    const auto a = whole.dense(1), b = blocks.dense(1);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            EXPECT_EQ(b[i * n + j], (i / 256 == j / 256) ? a[i * n + j] : 0.0) << i << "," << j;
        }
        double sq = 0;
        for (int64_t t = 0; t < tokens; ++t) {
            sq += (double) columns[i * tokens + t] * columns[i * tokens + t];
        }
        EXPECT_NEAR(a[i * n + i], sq, 1e-5 * sq);
    }
    EXPECT_EQ(whole.dense(0), std::vector<double>((size_t) (n * n), 0.0));  // other matrices untouched
}

}  // namespace
}  // namespace imx
