// The first block's input: each chunk's tokens looked up in token_embd, as libllama's get_rows does (the rows
// converted to F32 with ggml's own conversion, so the values are the whole model's to the bit).
#pragma once

#include "engine/model/tensor_file.h"
#include "engine/stream/block_model.h"
#include "engine/stream/hidden_states.h"
#include "llama.h"

#include <vector>

namespace imx::engine {

// Writes h_0 of every chunk into `out`. `quantized`: token_embd's bytes in another type (a quantized model's
// stream), or null for the model's own.
void embed_chunks(const TensorTable & model, TensorIo & io, const std::vector<std::vector<llama_token>> & chunks,
                  const TensorBytes * quantized, HiddenStates & out);

}  // namespace imx::engine
