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
//     ‖E‖²; a shift that gains nothing is followed by a shorter one (α = ½, ¼, …). The first candidate is the plain diagonal encoding, so a block is never worse under S_b than it.
//
// H is damped (H + λ·mean(diag H)·I, GPTQ's 1%): zero-variance columns and too few tokens stay invertible.
//
// Scale: U is never formed. LAPACK factorises H itself (reversed: H = R·Rᵀ with R upper, float, one
// `spotrf`), and U = R⁻¹ enters only through its diagonal blocks U_bb = R_bb⁻¹ (the inverse of a triangular
// matrix's diagonal block is the diagonal block of its inverse): the feedback is applied in the equivalent
// "pull" form — with D = Q − W the errors of the columns done, block b's targets are W_b − (D·R)_b·U_bb, and
// E = Δ_b·R_bb (no triangular inverse of H's size: half the factorising time at n = 14336). round_rows()
// encodes all rows of a matrix together, adding each group of 256 columns' D·R to the later columns with one
// matrix product (BLAS) — GPTQ's "lazy batch" — instead of n² scalar updates per row; inside a block, every
// round's E and shift S·Δ are triangular products over all rows, too (only the quantizer's own work runs row
// by row).
// H may be block diagonal (a covariance kept in 256-column blocks, core/covariance.h): its `segment`s are then
// factorised and fed back independently, in memory n·segment.
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
    // Optional: the encoding nearest `target` (weighted by `importance`) under the scales of `prev` (this block's
    // bytes so far), for the refinement rounds (engine/fixed_scale_rounding.h, engine/lattice_rounding.h).
    // Empty: the rounds call encode.
    std::function<void(const uint8_t * prev, const float * target, const float * importance, uint8_t * bytes,
                       float * decoded)> reround;
};

struct HessianRoundingOptions {
    double damp = 0.01;       // λ
    int    refinements = 5;   // target shifts tried per block after the diagonal encoding (α = ½, ¼, …)
    double refine_tolerance = 0;  // stop after a shift that lowers the block's loss by less than this share
                                  // (0.01 was 20% faster and 1.8% worse in KLD on qwen3moe-tiny Q2_K)
};

class HessianRounder {
public:
    // h: H laid out as a Covariance's values (core/covariance.h): h[i*segment + j − segment_start(i)] for the
    // n/segment diagonal blocks of `segment` columns (segment == n: the whole row-major matrix), multiplied by
    // `scale`. Symmetric positive semi-definite. n must be a multiple of `block`, and `segment` of `block`.
    HessianRounder(const double * h, double scale, int64_t n, int64_t segment, int64_t block,
                   const HessianRoundingOptions & o);
    // The whole n×n row-major matrix.
    HessianRounder(const std::vector<double> & h, int64_t n, int64_t block, const HessianRoundingOptions & o);

    // All `rows` rows of w (row-major, rows × n) at once: bytes (rows × n/block × block_bytes), decoded values
    // (rows × n, may be null) and each row's loss (w − q)ᵀ H (w − q) under the damped H. Each of `threads`
    // threads takes a slice of the rows through the whole pass, BLAS included.
    void round_rows(const float * w, int64_t rows, const BlockQuantizer & q, uint8_t * bytes, float * decoded,
                    double * losses, int threads) const;
    // One row, the plain way (scalar feedback): the reference that round_rows is tested against.
    double round_row(const float * w, const BlockQuantizer & q, uint8_t * bytes, float * decoded) const;

    // (w − q)ᵀ H (w − q) under the damped H for `rows` rows of decoded values q, in slices of rows on `threads`.
    void losses(const float * w, const float * decoded, int64_t rows, double * out, int threads = 1) const;
    double loss(const float * w, const float * decoded) const;

    // rows ← rows·H⁻¹ under the damped H, for `n_rows` rows of n values (two triangular solves with R): the
    // targets w* = w + H⁻¹(X̃ᵀX − X̃ᵀX̃)w of sequential quantization (core/covariance.h).
    void solve(float * rows, int64_t n_rows) const;

    int64_t n() const { return n_; }
    // Bytes this rounder holds (its factors), for memory accounting.
    size_t bytes() const;

private:
    int64_t                n_, segment_, block_;
    HessianRoundingOptions opt_;
    std::vector<float>     r_;           // R, H = R·Rᵀ upper (R⁻¹ = U), per segment: r_[i*segment + j − start]
    std::vector<float>     block_r_;     // per block: R_bb, upper, block×block
    std::vector<float>     block_r_t_;   // the same transposed, so that both products read rows
    std::vector<float>     block_u_;     // per block: U_bb = R_bb⁻¹, upper
    std::vector<float>     importance_;  // diag(S_b) per column

    // One block column of all rows through its rounds: the best encoding so far per row, its E and loss.
    struct BlockRounds {
        std::vector<float>   target, dec, best_dec, e, best_e;  // rows × block
        std::vector<uint8_t> code, best_code;                   // rows × block_bytes
        std::vector<double>  best_loss;
        std::vector<char>    done;  // rounds ended early (refine_tolerance)
        BlockRounds(int64_t rows, int64_t block, size_t block_bytes);
    };
    void round_block(const float * t, int64_t s, int64_t rows, const BlockQuantizer & q, BlockRounds & br) const;
    // round_rows for one slice of rows, on the calling thread.
    void round_slice(const float * w, int64_t rows, const BlockQuantizer & q, uint8_t * bytes, float * decoded,
                     double * losses) const;

    struct Scratch;
    // Encodes the block at columns s.. of the targets t; writes its bytes, decoded values and E = U_bb⁻ᵀ Δ;
    // returns ‖E‖².
    double encode_block(const float * t, int64_t s, const BlockQuantizer & q, uint8_t * out, float * decoded,
                        float * e, Scratch & scratch) const;
    const float * r_row(int64_t i) const { return r_.data() + i * segment_ - i / segment_ * segment_; }
};

}  // namespace imx
