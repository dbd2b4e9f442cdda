// Quantizing a GGUF model with libllama's llama_model_quantize: the same types, mixes and kernels as upstream's
// llama-quantize, fed with imx's per-column weights. The output appears whole or not at all.
#pragma once

#include "core/math/quant_weights.h"

#include "ggml.h"

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace imx::engine {

// A ggml type by its name, any case (q4_K, Q8_0, f16); throws imx::Error "<what>: unknown ggml type '<name>'".
ggml_type parse_ggml_type(const std::string & name, const std::string & what);

// The file types llama-quantize accepts by name (Q4_K_M, IQ2_XXS, ...), in its order.
std::vector<std::string> quant_type_names();

struct QuantizeOptions {
    std::string model{};
    std::string output{};
    std::string type{};  // a name from quant_type_names(), any case
    int         threads = 0;  // <= 0: all cores
    // Per-column weights by tensor name; null quantizes without an imatrix.
    const QuantWeights * weights = nullptr;
    // Recorded in the output as llama-quantize does (quantize.imatrix.*), so files compare byte for byte.
    std::string              imatrix_file{};
    std::vector<std::string> imatrix_datasets{};
    uint32_t                 imatrix_chunks = 0;
    // REGEX=TYPE: tensors whose name matches REGEX get ggml type TYPE, as llama-quantize --tensor-type.
    std::vector<std::string> tensor_types{};
    std::string output_tensor_type{};     // ggml type name for output.weight, empty: the mix decides
    std::string token_embedding_type{};   // ggml type name for token_embd.weight
    bool        allow_requantize = false;
    bool        pure = false;
    // As llama-quantize --keep-split: a split model is written as the same parts, PREFIX-0000i-of-0000N.gguf with
    // PREFIX the output without ".gguf" (an unsplit model as PREFIX-00001-of-00001.gguf). Without it, one file.
    bool        keep_split = false;
    std::function<void(int done, int total)> progress{};  // per tensor, from llama.cpp's log
    // Runs on the complete temporary output (its first part, with keep_split) before it is renamed into place
    // (the Hessian encoder's pass); if it throws, nothing is left behind.
    std::function<void(const std::string & written)> finish{};
};

void quantize_model(const QuantizeOptions & o);

// The files quantize_model writes: the output, or with keep_split one per part of the model.
std::vector<std::string> quantized_paths(const QuantizeOptions & o);

// Every tensor of the model in the order llama_model_quantize writes them, with the ggml type it would give
// the ones it quantizes (empty type: kept as it is) — a dry run, as planned_types.
struct PlannedTensor {
    std::string name;
    std::string type;
};
std::vector<PlannedTensor> plan_quantization(const QuantizeOptions & o);

// general.file_type llama-quantize writes for a type name (LLAMA_FTYPE_MOSTLY_Q2_K for Q2_K).
int quant_file_type(const std::string & type);

// The ggml type llama_model_quantize would give each tensor it quantizes under these options (a dry run: no
// weights read, nothing written). Tensors it keeps as they are (norms, routers) are not listed.
std::map<std::string, std::string> planned_types(const QuantizeOptions & o);

// Names and ne[0..2] of the model's tensors, read from its GGUF header (no weights loaded).
ModelShapes model_tensor_shapes(const std::string & path);

}  // namespace imx::engine
