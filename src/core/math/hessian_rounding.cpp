#include "core/math/hessian_rounding.h"

#include "core/math/dot.h"
#include "core/error.h"
#include "core/math/linear_algebra.h"
#include "core/math/parallel.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace imx {

namespace {

// Columns whose errors are fed forward by one matrix product: a k-quant super-block, or 8 blocks of 32.
constexpr int64_t kGroup = 256;

// Inverse of a lower triangular n×n matrix (row-major), in place.
void invert_lower(std::vector<double> & l, int64_t n) {
    std::vector<double> inv((size_t) (n * n), 0.0);
    for (int64_t j = 0; j < n; ++j) {
        inv[j * n + j] = 1.0 / l[j * n + j];
        for (int64_t i = j + 1; i < n; ++i) {
            double s = 0;
            for (int64_t k = j; k < i; ++k) {
                s += l[i * n + k] * inv[k * n + j];
            }
            inv[i * n + j] = -s / l[i * n + i];
        }
    }
    l.swap(inv);
}

// R with H = R·Rᵀ, upper, for one segment, from a = J·H·J (J the order reversal: J·M·J of a row-major matrix is
// its storage read backwards): J·H·J = L·Lᵀ (Cholesky) and R = J·L·J, and a row-major lower triangle is a
// column-major upper one (what LAPACK is called with). False if H (damped) is not positive definite in float.
bool cholesky_of_reversed(float * a, int64_t n) {
    if (LAPACKE_spotrf(LAPACK_COL_MAJOR, 'U', (lapack_int) n, a, (lapack_int) n) != 0) {
        return false;
    }
    for (int64_t i = 0; i < n; ++i) {
        std::fill(a + i * n + i + 1, a + (i + 1) * n, 0.0f);  // LAPACK leaves the other half as it was
    }
    std::reverse(a, a + n * n);
    return std::all_of(a, a + n * n, [](float v) { return std::isfinite(v); });
}

}  // namespace

struct HessianRounder::Scratch {
    std::vector<float>   target, dec, best_dec;
    std::vector<uint8_t> code;
    std::vector<float>   delta, e;
    Scratch(int64_t b, size_t block_bytes)
        : target((size_t) b), dec((size_t) b), best_dec((size_t) b), code(block_bytes), delta((size_t) b),
          e((size_t) b) {}
};

HessianRounder::HessianRounder(const std::vector<double> & h, int64_t n, int64_t block, const HessianRoundingOptions & o)
    : HessianRounder(h.data(), 1.0, n, n, block, o) {
    if ((int64_t) h.size() != n * n) {
        throw Error("HessianRounder: " + std::to_string(h.size()) + " values are not a " + std::to_string(n) + "² matrix");
    }
}

