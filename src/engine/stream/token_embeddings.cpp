#include "engine/stream/token_embeddings.h"

#include "core/error.h"

#include <cstring>

namespace imx::engine {

void embed_chunks(const TensorTable & model, TensorIo & io, const std::vector<std::vector<llama_token>> & chunks,
                  const TensorBytes * quantized, HiddenStates & out) {
    const ggml_tensor * t = model.find("token_embd.weight");
    if (!t) {
        throw Error(model.path() + ": no token_embd.weight");
    }
    const int64_t n_embd = t->ne[0], n_vocab = t->ne[1];
    const ggml_type type = quantized ? quantized->type : t->type;
    const size_t row = ggml_row_size(type, n_embd);
    std::vector<float> h;
    for (size_t c = 0; c < chunks.size(); ++c) {
        h.resize(chunks[c].size() * (size_t) n_embd);
        for (size_t k = 0; k < chunks[c].size(); ++k) {
            const llama_token id = chunks[c][k];
            if (id < 0 || id >= n_vocab) {
                throw Error(model.path() + ": token " + std::to_string(id) + " in chunk " + std::to_string(c) +
                            " is outside token_embd's " + std::to_string(n_vocab) + " rows");
            }
            if (quantized) {
                to_float(type, quantized->bytes.data() + (size_t) id * row, h.data() + k * n_embd, n_embd);
            } else {
                const std::vector<uint8_t> bytes = io.read("token_embd.weight", (size_t) id * row, row);
                to_float(type, bytes.data(), h.data() + k * n_embd, n_embd);
            }
        }
        out.write(c, h.data());
    }
}

}  // namespace imx::engine
