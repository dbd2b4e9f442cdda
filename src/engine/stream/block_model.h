// One transformer block of a model as a model of its own: the GGUF libllama loads to run block i alone, through
// its own graph for the architecture (no block is re-implemented here).
//
// The file holds block i's tensors renamed blk.i.* → blk.0.*, in the types and bytes given (the float model's,
// or a quantized copy's), and the model's keys with
//   - block_count = 1, and every per-block array of the architecture cut to block i's entry;
//   - the keys whose meaning depends on a block's index set for block i (deepseek2: leading_dense_block_count, and
//     the gating function and q_lora_rank that its loader infers from the number of blocks when they are absent);
//   - no vocabulary: tokenizer "no_vocab" with one dummy token, so token_embd is [n_embd, 1] and the output head
//     is tied to it. Neither is read: the runner feeds hidden states through llama_batch.embd (libllama's
//     build_inp_embd takes them for every architecture) and stops the graph at the block's output, "l_out-0".
// Other tensors outside the blocks (output_norm, rope_freqs) are copied: the loader expects them.
//
// Architectures whose single blocks are checked (tests) to give the whole model's activations: qwen3, qwen3moe,
// deepseek2. Others are refused with one line; the whole-model paths stay for them.
#pragma once

#include "engine/model/tensor_file.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace imx::engine {

// Bytes to write for a tensor instead of the model's: its new type and data (a quantized block).
struct TensorBytes {
    ggml_type            type = GGML_TYPE_F32;
    std::vector<uint8_t> bytes;
};
using TensorReplacements = std::map<std::string, TensorBytes>;

// The architecture's name if its blocks can be run alone; throws imx::Error naming the model and the
// architecture otherwise.
std::string check_block_streaming(const TensorTable & model);
bool block_streaming_supported(const TensorTable & model);

int block_count(const TensorTable & model);
int64_t embedding_length(const TensorTable & model);

// How a block model stores the block's matrices (2-D weights).
//   as_given: in the model's type, or the replacement's — what the file to be written will hold; what every
//     float block runs on (`collect`, quantize's collection), so that the sums are llama-imatrix's.
//   f16: the quantized ones decoded to F16, for --sequential's quantized stream on the CPU, whose numbers nothing
//     else must reproduce. This build's ggml multiplies a 512-token chunk with F16 weights (the float model's own
//     route) in less time than with F32 weights on an AMD EPYC, and with F32 weights in less than with k-quant
//     weights (the activations quantized to Q8_K, then integer dot products) on an Intel Emerald Rapids: a
//     --sequential Q2_K quant of the 2-block Qwen3-1.7B shape spent 9-14% less time in its block passes with F16
//     than with F32 on the first, and 10-20% less with F32 than with the k-quants on the second
//     (docs/streaming.md; which of F16 and F32 is faster depends on the CPU). The decoded values are rounded
//     to F16 (a k-quant value needs up to ~17 significant bits, F16 holds 11: 2⁻¹² relative),
//     far below the rounding of the activations to Q8_K in llama.cpp's own CPU products of the file. A tensor
//     whose decoded values F16 cannot hold (beyond ±65504) keeps its type. Expert tensors (3-D) keep their type
//     (a DeepSeek-V3 block's experts would take 22 GB in F16), and so does a block whose matrices would take
//     more than kDecodedBlockLimit in F16 (beyond two 8B blocks; the extra memory stays within issue 25's bound
//     of a block's weights, its covariances, the hidden states and 2 GB).
enum class BlockWeights { as_given, f16 };
constexpr uint64_t kDecodedBlockLimit = 1ull << 30;

// Writes block `block` of `model` to `path` (tensors from `replace` where it has them, else the model's bytes).
void write_block_model(const TensorTable & model, TensorIo & io, int block, const TensorReplacements & replace,
                       const std::string & path, BlockWeights weights = BlockWeights::as_given);

// Block matrix `name` (as the model names it) as write_block_model with these arguments stores it: its type and bytes.
TensorBytes block_model_tensor(const TensorTable & model, TensorIo & io, int block, const TensorReplacements & replace,
                               const std::string & name, BlockWeights weights);

// "blk.7.ffn_down.weight" → 7; −1 for a tensor outside the blocks.
int block_of(const std::string & tensor);

}  // namespace imx::engine
