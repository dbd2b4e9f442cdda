// GPTQ-style rounding (core/hessian_rounding) with a small symmetric 4-bit block quantizer standing in for
// ggml's: the loss bookkeeping must be exact, and feedback through a correlated Hessian must beat the diagonal.
#include "core/math/covariance.h"
#include "core/error.h"
#include "core/math/hessian_rounding.h"

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
    std::vector<float> rows((size_t) (n * tokens));
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
            rows[t * n + i] = v;
        }
    }
    Covariance c(n, n, 1);
    c.add(0, rows.data(), tokens, n);
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
        // the factors are float (LAPACK's spotrf/strtri, as GPTQ): the two ways agree to float rounding
        EXPECT_NEAR(claimed, r.loss(w.data(), dec.data()), 1e-4 * r.loss(w.data(), dec.data()));
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

std::vector<float> gaussian_rows(int64_t rows, int64_t n, std::mt19937 & rng) {
    std::normal_distribution<float> g(0, 1);
    std::vector<float> w((size_t) (rows * n));
    for (auto & x : w) {
        x = g(rng);
    }
    return w;
}

// All rows at once (feedback by matrix products over groups of 256 columns) against the plain per-row way:
// the same algorithm summed in another order (the rounds' triangular products by BLAS, too). Float rounding
// moves the toy quantizer's float scales in the last bits, and now and then tips a rounding choice, so: 9 rows
// in 10 within 1e-4 of the per-row loss, the total within 1%. n = 640 with blocks of 32: groups of 8 blocks and a partial one.
TEST(HessianRounding, AllRowsAtOnceEqualRowByRow) {
    std::mt19937 rng(5);
    const int64_t n = 640, block = 32, rows = 48;
    const HessianRounder r(correlated_hessian(n, 2000, rng), n, block, {});
    const BlockQuantizer q = toy_quantizer(block);
    const std::vector<float> w = gaussian_rows(rows, n, rng);
    const size_t row_bytes = (size_t) (n / block) * q.block_bytes;
    std::vector<uint8_t> batched(rows * row_bytes), single(rows * row_bytes);
    std::vector<float> dec_batched((size_t) (rows * n)), dec_single((size_t) (rows * n));
    std::vector<double> loss_batched((size_t) rows), loss_check((size_t) rows);
    r.round_rows(w.data(), rows, q, batched.data(), dec_batched.data(), loss_batched.data(), 3);
    r.losses(w.data(), dec_batched.data(), rows, loss_check.data());
    double total_batched = 0, total_single = 0;
    int close_rows = 0;
    for (int64_t i = 0; i < rows; ++i) {
        const double l = r.round_row(w.data() + i * n, q, single.data() + i * row_bytes, dec_single.data() + i * n);
        EXPECT_NEAR(loss_batched[i], loss_check[i], 1e-4 * loss_check[i]) << "row " << i << ": reported = real";
        total_batched += loss_batched[i];
        total_single += l;
        close_rows += std::fabs(loss_batched[i] - l) <= 1e-4 * l;
    }
    EXPECT_NEAR(total_batched, total_single, 1e-2 * total_single);
    EXPECT_GE(close_rows, rows * 9 / 10);
    RecordProperty("close_rows", close_rows);
}