HessianRounder::HessianRounder(const double * h, double scale, int64_t n, int64_t segment, int64_t block,
                               const HessianRoundingOptions & o)
    : n_(n), segment_(segment), block_(block), opt_(o) {
    if (block < 1 || segment < 1 || n % segment != 0 || segment % block != 0) {
        throw Error("HessianRounder: " + std::to_string(n) + " columns in segments of " + std::to_string(segment) +
                    " do not split into blocks of " + std::to_string(block));
    }
    const auto at = [&](int64_t i, int64_t j) { return scale * h[i * segment + j - i / segment * segment]; };
    double mean_diag = 0;
    for (int64_t i = 0; i < n; ++i) {
        mean_diag += at(i, i);
    }
    mean_diag = mean_diag > 0 ? mean_diag / n : 1.0;

    r_.resize((size_t) (n * segment));
    for (int64_t s0 = 0; s0 < n; s0 += segment) {
        float * a = r_.data() + s0 * segment;  // the segment's rows: segment × segment, factorised in place
        // damping grows tenfold until the factorisation succeeds (rank-deficient H from few tokens)
        for (double damp = opt_.damp;; damp *= 10) {
            // J·H·J: row i of the segment is written backwards into row segment−1−i
            for (int64_t i = 0; i < segment; ++i) {
                const double * hrow = h + (s0 + i) * segment;  // H(s0 + i, s0 + j) = hrow[j]
                float * arow = a + (segment - 1 - i) * segment + segment - 1;
                for (int64_t j = 0; j < segment; ++j) {
                    arow[-j] = (float) (scale * hrow[j]);
                }
                const double d = scale * hrow[i];
                arow[-i] = (float) (d + damp * mean_diag + (d == 0 ? mean_diag : 0.0));  // dead columns
            }
            if (cholesky_of_reversed(a, segment)) {
                break;
            }
            if (damp > 1e6) {
                throw Error("HessianRounder: the Hessian is not positive definite even with damping");
            }
        }
    }

    // per block: R_bb (= U_bb⁻¹, the inverse of a triangular matrix's diagonal block being the diagonal block
    // of its inverse), its transpose, U_bb = R_bb⁻¹ (via the lower inverse of R_bbᵀ) and diag(S_b) = diag(R_bb R_bbᵀ)
    const int64_t b = block_;
    block_r_.assign((size_t) (n * b), 0.0f);
    block_r_t_.assign((size_t) (n * b), 0.0f);
    block_u_.assign((size_t) (n * b), 0.0f);
    importance_.assign((size_t) n, 0.0f);
    std::vector<double> rt((size_t) (b * b));
    for (int64_t s = 0; s < n; s += b) {
        float * rb = block_r_.data() + s * b;
        float * rbt = block_r_t_.data() + s * b;
        for (int64_t i = 0; i < b; ++i) {
            double norm = 0;
            for (int64_t j = 0; j < b; ++j) {
                const float v = j >= i ? r_row(s + i)[s + j] : 0.0f;
                rb[i * b + j] = v;
                rbt[j * b + i] = v;
                rt[j * b + i] = v;  // R_bbᵀ, lower
                norm += (double) v * v;
            }
            importance_[s + i] = (float) norm;
        }
        invert_lower(rt, b);  // (R_bbᵀ)⁻¹ = U_bbᵀ
        float * ub = block_u_.data() + s * b;
        for (int64_t i = 0; i < b; ++i) {
            for (int64_t j = 0; j < b; ++j) {
                ub[i * b + j] = (float) rt[j * b + i];
            }
        }
    }
}

void HessianRounder::solve(float * rows, int64_t n_rows) const {
    if (n_rows == 0) {
        return;
    }
    // X·R·Rᵀ = Y: first Z·Rᵀ = Y, then X·R = Z, per segment (H is block diagonal across them)
    for (int64_t s0 = 0; s0 < n_; s0 += segment_) {
        const float * r = r_.data() + s0 * segment_;
        cblas_strsm(CblasRowMajor, CblasRight, CblasUpper, CblasTrans, CblasNonUnit, (int) n_rows, (int) segment_, 1.0f,
                    r, (int) segment_, rows + s0, (int) n_);
        cblas_strsm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, (int) n_rows, (int) segment_,
                    1.0f, r, (int) segment_, rows + s0, (int) n_);
    }
}

size_t HessianRounder::bytes() const {
    return (r_.size() + block_r_.size() + block_r_t_.size() + block_u_.size() + importance_.size()) * sizeof(float);
}

void HessianRounder::losses(const float * w, const float * decoded, int64_t rows, double * out, int threads) const {
    // dᵀ H d = ‖Rᵀ d‖²: per segment, Z = D·R by a triangular product, each thread over its slice of the rows
    const int64_t n = n_, seg = segment_;
    const BlasOnCallingThread blas;
    parallel_slices(rows, threads, [&](int64_t r0, int64_t r1) {
        std::vector<float> d((size_t) ((r1 - r0) * n));
        for (int64_t i = 0; i < (r1 - r0) * n; ++i) {
            d[i] = decoded[r0 * n + i] - w[r0 * n + i];
        }
        for (int64_t s0 = 0; s0 < n; s0 += seg) {
            cblas_strmm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, (int) (r1 - r0), (int) seg,
                        1.0f, r_.data() + s0 * seg, (int) seg, d.data() + s0, (int) n);
        }
        for (int64_t r = r0; r < r1; ++r) {
            double s = 0;
            for (int64_t i = 0; i < n; ++i) {
                s += (double) d[(r - r0) * n + i] * d[(r - r0) * n + i];
            }
            out[r] = s;
        }
    });
}

