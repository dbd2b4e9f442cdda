#include "hessian_rounding.h"

#include "dot.h"
#include "error.h"

#include <cmath>
#include <limits>

namespace imx {

bool cholesky_lower(std::vector<double> & a, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
        double d = a[j * n + j];
        for (int64_t k = 0; k < j; ++k) {
            d -= a[j * n + k] * a[j * n + k];
        }
        if (!(d > 0)) {
            return false;
        }
        d = std::sqrt(d);
        a[j * n + j] = d;
        for (int64_t i = j + 1; i < n; ++i) {
            double s = a[i * n + j];
            for (int64_t k = 0; k < j; ++k) {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
        for (int64_t k = j + 1; k < n; ++k) {
            a[j * n + k] = 0;
        }
    }
    return true;
}

namespace {

// Inverse of a lower triangular n×n matrix, in place.
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

}  // namespace

HessianRounder::HessianRounder(const std::vector<double> & h, int64_t n, int64_t block,
                               const HessianRoundingOptions & o)
    : n_(n), block_(block), opt_(o) {
    if (block < 1 || n % block != 0 || (int64_t) h.size() != n * n) {
        throw Error("HessianRounder: " + std::to_string(n) + " columns do not split into blocks of " +
                    std::to_string(block));
    }
    double mean_diag = 0;
    for (int64_t i = 0; i < n; ++i) {
        mean_diag += h[i * n + i];
    }
    mean_diag = mean_diag > 0 ? mean_diag / n : 1.0;
    // damping grows tenfold until the Cholesky factorisation succeeds (rank-deficient H from few tokens)
    std::vector<double> l;
    for (double damp = opt_.damp;; damp *= 10) {
        h_ = h;
        for (int64_t i = 0; i < n; ++i) {
            h_[i * n + i] += damp * mean_diag + (h[i * n + i] == 0 ? mean_diag : 0.0);  // dead columns, as GPTQ
        }
        l = h_;
        if (cholesky_lower(l, n)) {
            break;
        }
        if (damp > 1e6) {
            throw Error("HessianRounder: the Hessian is not positive definite even with damping");
        }
    }
    // H⁻¹ = L⁻ᵀ L⁻¹, then its Cholesky factor H⁻¹ = M Mᵀ, U = Mᵀ
    invert_lower(l, n);
    std::vector<double> hinv((size_t) (n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j <= i; ++j) {
            double s = 0;
            for (int64_t k = i; k < n; ++k) {  // (L⁻¹)_{k,i} (L⁻¹)_{k,j}, nonzero for k >= max(i, j) = i
                s += l[k * n + i] * l[k * n + j];
            }
            hinv[i * n + j] = hinv[j * n + i] = s;
        }
    }
    if (!cholesky_lower(hinv, n)) {
        throw Error("HessianRounder: the inverse Hessian lost positive definiteness (ill-conditioned)");
    }
    u_.assign((size_t) (n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = i; j < n; ++j) {
            u_[i * n + j] = hinv[j * n + i];
        }
    }
    // per block: V = U_bb (upper), V⁻¹ via the lower inverse of Vᵀ; diag(S_b) = row norms² of V⁻¹
    const int64_t b = block_;
    block_inv_.assign((size_t) (n * b), 0.0);
    block_inv_t_.assign((size_t) (n * b), 0.0);
    importance_.assign((size_t) n, 0.0f);
    std::vector<double> vt((size_t) (b * b));
    for (int64_t s = 0; s < n; s += b) {
        for (int64_t i = 0; i < b; ++i) {
            for (int64_t j = 0; j < b; ++j) {
                vt[i * b + j] = u_[(s + j) * n + s + i];  // Vᵀ, lower
            }
        }
        invert_lower(vt, b);  // (Vᵀ)⁻¹ = (V⁻¹)ᵀ
        double * vinv = block_inv_.data() + s * b;
        double * vinv_t = block_inv_t_.data() + s * b;
        for (int64_t i = 0; i < b; ++i) {
            double norm = 0;
            for (int64_t k = 0; k < b; ++k) {
                vinv[i * b + k] = vt[k * b + i];
                vinv_t[k * b + i] = vt[k * b + i];
                norm += vinv[i * b + k] * vinv[i * b + k];
            }
            importance_[s + i] = (float) norm;
        }
    }
}

double HessianRounder::loss(const float * w, const float * decoded) const {
    std::vector<double> d((size_t) n_);
    for (int64_t i = 0; i < n_; ++i) {
        d[i] = (double) decoded[i] - w[i];
    }
    double total = 0;
    for (int64_t i = 0; i < n_; ++i) {
        total += d[i] * dot<4>(h_.data() + i * n_, d.data(), n_);
    }
    return total;
}

double HessianRounder::round_row(const float * w, const BlockQuantizer & q, uint8_t * bytes, float * decoded) const {
    const int64_t n = n_, b = block_;
    std::vector<double> t(w, w + n);  // targets, moved by the feedback of earlier blocks
    std::vector<float> target((size_t) b), dec((size_t) b), best_dec((size_t) b);
    std::vector<uint8_t> code(q.block_bytes);
    std::vector<double> delta((size_t) b), e((size_t) b), best_e((size_t) b);
    double total = 0;
    for (int64_t s = 0, blk = 0; s < n; s += b, ++blk) {
        const double * vinv = block_inv_.data() + s * b;
        const double * vinv_t = block_inv_t_.data() + s * b;
        const float * imp = importance_.data() + s;
        uint8_t * out = bytes + blk * q.block_bytes;
        for (int64_t i = 0; i < b; ++i) {
            target[i] = (float) t[s + i];
        }
        double best = std::numeric_limits<double>::infinity();
        for (int round = 0; round <= opt_.refinements; ++round) {
            if (round > 0) {
                // t' = q − α diag(S)⁻¹ S Δ at the best solution so far, S Δ = V⁻¹ E; α halves each round
                const double alpha = 1.0 / (1 << (round - 1));
                for (int64_t i = 0; i < b; ++i) {
                    const double v = dot<4>(vinv + i * b + i, best_e.data() + i, b - i);
                    target[i] = (float) (best_dec[i] - alpha * v / imp[i]);
                }
            }
            q.encode(target.data(), imp, code.data(), dec.data());
            for (int64_t i = 0; i < b; ++i) {
                delta[i] = (double) dec[i] - t[s + i];
            }
            double l = 0;  // E = V⁻ᵀ Δ: E_k = Σ_{i<=k} V⁻¹_{ik} Δ_i
            for (int64_t k = 0; k < b; ++k) {
                const double v = dot<4>(vinv_t + k * b, delta.data(), k + 1);
                e[k] = v;
                l += v * v;
            }
            if (l < best) {
                best = l;
                best_e = e;
                best_dec = dec;
                std::copy(code.begin(), code.end(), out);
            }
        }
        total += best;
        std::copy(best_dec.begin(), best_dec.end(), decoded + s);
        // feedback to the later columns: t_j += Σ_k E_k U_{s+k, j}
        for (int64_t k = 0; k < b; ++k) {
            const double * urow = u_.data() + (s + k) * n;
            for (int64_t j = s + b; j < n; ++j) {
                t[j] += best_e[k] * urow[j];
            }
        }
    }
    return total;
}

}  // namespace imx