// Threads take slices of the rows (47 rows on 3 threads: slices of 15, 16 and 16): each slice is encoded as a
// one-thread run over those rows alone would encode it — same bytes, same losses. (A run over all 47 rows at once
// may differ in a few rows: BLAS may choose other kernels for another number of rows, and a tipped rounding
// choice carries through the rest of its row; measured on AMD EPYC with Debian's OpenBLAS 0.3.21: 0.5% of the
// total loss.)
TEST(HessianRounding, ThreadsSplitTheRowsWithoutChangingThem) {
    std::mt19937 rng(8);
    const int64_t n = 512, block = 32, rows = 47;
    const HessianRounder r(correlated_hessian(n, 2000, rng), n, block, {});
    const BlockQuantizer q = toy_quantizer(block);
    const std::vector<float> w = gaussian_rows(rows, n, rng);
    const size_t row_bytes = (size_t) (n / block) * q.block_bytes;
    std::vector<uint8_t> sliced(rows * row_bytes), three(rows * row_bytes, 0xAB), one(rows * row_bytes);
    std::vector<double> ls((size_t) rows), l3((size_t) rows, -1.0), l1((size_t) rows), e3((size_t) rows, -1.0);
    std::vector<float> d3((size_t) (rows * n));
    for (const auto & [r0, r1] : {std::pair<int64_t, int64_t>{0, 15}, {15, 31}, {31, 47}}) {
        r.round_rows(w.data() + r0 * n, r1 - r0, q, sliced.data() + r0 * row_bytes, nullptr, ls.data() + r0, 1);
    }
    r.round_rows(w.data(), rows, q, three.data(), d3.data(), l3.data(), 3);
    r.losses(w.data(), d3.data(), rows, e3.data(), 3);
    EXPECT_TRUE(sliced == three);
    double total1 = 0, total3 = 0;
    r.round_rows(w.data(), rows, q, one.data(), nullptr, l1.data(), 1);
    for (int64_t i = 0; i < rows; ++i) {
        EXPECT_EQ(l3[i], ls[i]) << "row " << i;
        EXPECT_NEAR(e3[i], l3[i], 1e-4 * l3[i]) << "row " << i << ": the sliced losses are the rows' own";
        total1 += l1[i];
        total3 += l3[i];
    }
    EXPECT_NEAR(total3, total1, 0.02 * total1);
}

// A block-diagonal H given as segments (a covariance kept in 256-blocks) is the same as the dense matrix with
// zeros between the blocks — with n·segment memory instead of n².
// (LAPACK's blocking differs with the size, so float rounding differs.)
TEST(HessianRounding, SegmentsEqualTheDenseBlockDiagonalMatrix) {
    std::mt19937 rng(6);
    const int64_t n = 512, seg = 256, block = 32, rows = 16;
    const std::vector<double> whole = correlated_hessian(n, 1000, rng);
    std::vector<double> dense((size_t) (n * n), 0.0), packed((size_t) (n * seg));
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = i / seg * seg; j < (i / seg + 1) * seg; ++j) {
            dense[i * n + j] = whole[i * n + j];
            packed[i * seg + j - i / seg * seg] = whole[i * n + j];
        }
    }
    const HessianRounder a(dense, n, block, {}), b(packed.data(), 1.0, n, seg, block, {});
    EXPECT_LT(b.bytes(), a.bytes());
    const BlockQuantizer q = toy_quantizer(block);
    const std::vector<float> w = gaussian_rows(rows, n, rng);
    const size_t row_bytes = (size_t) (n / block) * q.block_bytes;
    std::vector<uint8_t> ba(rows * row_bytes), bb(rows * row_bytes);
    std::vector<double> la((size_t) rows), lb((size_t) rows);
    a.round_rows(w.data(), rows, q, ba.data(), nullptr, la.data(), 2);
    b.round_rows(w.data(), rows, q, bb.data(), nullptr, lb.data(), 2);
    // the same up to float rounding, which may tip a choice in a row now and then (as above)
    double ta = 0, tb = 0;
    int close_rows = 0;
    for (int64_t i = 0; i < rows; ++i) {
        ta += la[i];
        tb += lb[i];
        close_rows += std::fabs(la[i] - lb[i]) <= 1e-4 * la[i];
    }
    EXPECT_NEAR(ta, tb, 1e-2 * ta);
    EXPECT_GE(close_rows, rows * 3 / 4);
}

