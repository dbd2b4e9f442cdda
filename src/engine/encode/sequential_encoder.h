// imx quantize --method hessian --sequential: the Hessian encoder, then layer by layer again with the inputs the
// quantized model really gives each layer (GPTQ's sequential mode, with the unquantized model's outputs kept as
// the target, as GPTAQ does).
//
// For layer l = 0, 1, …: the calibration text runs through the quantized file as it stands (layers < l already
// final, layer l and later as the first Hessian pass left them) and, token for token, through the unquantized
// model. With the covariance X̃ᵀX̃ of layer l's inputs and the cross term X̃ᵀX against the unquantized model's,
// its weights are encoded again toward w + γ·H⁻¹(X̃ᵀX − X̃ᵀX̃)w (engine/encode/hessian_encoder.h,
// sequential_step): later layers make up for part of the error of the layers before them.
//
// The passes go block by block (engine/stream): both streams' hidden states are kept between blocks. A block
// runs over the text in float once (its matmul inputs recorded), then over the quantized stream once per stage
// of its matrices (engine/stream/block_stages.h: each stage encoded again after the stages its inputs depend on,
// as re-encoded here), then once as re-encoded to give the next block's quantized input — where a stage or that
// last pass needs only what earlier runs computed and kept, that part of the block's graph alone is replayed
// (engine/stream/block_replay.h: in a dense block all but the attn_output stage) — O(L) block passes where
// running both models from their first layer for every layer took L²/2. Architectures the block runner is not
// written for keep that whole-model loop (every matrix of layer l at once).
#pragma once

#include "core/imatrix.h"
#include "engine/encode/hessian_encoder.h"
#include "engine/model/tensor_file.h"
#include "engine/collect/activation_collector.h"
#include "engine/stream/block_model.h"
#include "engine/stream/block_stages.h"
#include "engine/stream/block_replay.h"
#include "engine/stream/hidden_states.h"
#include "engine/stream/input_tape.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace imx::engine {

struct SequentialOptions {
    std::string text_file;
    uint32_t    chunk_size = 512;
    int         max_chunks = -1;       // -1: all of the text
    uint64_t    covariance_budget = 0;  // bytes for one layer's covariances and cross terms
};

struct SequentialLayerReport {
    int                              layer = 0;
    double                           seconds_collect = 0;
    std::vector<HessianTensorReport> tensors;  // losses measured against the shifted targets
};

// Re-encodes `quantized` (written from `model`, already through hessian_reencode) layer by layer in place.
// `progress(layer, layers)` after each. Throws imx::Error naming the file or chunk.
std::vector<SequentialLayerReport> sequential_reencode(const std::string & model, const std::string & quantized,
                                                       const HessianOptions & o, const SequentialOptions & s,
                                                       const std::function<void(int, int)> & progress);

// The matrices of a block whose outputs no other matrix of the block reads (they end its FFN: dense, experts,
// shared experts) — in every architecture the block runner takes (block_model.h). The float block's outputs of
// these, not their inputs, are what the cross term takes where that is smaller (TargetInputs::record_outputs_of).
inline constexpr const char * kBlockOutputMatrices = "ffn_down";

// What one block's passes run with; shared with the block-by-block quantization (engine/encode/stream_quantize).
struct BlockPassSettings {
    std::string scratch;  // base path of the block models written for the passes
    uint32_t    chunk_size = 512;
    int         threads = 1;
    int         n_gpu_layers = 0;
    BlockWeights weights = BlockWeights::as_given;  // the quantized stream's block models (f16 on the CPU: faster)
    uint64_t    covariance_budget = 0;
    std::function<void(size_t chunk)> before_chunk;  // may throw (interrupts)
    std::function<void(size_t chunk)> after_chunk;   // progress
};

// Chunk by chunk in lockstep: the float block b over h (its matmul inputs X; its output into `next`) and block b
// with `quantized`'s tensors over hq — the covariances X̃ᵀX̃ and cross terms X̃ᵀX of block b's weights, named as in
// the model (for kBlockOutputMatrices, X̃ᵀY against the float block's outputs Y where TargetInputs records them).
// With `recorded` (the float block's inputs, recorded when it ran over h before, rewound), X comes
// from there: the float block is not run again, h is not read and `next` not written. With `stage` (weights as the
// block model names them, blk.0.*), the statistics of those weights alone, and each run of the quantized block
// ends where their inputs are computed (the first chunk after the last of them: ActivationCollector::stop_at_inputs).
// With `replay`, stage number `stage_index` of its plan: the part of the block's graph that is new replayed
// (block_replay.h), or a run of the block that keeps what later stages replay from.
Imatrix shifted_block_statistics(const TensorTable & model, TensorIo & io, int b, const TensorReplacements & quantized,
                                 const HiddenStates & h, const HiddenStates & hq, HiddenStates & next,
                                 const BlockPassSettings & s, InputTape * recorded = nullptr,
                                 const std::vector<std::string> & stage = {}, BlockReplay * replay = nullptr,
                                 size_t stage_index = 0);

// --sequential's step 1: the float block b over h, its output into `next`, its matmul inputs recorded chunk by chunk
// into `tape` (for kBlockOutputMatrices their outputs Y instead), the order its matrices depend on one another in
// into `stages` and its graph into `graph` (from the first chunk's), and its sums into `sums` where given.
void record_float_block(const TensorTable & model, TensorIo & io, int b, const HiddenStates & h, HiddenStates & next,
                        const BlockPassSettings & s, InputTape & tape, BlockStages & stages, BlockGraph & graph,
                        ActivationCollector * sums = nullptr);

// The replays of block b's `stages` over the quantized stream hq (block_replay.h): none where it runs on a GPU
// (block models as given) or where `norms_change` (a stage's run then changes what earlier ones computed). Kept
// values past `kept_in_memory` bytes go to scratch files.
std::unique_ptr<BlockReplay> block_replay(const BlockGraph & graph, const std::vector<std::vector<std::string>> & stages,
                                          const HiddenStates & hq, const BlockPassSettings & s, bool norms_change,
                                          uint64_t kept_in_memory = kKeptInMemory);

// --sequential's step 3: block b with `tensors` over `in`, its output into `out` — replayed from what the stages'
// runs kept (a dense block: its last product and the residual) where `replay` can, else by a run of the block.
void finish_quantized_block(const TensorTable & model, TensorIo & io, int b, const TensorReplacements & tensors,
                            const HiddenStates & in, HiddenStates & out, const BlockPassSettings & s,
                            BlockReplay * replay);

// Block b with `tensors` over `in`, its output into `out`.
void run_block(const TensorTable & model, TensorIo & io, int b, const TensorReplacements & tensors,
               const HiddenStates & in, HiddenStates & out, const BlockPassSettings & s);

}  // namespace imx::engine
