#include "engine/encode/matrix_hessian.h"

#include "core/error.h"

#include "engine/encode/fixed_scale_rounding.h"
#include "engine/encode/lattice_rounding.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <regex>

namespace imx::engine {

namespace {

MatrixHessian matrix_hessian(const Covariance & c, int64_t m, double prior_weight, const std::vector<double> & pooled) {
    const size_t size = (size_t) (c.n_cols * c.block);
    const double * own = c.values.data() + m * (int64_t) size;
    const double count = (double) c.counts[m];
    MatrixHessian h;
    if (count == 0) {
        h.values = pooled.data();
        h.pooled = true;
    } else if (prior_weight == 0 || pooled.empty()) {
        h.values = own;
        h.scale = 1.0 / count;
    } else {
        h.blended.resize(size);
        for (size_t i = 0; i < size; ++i) {
            h.blended[i] = (own[i] + prior_weight * pooled[i]) / (count + prior_weight);
        }
        h.values = h.blended.data();
    }
    return h;
}

// Expert e's H from a covariance pooled over the experts (core/covariance.h): the pooled correlation scaled
// by the expert's own diagonal, H_e = D_e^½ R D_e^½ with D_e = (Σx²_e + W·c̄)/(n_e + W) from the imatrix sums.
MatrixHessian expert_from_pooled(const Covariance & c, const TensorStats & ts, int64_t e, double prior_weight) {
    const int64_t n = c.n_cols, b = c.block;
    const double total = (double) c.counts[0], count = (double) ts.counts[e];
    MatrixHessian h;
    h.pooled = count == 0;
    h.blended.resize((size_t) (n * b));
    std::vector<double> pooled_diag((size_t) n), scale((size_t) n);
    for (int64_t i = 0; i < n; ++i) {
        pooled_diag[i] = c.values[i * b + i - c.block_start(i)] / total;
        const double own = count > 0 ? (ts.sums[e * n + i] + prior_weight * pooled_diag[i]) / (count + prior_weight)
                                     : pooled_diag[i];
        scale[i] = pooled_diag[i] > 0 ? std::sqrt(own / pooled_diag[i]) : 0.0;
    }
    // (tried: keeping the pooled off-diagonal and replacing only the diagonal, C̄ + diag(d_e − c̄): 54% of the
    // per-expert KLD gain on qwen3moe-tiny Q2_K, against 87% for this scaling)
    for (int64_t i = 0; i < n; ++i) {
        const int64_t s = c.block_start(i);
        for (int64_t k = 0; k < b; ++k) {
            h.blended[i * b + k] = c.values[i * b + k] / total * scale[i] * scale[s + k];
        }
    }
    h.values = h.blended.data();
    return h;
}

// C̄ = Σ_m XᵀX_m / Σ_m n_m, in the covariance's layout.
std::vector<double> pooled_hessian(const Covariance & c, int64_t total_counts) {
    const size_t size = (size_t) (c.n_cols * c.block);
    std::vector<double> pooled(size, 0.0);
    for (int64_t m = 0; m < c.n_mat; ++m) {
        const double * v = c.values.data() + m * (int64_t) size;
        for (size_t i = 0; i < size; ++i) {
            pooled[i] += v[i] / (double) total_counts;
        }
    }
    return pooled;
}

}  // namespace

MatrixHessians::MatrixHessians(const Covariance & c, const TensorStats & sums, int64_t n_mats, double prior_weight)
    : c_(c), sums_(sums), prior_weight_(prior_weight), pooled_(c.n_mat == 1 && n_mats > 1) {
    for (int64_t x : c.counts) {
        total_counts_ += x;
    }
    const bool needs_pooled = !pooled_ && c.n_mat > 1 && total_counts_ > 0 &&
                              (prior_weight > 0 || std::find(c.counts.begin(), c.counts.end(), 0) != c.counts.end());
    if (needs_pooled) {
        pooled_h_ = pooled_hessian(c, total_counts_);
    }
}

MatrixHessian MatrixHessians::of(int64_t m) const {
    return pooled_ ? expert_from_pooled(c_, sums_, m, prior_weight_) : matrix_hessian(c_, m, prior_weight_, pooled_h_);
}

bool hessian_reencodes(const Covariance & c, const Imatrix & im, const std::string & name, const int64_t ne[4],
                       ggml_type type, bool per_head, const std::string & only) {
    const auto ts = im.tensors.find(name);
    const bool head = ts != im.tensors.end() && ts->second.n_mat() == 1 && c.n_mat > 1;
    const bool pooled = c.n_mat == 1 && ts != im.tensors.end() && ts->second.n_mat() > 1;
    return (only.empty() || std::regex_search(name, std::regex(only))) && (!head || per_head) &&
           ggml_is_quantized(type) && ne[0] == c.n_cols && ne[2] == (pooled ? ts->second.n_mat() : c.n_mat) &&
           ne[3] == 1 && c.block % ggml_blck_size(type) == 0;
}

TargetShift cross_shift(const Covariance & c, int64_t m, double prior_weight, double step) {
    TargetShift s;
    if ((c.cross.empty() && c.cross_out.empty()) || !c.full() || c.counts[m] == 0) {
        return s;
    }
    const size_t size = (size_t) (c.n_cols * c.n_cols);
    const double * h = c.values.data() + m * (int64_t) size;
    const double scale = step / ((double) c.counts[m] + prior_weight);
    if (!c.cross.empty()) {
        const double * cross = c.cross.data() + m * (int64_t) size;
        s.d.resize(size);
        for (size_t i = 0; i < size; ++i) {
            s.d[i] = (float) ((cross[i] - h[i]) * scale);
        }
        return s;
    }
    const int64_t n = c.n_cols, rows = c.out_rows;
    const double * p = c.cross_out.data() + m * n * rows;
    s.p.resize((size_t) (n * rows));
    constexpr int64_t kTile = 64;  // Pᵀ (rows × n) from P (n × rows), in tiles: a plain loop strides a page a value
    for (int64_t i0 = 0; i0 < n; i0 += kTile) {
        for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
            for (int64_t i = i0; i < std::min(i0 + kTile, n); ++i) {
                for (int64_t r = r0; r < std::min(r0 + kTile, rows); ++r) {
                    s.p[(size_t) (r * n + i)] = (float) (p[i * rows + r] * scale);
                }
            }
        }
    }
    s.g.resize(size);
    for (size_t i = 0; i < size; ++i) {
        s.g[i] = (float) (h[i] * scale);
    }
    return s;
}

