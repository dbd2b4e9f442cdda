// imx quantize -m F16.gguf -f TEXT TYPE [--method hessian [--sequential]]: collection and quantization in one run,
// block by block, so that every tensor of a whole model gets its whole covariance in one block's memory and
// --sequential costs O(L) block passes instead of the L²/2 of re-running the model from its first block.
//
// Per block b (hidden states h_b of the unquantized stream, h̃_b of the quantized one; block_model.h,
// block_runner.h):
//   plain / Hessian:  run float block b over every chunk of h_b → its imatrix sums (and whole covariances,
//                     per expert and head, within --covariance-budget for the block), h_{b+1};
//                     encode b's tensors as llama-quantize does with those sums (the diagonal encoding), then
//                     with the Hessian encoder (engine/encode/hessian_encoder.h), row by row the better of the two.
//   --sequential:     float block b over h_b → its sums, h_{b+1}, its matmul inputs X kept chunk by chunk; then
//                     stage by stage (engine/stream/block_stages.h: q/k/v; attn_output; gate/up; down), block b
//                     over h̃_b with the earlier stages' matrices encoded → the covariance X̃ᵀX̃ of the stage's inputs
//                     and the cross term X̃ᵀX; the stage encoded toward w + γ·H̃⁻¹(X̃ᵀX − X̃ᵀX̃)w; then the final
//                     block b over h̃_b → h̃_{b+1}. Each matrix encoded once, fitted to the inputs the file gives it.
// O(L) block passes with --sequential (the stages' runs end after their matrices), where the two-step path
// re-runs the model from its first block for every block; the weights of each block read once.
//
// The output is written as llama_model_quantize writes it (engine/encode/model_writer.h): the same keys, tensor
// order, types and offsets; with --method diagonal it is llama-quantize's file from the same imatrix, byte for
// byte. Tensors outside the blocks (token_embd, output) are quantized without imatrix weights, as llama-quantize
// quantizes tensors its imatrix does not hold.
//
// --save-every N (any N: per block) keeps <output>.ckpt (the run's fingerprint and the next block),
// <output>.ckpt.gguf (the output so far) and the hidden states the next block reads; --resume goes on from there.
#pragma once

#include "core/imatrix.h"
#include "core/math/quant_weights.h"
#include "engine/encode/hessian_encoder.h"
#include "engine/encode/quantize.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace imx::engine {

struct StreamQuantizeOptions {
    QuantizeOptions quantize;  // model, output, type, threads, tensor_types, …; weights are collected here
    Prior           prior;
    std::string     text_file;
    uint32_t        chunk_size = 512;
    int             max_chunks = -1;
    bool            parse_special = false;
    int             n_gpu_layers = 99;
    bool            hessian = true;
    bool            sequential = false;
    HessianOptions  hessian_options;
    uint64_t        covariance_budget = 8192ull << 20;  // one block's covariances (and cross terms)
    bool            save_every_block = false;
    bool            resume = false;
    bool            verbose = false;
    // --refit-norms: after each block is encoded, its norms' weights re-fitted so that the quantized matrices
    // reading them match the float ones' outputs (core/math/norm_refit.h); F32 readers (a MoE router) take the
    // inverse scales, so their outputs stay exact.
    bool            refit_norms = false;
    std::string     imatrix_output;  // also write the collected imatrix (sums of the unquantized stream) here
    // set: block b's statistics (sums and covariances, as this run's own pass would collect them from the same
    // text and settings) come from here instead of a pass over the text — the type search kept them on disk
    // (core/format/block_spill.h); no hidden state is computed. Not with sequential or checkpoints.
    std::function<Imatrix(int block)> collected;
    // with `collected`: the output head's statistics from the same collection (collect --process-output: Σx² and
    // XᵀX of output.weight's input), for its Hessian encoding; unset or without a covariance: the head stays
    // llama-quantize's encoding. Without `collected`, this run computes them from the last block's output.
    std::function<Imatrix()> collected_head;
    // after each chunk pass: block, blocks, passes done, passes in all (chunks × passes per block × blocks); with
    // `collected`, after each block: passes are blocks
    std::function<void(int block, int blocks, uint64_t done, uint64_t total)> progress;
};

struct StreamQuantizeResult {
    Imatrix                          imatrix;  // the unquantized stream's sums
    std::vector<HessianTensorReport> reports;             // the Hessian encoding (none with --sequential)
    std::vector<HessianTensorReport> sequential_reports;  // --sequential's, against the shifted targets
    int                              sequential_stages = 0;  // the most stages a block was encoded in
    int                              blocks = 0, blocks_resumed = 0;
    uint32_t                         chunks = 0;
    double                           seconds_passes = 0, seconds_encode = 0;
    int64_t                          matrices = 0, matrices_unseen = 0;
    int                              norms_refit = 0;
    double                           norm_gain = 0;  // summed drop of the refit norms' readers' output error
};

// Throws imx::Error (one line naming the file, block or chunk) on bad input, or for options this path does not
// take.
StreamQuantizeResult quantize_by_blocks(const StreamQuantizeOptions & o);

// The options this path does not take, refused with one line (imx::Error) — quantize_by_blocks does it first;
// the type search, whose output it writes, before its hours of work.
void refuse_for_blocks(const StreamQuantizeOptions & o);

}  // namespace imx::engine
