// H of one matrix (an expert, a head) as the Hessian rounder takes it, from a covariance and the imatrix sums:
// the per-expert prior, the pooled fallback for experts that saw no token, experts made from a covariance pooled
// over them, and sequential quantization's shifted targets. Shared by the Hessian encoder (which writes the
// bytes) and the type search (which measures every candidate type's error with it, in memory).
#pragma once

#include "core/imatrix.h"
#include "core/math/hessian_rounding.h"

#include "ggml.h"

#include <cstdint>
#include <string>
#include <vector>

namespace imx::engine {

// H of matrix m: the covariance's values (layout of core/covariance.h) and a scale.
// H_m = (XᵀX_m + W·C̄)/(n_m + W); an expert without tokens gets C̄. Only a blend needs a copy.
struct MatrixHessian {
    const double *      values = nullptr;
    double              scale = 1;
    bool                pooled = false;
    std::vector<double> blended;
};

// The H of each of a covariance's readers' `n_mats` matrices (experts, heads), with prior weight W in tokens.
class MatrixHessians {
public:
    MatrixHessians(const Covariance & c, const TensorStats & sums, int64_t n_mats, double prior_weight);
    bool seen() const { return total_counts_ > 0; }  // no token at all: nothing to improve on
    MatrixHessian of(int64_t m) const;

private:
    const Covariance &  c_;
    const TensorStats & sums_;
    double              prior_weight_;
    int64_t             total_counts_ = 0;
    bool                pooled_ = false;  // one covariance pooled over the experts (core/covariance.h)
    std::vector<double> pooled_h_;        // C̄, where a prior or an expert without tokens needs it
};

// Whether the Hessian encoder re-encodes reader `name` of covariance `c` stored as `type` with shape `ne`
// (per-head readers only with o_per_head; `only` a regex on names, empty: all).
bool hessian_reencodes(const Covariance & c, const Imatrix & im, const std::string & name, const int64_t ne[4],
                       ggml_type type, bool per_head, const std::string & only);

// Sequential quantization (core/covariance.h): what moves the rows' targets. With a cross term,
// D_m = γ·(X̃ᵀX − X̃ᵀX̃)_m / (n_m + W) in float, row-major n×n; with the target's outputs instead (cross_out),
// P_m = γ·X̃ᵀY_m / (n_m + W) (n × rows) and G_m = γ·X̃ᵀX̃_m / (n_m + W) (n×n), whose difference P − G·Wᵀ is D·Wᵀ.
// Empty without either or without tokens (the targets stay the weights). The prior W shrinks it toward none.
struct TargetShift {
    std::vector<float> d;     // D, or empty
    std::vector<float> p, g;  // Pᵀ (row-major rows × n: a weight row's shift term is a row) and G, or empty
    std::vector<float> map;   // S = Dᵀ·H⁻¹ (row-major n×n) in place of D, or empty (premultiply_shift)
    bool empty() const { return d.empty() && p.empty() && map.empty(); }
};
TargetShift cross_shift(const Covariance & c, int64_t m, double prior_weight, double step);

// D replaced by S = Dᵀ·H⁻¹, so that each reader's shift is one product W·S instead of W·Dᵀ and two triangular
// solves of its rows: 2n³ flops once against 2·rows·n² a reader — cheaper where the readers of one covariance
// together have more rows than it has columns (q/k/v; gate/up: 12288 rows of 2048 columns at Qwen3-1.7B's shape).
void premultiply_shift(const HessianRounder & rounder, TargetShift & s);

// The rows' targets w* = w + H⁻¹·D·w (H damped, as the rounder holds it): with γ = 1, what best reproduces the
// target model's outputs on the inputs the quantized model gives. `row_ids`: which of the matrix's rows w holds
// (null: the first `rows`), for a shift made from the outputs, which are per row.
void shift_targets(const HessianRounder & rounder, const TargetShift & s, float * w, int64_t rows,
                   const int64_t * row_ids = nullptr);

// ggml's quantizer of a type as the rounder's block encoder, with the re-rounding of its refinement rounds
// (ggml's whole quantizer again with refine_rescale).
BlockQuantizer block_quantizer(ggml_type type, bool refine_rescale);

}  // namespace imx::engine
