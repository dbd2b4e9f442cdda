// Second moments of matmul inputs: the Hessian beyond the imatrix's diagonal.
//
// A weight row w multiplied with inputs x_t and replaced by a quantized row q changes the outputs by
//     Σ_t ((w − q)·x_t)² = (w − q)ᵀ H (w − q),        H = Σ_t x_t x_tᵀ = XᵀX.
// The imatrix keeps only diag(H) (Σx²). A Covariance keeps H itself for one matmul input, per matrix that reads
// it (an expert sees only its own tokens): whole, or as diagonal blocks of `block` columns aligned with the
// quant super-blocks where the whole would not fit the memory budget.
//
// Layout: values[(m*n_cols + i)*block + k] = H_m(i, block_start(i) + k); block == n_cols keeps the whole matrix.
// Every weight that multiplies the same input (q, k and v; an expert layer's gate and up) shares one
// Covariance: `readers` lists them, sorted, and the first names it in files.
//
// Pooled over experts: an expert input may keep ONE matrix (n_mat == 1 while its readers have one per expert),
// Σ_e X_eᵀX_e over every routed token, counted once per routing slot. The encoder then takes expert e's Hessian
// as the pooled correlation scaled by the expert's own diagonal (its imatrix sums): H_e ≈ D_e^½ R D_e^½ — one
// n×n per layer instead of one per expert (DeepSeek-V3: 392 MiB instead of 98 GiB per MoE layer).
//
// Cross (sequential quantization, collect --target-model): collected through an already-quantized model, H is
// X̃ᵀX̃ of the inputs that model really feeds the layer, and `cross` holds X̃ᵀX against the inputs x the target
// (unquantized) model has at the same tokens. A row q fitted to reproduce the target's outputs then minimises
//     Σ_t (w·x_t − q·x̃_t)² = (q − w*)ᵀ H (q − w*) + const,        w* = H⁻¹ X̃ᵀX w,
// so later layers make up for the errors of the layers before them (GPTQ's sequential mode with the target
// kept, as in GPTAQ). Whole matrices only: cross[(m*n_cols + i)*n_cols + j] = Σ_t x̃_t[i]·x_t[j].
//
// The shift needs the cross term only through X̃ᵀX wᵀ for the reader's rows w, so an input with one reader whose
// rows are fewer than its columns (a dense ffn_down: 2048 rows of 6144 columns) keeps `cross_out` instead: X̃ᵀY
// with Y = X Wᵀ the target model's outputs of that matmul, cross_out[(m*n_cols + i)*out_rows + r] = Σ_t x̃_t[i]·y_t[r]
// — n × rows instead of n × n, a third of the product there. In memory only (files and checkpoints carry `cross`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace imx {

struct Covariance {
    int64_t                  n_cols = 0;
    int64_t                  block = 0;
    int64_t                  n_mat = 0;
    std::vector<double>      values;   // n_mat × n_cols × block
    std::vector<int64_t>     counts;   // tokens per matrix (the readers' imatrix counts)
    std::vector<std::string> readers;
    std::vector<double>      cross;    // n_mat × n_cols × n_cols, or empty (see above)
    std::vector<double>      cross_out;  // n_mat × n_cols × out_rows, or empty (see above)
    int64_t                  out_rows = 0;

    Covariance() = default;
    Covariance(int64_t cols, int64_t blk, int64_t mats);

    int64_t block_start(int64_t i) const { return i / block * block; }
    bool full() const { return block == n_cols; }
    // H_m as a dense n_cols × n_cols matrix (zeros outside the kept blocks).
    std::vector<double> dense(int64_t m) const;
    // Adds x xᵀ for every token x of matrix m: rows[t*row_stride + i] = x_t[i], t < n_rows. The products are
    // matrix products (BLAS, in float, on set_linear_algebra_threads' threads) over the rows, then added in
    // double: the same activations give the same bytes. Only the upper triangle of each kept block (i ≤ j) is
    // updated — mirroring n²/2 values after every chunk cost a third of the time at n = 14336 —
    // so call symmetrize() before `values` is read as a whole (files, checkpoints); dense() needs no call.
    void add(int64_t m, const float * rows, int64_t n_rows, int64_t row_stride);
    // Copies the upper triangle of every kept block onto its lower one.
    void symmetrize();
    // Adds x̃ xᵀ for every token of matrix m into `cross` (made on first use; the layout must be whole): rows as
    // in add(), target_rows the target model's inputs of the same tokens, with the same stride.
    void add_cross(int64_t m, const float * rows, const float * target_rows, int64_t n_rows, int64_t row_stride);
    // Adds x̃ yᵀ for every token of matrix m into `cross_out` (made on first use, `rows_out` wide; whole layout):
    // rows as in add(), outputs[t*rows_out + r] the target model's output r of the same token.
    void add_cross_output(int64_t m, const float * rows, const float * outputs, int64_t n_rows, int64_t row_stride,
                          int64_t rows_out);
};

// Bytes a Covariance of this shape holds in memory.
inline uint64_t covariance_bytes(int64_t n_cols, int64_t block, int64_t n_mat) {
    return (uint64_t) n_cols * (uint64_t) block * (uint64_t) n_mat * sizeof(double);
}

// The widest layout that fits `budget_left` bytes: the whole matrix, else diagonal blocks of 256 columns (the
// k-quant super-block) where n_cols allows them, else 0: none (the quantizer falls back to the diagonal).
// blocks_only skips the whole matrix where blocks are possible (spreads a budget over many layers).
int64_t choose_covariance_block(int64_t n_cols, int64_t n_mat, uint64_t budget_left, bool blocks_only = false);

// The layout of an input read by `n_mat` matrices (experts): block as above, and whether it is pooled over the
// experts — per expert where that fits (unless pool_experts), else pooled. {0, false}: none.
struct CovarianceLayout {
    int64_t block = 0;
    bool    pooled = false;
};
CovarianceLayout choose_covariance_layout(int64_t n_cols, int64_t n_mat, uint64_t budget_left, bool blocks_only,
                                          bool pool_experts);

// Adds `other` into `into` (same readers, shape and layout), for merges and shards. Throws imx::Error naming
// the input otherwise; `what` names the source.
void add_covariance(Covariance & into, const Covariance & other, const std::string & what);

}  // namespace imx