double HessianRounder::loss(const float * w, const float * decoded) const {
    double l = 0;
    losses(w, decoded, 1, &l);
    return l;
}

double HessianRounder::encode_block(const float * t, int64_t s, const BlockQuantizer & q, uint8_t * out,
                                    float * decoded, float * e_out, Scratch & sc) const {
    const int64_t b = block_;
    const float * vinv = block_r_.data() + s * b;  // V⁻¹ with V = U_bb: R_bb
    const float * vinv_t = block_r_t_.data() + s * b;
    const float * imp = importance_.data() + s;
    std::copy(t + s, t + s + b, sc.target.begin());
    double best = std::numeric_limits<double>::infinity();
    for (int round = 0; round <= opt_.refinements; ++round) {
        if (round > 0) {
            // t' = q − α diag(S)⁻¹ S Δ at the best solution so far, S Δ = V⁻¹ E; α = ½, ¼, … (α = 1 mostly
            // overshoots: starting at ½ saved an encoding per block at the same KLD, docs/hessian.md)
            const float alpha = 1.0f / (float) (1 << round);
            for (int64_t i = 0; i < b; ++i) {
                const float v = dot<8>(vinv + i * b + i, e_out + i, b - i);
                sc.target[i] = sc.best_dec[i] - alpha * v / imp[i];
            }
        }
        if (round > 0 && q.reround) {
            q.reround(out, sc.target.data(), imp, sc.code.data(), sc.dec.data());  // `out`: the best bytes so far
        } else {
            q.encode(sc.target.data(), imp, sc.code.data(), sc.dec.data());
        }
        for (int64_t i = 0; i < b; ++i) {
            sc.delta[i] = sc.dec[i] - t[s + i];
        }
        double l = 0;  // E = V⁻ᵀ Δ: E_k = Σ_{i<=k} V⁻¹_{ik} Δ_i
        for (int64_t k = 0; k < b; ++k) {
            const float v = dot<8>(vinv_t + k * b, sc.delta.data(), k + 1);
            sc.e[k] = v;
            l += (double) v * v;
        }
        const double gain = best - l;
        if (round > 0 && !(gain > 0)) {
            continue;  // too long a step: the next, half as long, may still gain
        }
        best = l;
        std::copy(sc.e.begin(), sc.e.end(), e_out);
        sc.best_dec.swap(sc.dec);
        std::copy(sc.code.begin(), sc.code.end(), out);
        if (round > 0 && gain < opt_.refine_tolerance * (best + gain)) {
            break;  // converged: shorter steps would gain less still, each at the price of an encoding
        }
    }
    std::copy(sc.best_dec.begin(), sc.best_dec.end(), decoded);
    return best;
}

double HessianRounder::round_row(const float * w, const BlockQuantizer & q, uint8_t * bytes, float * decoded) const {
    const int64_t n = n_, b = block_;
    std::vector<float> t(w, w + n), d((size_t) n, 0.0f), acc((size_t) b), e((size_t) b);
    Scratch sc(b, q.block_bytes);
    double total = 0;
    for (int64_t s = 0, blk = 0; s < n; s += b, ++blk) {
        // t_s = w_s − (Σ_{k<s} d_k R_{k,s}) · U_ss over the earlier columns k of the segment, d = q − w
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t k = s / segment_ * segment_; k < s; ++k) {
            const float * rrow = r_row(k);
            for (int64_t j = 0; j < b; ++j) {
                acc[j] += d[k] * rrow[s + j];
            }
        }
        const float * ub = block_u_.data() + s * b;
        for (int64_t j = 0; j < b; ++j) {
            float v = 0;
            for (int64_t i = 0; i <= j; ++i) {
                v += acc[i] * ub[i * b + j];
            }
            t[s + j] = w[s + j] - v;
        }
        total += encode_block(t.data(), s, q, bytes + blk * q.block_bytes, decoded + s, e.data(), sc);
        for (int64_t j = s; j < s + b; ++j) {
            d[j] = decoded[j] - w[j];
        }
    }
    return total;
}

