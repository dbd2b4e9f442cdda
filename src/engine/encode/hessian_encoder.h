// imx quantize --method hessian: after llama_model_quantize has written a model with the diagonal (imatrix)
// encoder, every tensor whose input covariance the imatrix holds is encoded again, row by row, with
// core/hessian_rounding and ggml's own quantizer of the type the recipe chose for that tensor. Types, sizes and
// layout stay exactly llama-quantize's: only the blocks' contents change, so any llama.cpp decodes the file.
//
// Per row, the result is whichever of the two encodings (the diagonal one llama-quantize wrote, the Hessian
// one) has the lower output error (w − q)ᵀ H (w − q): the calibration objective never gets worse.
//
// H per matrix (expert) m is the covariance per token with a prior toward the tensor's pooled covariance C̄:
//     H_m = (XᵀX_m + W·C̄) / (n_m + W),     C̄ = Σ_m XᵀX_m / Σ_m n_m
// W = 0 uses each expert's own data; an expert that saw no token gets C̄ (the stated fallback for dead experts).
// Tensors without a covariance (none collected, over the budget, per-head MLA attn_k_b) keep the diagonal.
#pragma once

#include "core/math/hessian_rounding.h"
#include "core/imatrix.h"
#include "core/math/quant_weights.h"

#include <functional>
#include <string>
#include <vector>

namespace imx::engine {

struct HessianOptions {
    HessianRoundingOptions rounding;
    double                 prior_weight = 0;  // W, in tokens
    int                    threads = 0;       // <= 0: all cores
    std::string            tensors;           // a regex: only matching tensors are re-encoded (empty: all)
    // Per-head 3-D weights (MLA attn_k_b/attn_v_b) re-encoded too: on held-out calibration text it lowers
    // deepseek3-tiny's KLD at Q2_K, IQ2_XXS and Q3_K_S (it raised it before the rounds kept Q4_0's scales;
    // docs/hessian.md).
    bool                   per_head = true;
    // Refinement rounds call ggml's whole quantizer (a new scale search) instead of re-rounding under the
    // block's scales (engine/fixed_scale_rounding.h) where that is written: 1.5× slower at Q2_K; better on
    // held-out calibration text, worse in KLD on deepseek3-tiny's WikiText-2 (docs/hessian.md).
    bool                   refine_rescale = false;
    // Where a covariance holds a cross term (collect --target-model; sequential quantization, core/covariance.h):
    // the share γ of the step from the weights toward the least-squares target w* = w + γ·H⁻¹(X̃ᵀX − X̃ᵀX̃)w.
    // The whole step (γ = 1) fits the calibration text too closely — worse in KLD even on held-out text of it;
    // 0.3 was best of those measured (docs/hessian.md).
    double                 sequential_step = 0.3;
    // Also measure each encoding's output scale (below): three more triangular products per matrix.
    bool                   row_scales = false;
    // The output holds no encoding of the tensors re-encoded yet (--sequential's first encoding, which its second
    // replaces row by row): every row takes the Hessian encoding, nothing is read back or compared, and the
    // reports' loss_diagonal stays 0. Not with row_scales (it needs the diagonal encoding).
    bool                   fresh = false;
};

struct HessianTensorReport {
    std::string name;
    std::string type;             // ggml type name
    int64_t     rows = 0;
    int64_t     rows_improved = 0;  // rows where the Hessian encoding won
    int64_t     pooled_matrices = 0;  // experts without tokens, encoded against C̄
    bool        compared = true;    // false with HessianOptions::fresh: no diagonal encoding, loss_diagonal 0
    double      loss_diagonal = 0;  // Σ over rows of (w − q)ᵀ H (w − q), llama-quantize's encoding
    double      loss_final = 0;     // the same after re-encoding
    double      seconds_factor = 0;  // wall time: factorising H (shared by the input's readers: the first pays)
    double      seconds_loss = 0;    //            the diagonal encoding's error
    double      seconds_round = 0;   //            the Hessian encoding
    // With row_scales: Σ wᵀHq and Σ qᵀHq over the rows, for the diagonal and the final encoding, and Σ wᵀHw.
    // wᵀHq/qᵀHq is the factor that would best fit the quantized rows' outputs to the weights' (the least-squares
    // scale: below 1 wherever rounding noise adds energy); wᵀHq/wᵀHw is the slope of the quantized outputs on
    // the weights' — below 1, the encoding shrinks the signal (issue 14's scale-bias question, docs/hessian.md).
    double      wq_diagonal = 0, qq_diagonal = 0, wq_final = 0, qq_final = 0, ww = 0;
};

// Re-encodes, in place, the tensors of `quantized` (just written by llama_model_quantize from `model` with
// weights `w`) that `im` has a covariance for. `progress(done, total)` counts tensors. Throws imx::Error naming
// the tensor on a shape mismatch. A report per tensor encoded: with `fresh`, the tensors not reported are the
// caller's to write.
std::vector<HessianTensorReport> hessian_reencode(const std::string & model, const std::string & quantized,
                                                  const Imatrix & im, const HessianOptions & o,
                                                  const std::function<void(int, int)> & progress);

}  // namespace imx::engine
