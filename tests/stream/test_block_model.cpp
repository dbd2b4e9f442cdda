// A block model of --sequential's quantized stream (engine/stream/block_model, BlockWeights::f16): its quantized
// 2-D matrices hold exactly their decoded values rounded to F16, its expert/per-head (3-D) matrices and the
// tensors kept in their types are the given bytes, and as_given writes the quantized bytes themselves.
#include "helpers.h"
#include "stream/quantized_block.h"

#include "engine/model/tensor_file.h"
#include "engine/stream/block_model.h"

#include "ggml.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace imx::test;
using namespace imx::engine;

TEST(BlockModel, QuantizedStreamHoldsTheDecodedValuesInF16) {
    const TensorTable model(shared("models/deepseek3-tiny.gguf"));
    TensorIo io(model, false);
    const TensorReplacements repl = quantized_block(model, io, GGML_TYPE_Q8_0);
    const std::string dir = fresh_dir("block-model-f16");
    write_block_model(model, io, 0, repl, dir + "/given.gguf", BlockWeights::as_given);
    write_block_model(model, io, 0, repl, dir + "/f16.gguf", BlockWeights::f16);
    const TensorTable given(dir + "/given.gguf"), half(dir + "/f16.gguf");
    TensorIo given_io(given, false), half_io(half, false);

    int decoded = 0, kept = 0;
    for (const auto & [name, q] : repl) {
        const std::string renamed = "blk.0." + name.substr(std::string("blk.0.").size());
        const ggml_tensor * g = given.find(renamed), * h = half.find(renamed);
        ASSERT_TRUE(g && h) << renamed;
        EXPECT_EQ(g->type, GGML_TYPE_Q8_0) << renamed;
        EXPECT_EQ(given_io.read(renamed, 0, ggml_nbytes(g)), q.bytes) << renamed;
        if (ggml_n_dims(h) == 3) {  // per head or expert: kept in its type
            EXPECT_EQ(h->type, GGML_TYPE_Q8_0) << renamed;
            EXPECT_EQ(half_io.read(renamed, 0, ggml_nbytes(h)), q.bytes) << renamed;
            ++kept;
            continue;
        }
        ASSERT_EQ(h->type, GGML_TYPE_F16) << renamed;
        const int64_t n = ggml_nelements(h);
        std::vector<float> values((size_t) n), stored((size_t) n);
        to_float(GGML_TYPE_Q8_0, q.bytes.data(), values.data(), n);
        to_float(GGML_TYPE_F16, half_io.read(renamed, 0, ggml_nbytes(h)).data(), stored.data(), n);
        for (int64_t i = 0; i < n; ++i) {
            ASSERT_EQ(stored[i], ggml_fp16_to_fp32(ggml_fp32_to_fp16(values[i]))) << renamed << " value " << i;
        }
        ++decoded;
    }
    EXPECT_GE(decoded, 5);  // the attention's and the dense FFN's matrices
    EXPECT_GE(kept, 1);     // MLA's per-head attn_k_b/attn_v_b
    // what was not replaced (norms, F32) is the model's in both
    for (const std::string & name : model.names()) {
        if (block_of(name) == 0 && !repl.contains(name)) {
            const std::string renamed = "blk.0." + name.substr(std::string("blk.0.").size());
            EXPECT_EQ(half.find(renamed)->type, model.find(name)->type) << renamed;
            EXPECT_EQ(given.find(renamed)->type, model.find(name)->type) << renamed;
        }
    }
}
