// The output head's statistics on the block runner: what `collect --process-output` gathers for output.weight in
// a whole-model pass, from the last block's output.
//
// The runner stops every block's graph at the block's output (block_model.h), so the head's input — the final
// norm of the last block's output — is computed here, as libllama's graph computes it for every architecture
// the runner takes (qwen3, qwen3moe, deepseek2: an RMS norm with output_norm's weights and the model's epsilon,
// no bias, then the head); ggml's order of operations is kept (the mean of squares summed in double, then
// x·(1/√(mean + ε)), then the weights), and the tests hold the result to the whole-model collection's. A model
// whose head is its token embedding (tied: no output.weight) has none here, as in the whole-model collection,
// where the head's matmul reads token_embd.
#pragma once

#include "core/imatrix.h"
#include "engine/model/tensor_file.h"
#include "engine/stream/hidden_states.h"

#include <string>

namespace imx::engine {

inline constexpr const char * kOutputHead = "output.weight";

// Whether the model has a head of its own (output.weight) whose input can be computed here; throws imx::Error
// naming the model if it has one but no output_norm the computation knows.
bool has_output_head(const TensorTable & model);

// The head's Σx² and token count over every chunk of `last` (the last block's output), and with
// `covariance_block` > 0 its XᵀX in that layout (core/covariance.h; n_embd: whole; readers: output.weight).
// With `quantized` (--sequential's quantized stream at the same tokens; the layout must be whole) the statistics
// are of that stream's head inputs X̃ — Σx̃², X̃ᵀX̃ — with the cross term X̃ᵀX against `last`'s.
Imatrix head_statistics(const TensorTable & model, TensorIo & io, const HiddenStates & last, int64_t covariance_block,
                        const HiddenStates * quantized = nullptr);

}  // namespace imx::engine