void HessianRounder::round_rows(const float * w, int64_t rows, const BlockQuantizer & q, uint8_t * bytes,
                                float * decoded, double * losses, int threads) const {
    // rows are independent under one H: each thread takes a slice of them through the whole pass, its products
    // on its own thread (no hand-over between the quantizer and BLAS's workers, no spinning in between)
    const size_t row_bytes = (size_t) (n_ / block_) * q.block_bytes;
    const BlasOnCallingThread blas;
    parallel_slices(rows, threads, [&](int64_t r0, int64_t r1) {
        round_slice(w + r0 * n_, r1 - r0, q, bytes + r0 * row_bytes, decoded ? decoded + r0 * n_ : nullptr, losses + r0);
    });
}

void HessianRounder::round_slice(const float * w, int64_t rows, const BlockQuantizer & q, uint8_t * bytes,
                                 float * decoded, double * losses) const {
    const int64_t n = n_, b = block_, seg = segment_;
    const int64_t group = std::min(seg, std::max(b, kGroup / b * b));
    const size_t row_bytes = (size_t) (n / b) * q.block_bytes;
    // t holds A = D·R over the columns done (D = Q − W, the errors), pushed forward as each block and group
    // ends; a block's targets are then W_s − A_s·U_ss, written over A_s
    std::vector<float> t((size_t) (rows * n), 0.0f);
    std::vector<float> d((size_t) (rows * group));  // the group's errors, row by row
    BlockRounds br(rows, b, q.block_bytes);
    std::fill(losses, losses + rows, 0.0);
    for (int64_t g0 = 0, g1 = 0; g0 < n; g0 = g1) {
        const int64_t seg_end = (g0 / seg + 1) * seg;
        g1 = std::min(g0 + group, seg_end);
        for (int64_t s = g0; s < g1; s += b) {
            float * ts = t.data() + s;
            cblas_strmm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, (int) rows, (int) b, 1.0f,
                        block_u_.data() + s * b, (int) b, ts, (int) n);
            for (int64_t r = 0; r < rows; ++r) {
                for (int64_t j = 0; j < b; ++j) {
                    ts[r * n + j] = w[r * n + s + j] - ts[r * n + j];
                }
            }
            round_block(t.data(), s, rows, q, br);
            for (int64_t r = 0; r < rows; ++r) {
                losses[r] += br.best_loss[r];
                std::copy_n(br.best_code.data() + r * q.block_bytes, q.block_bytes, bytes + r * row_bytes + s / b * q.block_bytes);
                for (int64_t j = 0; j < b; ++j) {
                    d[r * group + s - g0 + j] = br.best_dec[r * b + j] - w[r * n + s + j];
                }
                if (decoded) {
                    std::copy_n(br.best_dec.data() + r * b, b, decoded + r * n + s);
                }
            }
            if (s + b < g1) {  // to the group's later blocks, now: A[:, s+b:g1] += D_s · R[s:s+b, s+b:g1]
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int) rows, (int) (g1 - s - b), (int) b, 1.0f,
                            d.data() + (s - g0), (int) group, r_row(s) + s + b, (int) seg, 1.0f, ts + b, (int) n);
            }
        }
        if (g1 < seg_end) {  // to the rest of the segment, later: A[:, g1:] += D_g · R[g0:g1, g1:]
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int) rows, (int) (seg_end - g1), (int) (g1 - g0), 1.0f,
                        d.data(), (int) group, r_row(g0) + g1, (int) seg, 1.0f, t.data() + g1, (int) n);
        }
    }
}

