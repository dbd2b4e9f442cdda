// --sequential's order within a block (engine/stream/block_stages): learned from libllama's own graph of the
// block, each matrix after the encoded matrices its input depends on — through the KV cache too, where the trace
// of sources alone breaks (attention reads K and V back from the cache they were stored into).
#include "helpers.h"

#include "engine/model/llama_model.h"
#include "engine/model/tensor_file.h"
#include "engine/stream/block_model.h"
#include "engine/stream/block_runner.h"
#include "engine/stream/block_stages.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

using namespace imx::test;
using namespace imx::engine;

namespace {

using Stages = std::vector<std::vector<std::string>>;

// Block `b` of `model` run over one chunk of made-up hidden states, its graph traced.
BlockStages traced(const std::string & model, int b, const std::string & dir) {
    init_llama(false);
    const TensorTable table(shared("models/" + model));
    TensorIo io(table, false);
    write_block_model(table, io, b, {}, dir + "/block.gguf");
    BlockStages stages;
    BlockRunner runner(dir + "/block.gguf", 32, 2, 0, BlockStages::eval_callback, &stages);
    std::vector<float> in((size_t) (32 * runner.n_embd())), out;
    for (size_t i = 0; i < in.size(); ++i) {
        in[i] = (float) std::sin(0.37 * (double) i);
    }
    EXPECT_TRUE(runner.run(in, out, 0));
    return stages;
}

std::set<std::string> names(std::initializer_list<const char *> short_names) {
    std::set<std::string> out;
    for (const char * n : short_names) {
        out.insert(std::string("blk.0.") + n + ".weight");
    }
    return out;
}

Stages stages_of(std::initializer_list<std::initializer_list<const char *>> stages) {
    Stages out;
    for (const auto & s : stages) {
        const std::set<std::string> n = names(s);
        out.emplace_back(n.begin(), n.end());
    }
    return out;
}

}  // namespace

TEST(BlockStages, QwenMoeBlockInFourStages) {
    const BlockStages s = traced("qwen3moe-tiny.gguf", 1, fresh_dir("block-stages-qwen"));
    // attention reads K and V from the cache: its output depends on all three projections
    const std::set<std::string> & o = s.input_depends_on("blk.0.attn_output.weight");
    for (const std::string & w : names({"attn_q", "attn_k", "attn_v"})) {
        EXPECT_TRUE(o.contains(w)) << w;
    }
    EXPECT_TRUE(s.input_depends_on("blk.0.ffn_gate_exps.weight").contains("blk.0.ffn_gate_inp.weight"));  // routing
    // the router stays F32 (llama-quantize's rule), so it is not among the encoded matrices
    const std::set<std::string> encoded = names({"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_exps",
                                                 "ffn_up_exps", "ffn_down_exps"});
    EXPECT_EQ(s.stages(encoded), stages_of({{"attn_q", "attn_k", "attn_v"}, {"attn_output"},
                                            {"ffn_gate_exps", "ffn_up_exps"}, {"ffn_down_exps"}}));
    // a matrix left in float adds no stage; one the graph never multiplied is in none
    EXPECT_EQ(s.stages(names({"attn_q", "ffn_down_exps", "no_such"})), stages_of({{"attn_q"}, {"ffn_down_exps"}}));
}

TEST(BlockStages, DeepseekMlaBlockInSevenStages) {
    const BlockStages s = traced("deepseek3-tiny.gguf", 0, fresh_dir("block-stages-deepseek"));
    // MLA: V's per-head matrix reads the attention over the compressed KV, stored in the cache by kv_a_mqa
    EXPECT_TRUE(s.input_depends_on("blk.0.attn_v_b.weight").contains("blk.0.attn_kv_a_mqa.weight"));
    const std::set<std::string> encoded = names({"attn_q_a", "attn_q_b", "attn_kv_a_mqa", "attn_k_b", "attn_v_b",
                                                 "attn_output", "ffn_gate", "ffn_up", "ffn_down"});
    EXPECT_EQ(s.stages(encoded), stages_of({{"attn_q_a", "attn_kv_a_mqa"}, {"attn_q_b"}, {"attn_k_b"}, {"attn_v_b"},
                                            {"attn_output"}, {"ffn_gate", "ffn_up"}, {"ffn_down"}}));
}