void premultiply_shift(const HessianRounder & rounder, TargetShift & s) {
    const int64_t n = rounder.n();
    if (s.d.empty()) {
        return;
    }
    s.map.resize(s.d.size());
    for (int64_t i = 0; i < n; ++i) {  // Dᵀ, then its rows solved against H
        for (int64_t j = 0; j < n; ++j) {
            s.map[(size_t) (j * n + i)] = s.d[(size_t) (i * n + j)];
        }
    }
    rounder.solve(s.map.data(), n);
    s.d = {};
}

void shift_targets(const HessianRounder & rounder, const TargetShift & s, float * w, int64_t rows,
                   const int64_t * row_ids) {
    const int64_t n = rounder.n();
    std::vector<float> y((size_t) (rows * n));
    if (!s.map.empty()) {  // y = W·S, already solved
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int) rows, (int) n, (int) n, 1.0f, w, (int) n,
                    s.map.data(), (int) n, 0.0f, y.data(), (int) n);
        for (size_t i = 0; i < y.size(); ++i) {
            w[i] += y[i];
        }
        return;
    }
    if (!s.d.empty()) {  // y = W·Dᵀ
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int) rows, (int) n, (int) n, 1.0f, w, (int) n,
                    s.d.data(), (int) n, 0.0f, y.data(), (int) n);
    } else {  // y = Pᵀ − W·G (G symmetric)
        const int64_t shifted_rows = (int64_t) s.p.size() / n;
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t row = row_ids ? row_ids[r] : r;
            if (row >= shifted_rows) {
                throw Error("the shifted targets are " + std::to_string(shifted_rows) + " rows, not " +
                            std::to_string(row + 1));
            }
            std::copy_n(s.p.data() + row * n, n, y.data() + r * n);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int) rows, (int) n, (int) n, -1.0f, w, (int) n,
                    s.g.data(), (int) n, 1.0f, y.data(), (int) n);
    }
    rounder.solve(y.data(), rows);
    for (size_t i = 0; i < y.size(); ++i) {
        w[i] += y[i];
    }
}

BlockQuantizer block_quantizer(ggml_type type, bool refine_rescale) {
    ggml_quantize_init(type);
    BlockQuantizer bq;
    bq.block = ggml_blck_size(type);
    bq.block_bytes = ggml_type_size(type);
    const int64_t block = bq.block;
    bq.encode = [type, block](const float * target, const float * importance, uint8_t * bytes, float * decoded) {
        ggml_quantize_chunk(type, target, bytes, 0, 1, block, importance);
        ggml_get_type_traits(type)->to_float(bytes, decoded, block);
    };
    if (!refine_rescale) {
        bq.reround = fixed_scale_reround(type);
        if (!bq.reround) {
            bq.reround = lattice_reround(type);
        }
    }
    return bq;
}

}  // namespace imx::engine