HessianRounder::BlockRounds::BlockRounds(int64_t rows, int64_t b, size_t block_bytes)
    : target((size_t) (rows * b)), dec(target.size()), best_dec(target.size()), e(target.size()),
      best_e(target.size()), code((size_t) rows * block_bytes), best_code(code.size()), best_loss((size_t) rows),
      done((size_t) rows) {}

void HessianRounder::round_block(const float * t, int64_t s, int64_t rows, const BlockQuantizer & q,
                                 BlockRounds & br) const {
    // encode_block for all rows at once: the per-row work (ggml's quantizer or the re-rounding) row by row,
    // E = Δ·V⁻¹ and the shifts S·Δ = E·V⁻ᵀ as triangular matrix products over all rows (BLAS)
    const int64_t n = n_, b = block_;
    const size_t bb = q.block_bytes;
    const float * vinv = block_r_.data() + s * b;  // V⁻¹ with V = U_bb: R_bb
    const float * imp = importance_.data() + s;
    std::fill(br.done.begin(), br.done.end(), 0);
    for (int round = 0; round <= opt_.refinements; ++round) {
        const float alpha = 1.0f / (float) (1 << round);
        if (round > 0) {  // br.target := S Δ at the best solution so far, row by row
            std::copy(br.best_e.begin(), br.best_e.end(), br.target.begin());
            cblas_strmm(CblasRowMajor, CblasRight, CblasUpper, CblasTrans, CblasNonUnit, (int) rows, (int) b, 1.0f, vinv,
                        (int) b, br.target.data(), (int) b);
        }
        for (int64_t r = 0; r < rows; ++r) {
            if (br.done[r]) {
                continue;
            }
            float * target = br.target.data() + r * b;
            const float * tr = t + r * n + s;
            if (round == 0) {
                q.encode(tr, imp, br.code.data() + r * bb, br.dec.data() + r * b);
            } else {
                // t' = q − α diag(S)⁻¹ S Δ at the best solution so far; α = ½, ¼, … (α = 1 mostly overshoots:
                // starting at ½ saved an encoding per block at the same KLD, docs/hessian.md)
                const float * best = br.best_dec.data() + r * b;
                for (int64_t i = 0; i < b; ++i) {
                    target[i] = best[i] - alpha * target[i] / imp[i];
                }
                if (q.reround) {
                    q.reround(br.best_code.data() + r * bb, target, imp, br.code.data() + r * bb, br.dec.data() + r * b);
                } else {
                    q.encode(target, imp, br.code.data() + r * bb, br.dec.data() + r * b);
                }
            }
            float * er = br.e.data() + r * b;
            const float * dr = br.dec.data() + r * b;
            for (int64_t i = 0; i < b; ++i) {
                er[i] = dr[i] - tr[i];  // Δ, made E below
            }
        }
        cblas_strmm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, (int) rows, (int) b, 1.0f, vinv,
                    (int) b, br.e.data(), (int) b);
        for (int64_t r = 0; r < rows; ++r) {
            if (br.done[r]) {
                continue;
            }
            const float * er = br.e.data() + r * b;
            double l = 0;
            for (int64_t i = 0; i < b; ++i) {
                l += (double) er[i] * er[i];
            }
            const double gain = br.best_loss[r] - l;
            if (round > 0 && !(gain > 0)) {
                continue;  // too long a step: the next, half as long, may still gain
            }
            br.best_loss[r] = l;
            std::copy_n(er, b, br.best_e.data() + r * b);
            std::copy_n(br.dec.data() + r * b, b, br.best_dec.data() + r * b);
            std::copy_n(br.code.data() + r * bb, bb, br.best_code.data() + r * bb);
            // converged: shorter steps would gain less still, each at the price of an encoding
            br.done[r] = round > 0 && gain < opt_.refine_tolerance * (l + gain);
        }
    }
}

}  // namespace imx