TEST(Covariance, BlocksHoldTheDiagonalBlocksOfTheWholeMatrix) {
    std::mt19937 rng(4);
    std::normal_distribution<float> g(0, 1);
    const int64_t n = 512, tokens = 37;
    std::vector<float> rows((size_t) (n * tokens));
    for (auto & x : rows) {
        x = g(rng);
    }
    Covariance whole(n, n, 2), blocks(n, 256, 2);
    whole.add(1, rows.data(), tokens, n);
    blocks.add(1, rows.data(), tokens, n);
    const auto a = whole.dense(1), b = blocks.dense(1);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            // the same sums (BLAS may add the panels of a block in another order than the whole's)
            const double scale = std::sqrt(std::fabs(a[i * n + i] * a[j * n + j]));
            if (i / 256 == j / 256) {
                EXPECT_NEAR(b[i * n + j], a[i * n + j], 1e-6 * scale) << i << "," << j;
            } else {
                EXPECT_EQ(b[i * n + j], 0.0) << i << "," << j;
            }
        }
        double sq = 0;
        for (int64_t t = 0; t < tokens; ++t) {
            sq += (double) rows[t * n + i] * rows[t * n + i];
        }
        EXPECT_NEAR(a[i * n + i], sq, 1e-5 * sq);
    }
    // off the diagonal too: the BLAS products (float, panels of 512 rows) against sums in double
    for (int64_t i = 0; i < n; i += 37) {
        for (int64_t j = 0; j < n; j += 41) {
            double x = 0, scale = 0;
            for (int64_t t = 0; t < tokens; ++t) {
                x += (double) rows[t * n + i] * rows[t * n + j];
                scale += std::fabs((double) rows[t * n + i] * rows[t * n + j]);
            }
            EXPECT_NEAR(a[i * n + j], x, 1e-6 * scale) << i << "," << j;
        }
    }
    EXPECT_EQ(whole.dense(0), std::vector<double>((size_t) (n * n), 0.0));  // other matrices untouched
    // add() keeps the upper triangles; symmetrize() makes the stored values the whole matrix
    whole.symmetrize();
    EXPECT_EQ(std::vector<double>(whole.values.begin() + n * n, whole.values.end()), a);
    blocks.symmetrize();
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t k = 0; k < 256; ++k) {
            ASSERT_EQ(blocks.values[(n + i) * 256 + k], b[i * n + i / 256 * 256 + k]) << i << "," << k;
        }
    }
}

TEST(Covariance, CrossIsTheProductOfTheQuantizedAndTheTargetInputs) {
    std::mt19937 rng(5);
    std::normal_distribution<float> g(0, 1);
    const int64_t n = 600, tokens = 29;  // more columns than one panel of 512
    std::vector<float> quantized((size_t) (n * tokens)), target((size_t) (n * tokens));
    for (size_t i = 0; i < quantized.size(); ++i) {
        target[i] = g(rng);
        quantized[i] = target[i] + 0.1f * g(rng);
    }
    Covariance c(n, n, 2);
    c.readers = {"w"};
    c.add_cross(1, quantized.data(), target.data(), tokens, n);
    c.add_cross(1, quantized.data(), target.data(), 0, n);  // no tokens: nothing changes
    ASSERT_EQ(c.cross.size(), c.values.size());
    for (int64_t i = 0; i < n; i += 23) {
        for (int64_t j = 0; j < n; j += 19) {
            double x = 0, scale = 0;
            for (int64_t t = 0; t < tokens; ++t) {
                x += (double) quantized[t * n + i] * target[t * n + j];
                scale += std::fabs((double) quantized[t * n + i] * target[t * n + j]);
            }
            EXPECT_NEAR(c.cross[(n + i) * n + j], x, 1e-6 * scale) << i << "," << j;  // X̃ᵀX: not symmetric
            EXPECT_EQ(c.cross[i * n + j], 0.0);  // other matrices untouched
        }
    }
    // merged with a covariance that has none, the cross term would cover part of the text only: dropped
    Covariance with = c, without(n, n, 2);
    without.readers = {"w"};
    add_covariance(with, c, "a");
    EXPECT_NEAR(with.cross[(n + 3) * n + 5], 2 * c.cross[(n + 3) * n + 5], 1e-9);
    add_covariance(with, without, "b");
    EXPECT_TRUE(with.cross.empty());
    Covariance blocks(512, 256, 1);
    blocks.readers = {"blk.0.ffn_down.weight"};
    EXPECT_THROW(blocks.add_cross(0, quantized.data(), target.data(), tokens, 512), Error);
}

