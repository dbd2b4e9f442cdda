// Block 0's quantizable matrices of a model (2-D and 3-D, rows a multiple of 32 wide, not F32) quantized by ggml
// to `type`: the replacements a block model of the quantized stream is written with (engine/stream/block_model).
#pragma once

#include "engine/model/tensor_file.h"
#include "engine/stream/block_model.h"

#include "ggml.h"

#include <string>
#include <vector>

namespace imx::test {

inline engine::TensorReplacements quantized_block(const engine::TensorTable & model, engine::TensorIo & io,
                                                  ggml_type type) {
    engine::TensorReplacements repl;
    for (const std::string & name : model.names()) {
        const ggml_tensor * t = model.find(name);
        if (engine::block_of(name) != 0 || ggml_n_dims(t) < 2 || t->ne[0] % 32 != 0 || t->type == GGML_TYPE_F32) {
            continue;
        }
        const int64_t n = ggml_nelements(t), rows = n / t->ne[0];
        std::vector<float> values((size_t) n);
        engine::to_float(t->type, io.read(name, 0, ggml_nbytes(t)).data(), values.data(), n);
        engine::TensorBytes & q = repl[name];
        q.type = type;
        q.bytes.resize(ggml_row_size(type, t->ne[0]) * (size_t) rows);
        ggml_quantize_chunk(type, values.data(), q.bytes.data(), 0, rows, t->ne[0], nullptr);
    }
    return repl;
}

}  // namespace imx::test
