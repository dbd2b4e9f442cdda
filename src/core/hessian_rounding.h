// GPTQ-style rounding of weight rows against a Hessian, for any block quantizer.
//
// A row w is replaced by a decoded row q; what the model feels is the output error (w − q)ᵀ H (w − q), with
// H = XᵀX of the row's inputs (core/covariance.h). The imatrix encoder sees only diag(H). Here:
//
//  1. Blocks in order, with error feedback (GPTQ, Frantar et al. 2022). With U the upper Cholesky factor of
//     H⁻¹, fixing block b (columns s..e) at q_b = t_b + Δ_b leaves the rest best served by moving its targets
//     by δ_r = U_brᵀ E with E = U_bb⁻ᵀ Δ_b, and costs exactly ‖E‖² = Δ_bᵀ S_b Δ_b, where S_b = (U_bbᵀ U_bb)⁻¹
//     is H of the block given that the later columns compensate. The row's loss is the sum over its blocks.
//  2. Within a block, the quantizer (ggml's, with its scales and grids) only knows per-value importances. We
//     give it diag(S_b) and then shift its target so that its diagonal objective matches S_b's gradient at the
//     current solution: t' = q − α·diag(S_b)⁻¹ S_b Δ (one majorisation step), keeping the best candidate by
//     ‖E‖². The first candidate is the plain diagonal encoding, so a block is never worse under S_b than it.
//
// H is damped (H + λ·mean(diag H)·I, GPTQ's 1%): zero-variance columns and too few tokens stay invertible.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace imx {

// One block of a quantization type, seen from here: `encode` writes the block's bytes for `block` target
// values and per-value importances, and the values those bytes decode to.
struct BlockQuantizer {
    int64_t block = 0;
    size_t  block_bytes = 0;
    std::function<void(const float * target, const float * importance, uint8_t * bytes, float * decoded)> encode;
};

struct HessianRoundingOptions {
    double damp = 0.01;       // λ
    int    refinements = 6;   // target shifts tried per block after the diagonal encoding (α = 1, ½, ¼, …)
};

class HessianRounder {
public:
    // h: n×n row-major, symmetric positive semi-definite, any scale. n must be a multiple of `block`.
    HessianRounder(const std::vector<double> & h, int64_t n, int64_t block, const HessianRoundingOptions & o);

    // Encodes row w into n/block blocks of `q.block_bytes` at `bytes`, decoded values at `decoded`; returns
    // its loss (w − q)ᵀ H (w − q) under the damped H.
    double round_row(const float * w, const BlockQuantizer & q, uint8_t * bytes, float * decoded) const;
    // (w − q)ᵀ H (w − q) under the damped H, for any decoded row q.
    double loss(const float * w, const float * decoded) const;

    int64_t n() const { return n_; }

private:
    int64_t               n_, block_;
    HessianRoundingOptions opt_;
    std::vector<double>   h_;           // damped
    std::vector<double>   u_;           // upper Cholesky factor of h_⁻¹, row-major
    std::vector<double>   block_inv_;   // per block: (U_bb)⁻¹, upper, block×block
    std::vector<double>   block_inv_t_; // the same transposed, so that both products read rows
    std::vector<float>    importance_;  // diag(S_b) per column
};

// Lower Cholesky factor of the n×n matrix a (row-major); false if a is not positive definite.
bool cholesky_lower(std::vector<double> & a, int64_t n);

}  // namespace imx