TEST(Covariance, CrossOutputIsTheProductOfTheQuantizedInputsAndTheTargetOutputs) {
    std::mt19937 rng(7);
    std::normal_distribution<float> g(0, 1);
    const int64_t n = 600, rows = 37, tokens = 29;  // more columns than one panel of 512
    std::vector<float> quantized((size_t) (n * tokens)), outputs((size_t) (rows * tokens));
    for (float & x : quantized) {
        x = g(rng);
    }
    for (float & y : outputs) {
        y = g(rng);
    }
    Covariance c(n, n, 2);
    c.readers = {"w"};
    c.add_cross_output(1, quantized.data(), outputs.data(), tokens, n, rows);
    c.add_cross_output(1, quantized.data(), outputs.data(), 0, n, rows);  // no tokens: nothing changes
    ASSERT_EQ(c.out_rows, rows);
    ASSERT_EQ(c.cross_out.size(), (size_t) (2 * n * rows));
    EXPECT_TRUE(c.cross.empty());
    for (int64_t i = 0; i < n; i += 23) {
        for (int64_t r = 0; r < rows; ++r) {
            double x = 0, scale = 0;
            for (int64_t t = 0; t < tokens; ++t) {
                x += (double) quantized[t * n + i] * outputs[t * rows + r];
                scale += std::fabs((double) quantized[t * n + i] * outputs[t * rows + r]);
            }
            EXPECT_NEAR(c.cross_out[(n + i) * rows + r], x, 1e-6 * scale) << i << "," << r;  // X̃ᵀY, matrix 1
            EXPECT_EQ(c.cross_out[i * rows + r], 0.0);  // matrix 0 untouched
        }
    }
    // another width later is refused, and so are blocks (the shift needs the whole H)
    EXPECT_THROW(c.add_cross_output(0, quantized.data(), outputs.data(), tokens, n, rows - 1), Error);
    Covariance blocks(512, 256, 1);
    blocks.readers = {"blk.0.ffn_down.weight"};
    EXPECT_THROW(blocks.add_cross_output(0, quantized.data(), outputs.data(), tokens, 512, rows), Error);
}

TEST(HessianRounding, SolveAppliesTheInverseOfTheDampedHessian) {
    std::mt19937 rng(6);
    const int64_t n = 512, rows = 5;
    const std::vector<double> h = correlated_hessian(n, 3000, rng);
    HessianRoundingOptions o;
    const HessianRounder r(h, n, 256, o);
    std::normal_distribution<float> g(0, 1);
    std::vector<float> y((size_t) (rows * n));
    for (auto & v : y) {
        v = g(rng);
    }
    std::vector<float> x = y;
    r.solve(x.data(), rows);
    double mean_diag = 0;
    for (int64_t i = 0; i < n; ++i) {
        mean_diag += h[i * n + i] / n;
    }
    // x·(H + λ·mean(diag H)·I) must give y back
    for (int64_t k = 0; k < rows; ++k) {
        for (int64_t j = 0; j < n; j += 7) {
            double back = o.damp * mean_diag * x[k * n + j];
            for (int64_t i = 0; i < n; ++i) {
                back += (double) x[k * n + i] * h[i * n + j];
            }
            EXPECT_NEAR(back, y[k * n + j], 2e-3) << k << "," << j;
        }
    }
}

}  // namespace
}  // namespace imx
