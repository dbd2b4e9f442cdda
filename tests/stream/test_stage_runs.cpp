// A --sequential stage's run (the activation collector with only_tensors, stop_after_last_weight, stop_at_inputs
// and the stage's weights named): the first chunk stops after the stage's last matmul; from the second chunk on,
// the graph stops where the stage's inputs are computed, before the stage's own matmuls — and the statistics are the same numbers as a run that computes them (sums, counts,
// covariances: every value equal). Where one of a stage's matmuls runs before another's input is ready (deepseek's
// routed down before the shared experts' gate/up make the shared down's input), the run goes on as before.
#include "helpers.h"

#include "engine/collect/activation_collector.h"
#include "engine/collect/calibration.h"
#include "engine/model/llama_model.h"
#include "engine/model/tensor_file.h"
#include "engine/stream/block_model.h"
#include "engine/stream/block_runner.h"
#include "engine/stream/token_embeddings.h"

#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <string>
#include <vector>

using namespace imx;
using namespace imx::test;
using namespace imx::engine;

namespace {

struct Stage {
    const char * only;
    bool         stops_early;
};

// Block b of `model` over three calibration chunks' embeddings, the collector asking only for `only`.
Imatrix stage_run(const std::string & block, const std::vector<std::vector<float>> & chunks, const std::string & only,
                  bool at_inputs, bool * stopped_early) {
    ActivationCollector col(64, false, false, 2, 1ull << 30);
    col.only_tensors(only);
    col.stop_after_last_weight(true);
    col.stop_at_inputs(at_inputs);
    if (at_inputs) {  // as a stage's run: the stage's weights named, so the first chunk stops after them too
        std::set<std::string> stage;
        const TensorTable table(block);
        for (const std::string & name : table.names()) {
            if (std::regex_search(name, std::regex(only))) {
                stage.insert(name);
            }
        }
        col.expect_weights(stage);
    }
    BlockRunner runner(block, 64, 2, 0, ActivationCollector::eval_callback, &col);
    std::vector<float> out;
    *stopped_early = false;
    for (size_t c = 0; c < chunks.size(); ++c) {
        col.begin_chunk((uint32_t) c);
        const bool whole = runner.run(chunks[c], out, (uint32_t) c);
        EXPECT_EQ(col.error(), "");
        *stopped_early = col.stops_at_inputs();
        if (at_inputs) {  // every chunk ends early: the first after the stage's weights, the others at their inputs
            EXPECT_FALSE(whole) << "chunk " << c;
        }
    }
    return col.data();
}

void expect_same(const Imatrix & a, const Imatrix & b, const std::string & what) {
    ASSERT_EQ(a.tensors.size(), b.tensors.size()) << what;
    ASSERT_FALSE(a.tensors.empty()) << what;
    for (const auto & [name, ts] : a.tensors) {
        ASSERT_TRUE(b.tensors.contains(name)) << what << " " << name;
        EXPECT_EQ(ts.sums, b.tensors.at(name).sums) << what << " " << name;
        EXPECT_EQ(ts.counts, b.tensors.at(name).counts) << what << " " << name;
    }
    ASSERT_EQ(a.covariances.size(), b.covariances.size()) << what;
    ASSERT_FALSE(a.covariances.empty()) << what;
    for (size_t i = 0; i < a.covariances.size(); ++i) {
        EXPECT_EQ(a.covariances[i].readers, b.covariances[i].readers) << what;
        EXPECT_EQ(a.covariances[i].counts, b.covariances[i].counts) << what;
        EXPECT_TRUE(a.covariances[i].values == b.covariances[i].values) << what << " " << a.covariances[i].readers[0];
    }
}

void check_stages(const std::string & model_name, int b, const std::vector<Stage> & stages) {
    init_llama(false);
    const std::string path = shared("models/" + model_name);
    const TensorTable model(path);
    TensorIo io(model, false);
    const ModelPtr vocab = load_vocab_only(path);
    const std::vector<Chunk> chunks = calibration_chunks({shared("data/calibration.txt"), 64, 0, 3, false, false, ""}, vocab.get());
    ASSERT_EQ(chunks.size(), 3u);
    const std::string dir = fresh_dir("stage-runs-" + std::to_string(b));
    std::vector<size_t> tokens;
    for (const Chunk & c : chunks) {
        tokens.push_back(c.size());
    }
    const size_t n_embd = (size_t) embedding_length(model);
    HiddenStates h(dir + "/h", tokens, n_embd);
    embed_chunks(model, io, chunks, nullptr, h);
    std::vector<std::vector<float>> in(chunks.size());
    for (size_t c = 0; c < chunks.size(); ++c) {
        h.read(c, in[c]);
    }
    write_block_model(model, io, b, {}, dir + "/block.gguf");
    for (const Stage & s : stages) {
        SCOPED_TRACE(s.only);
        bool early = false, late = false;
        const Imatrix stopped = stage_run(dir + "/block.gguf", in, s.only, true, &early);
        const Imatrix whole = stage_run(dir + "/block.gguf", in, s.only, false, &late);
        EXPECT_EQ(early, s.stops_early) << s.only;
        EXPECT_FALSE(late) << s.only;
        expect_same(stopped, whole, s.only);
    }
}

}  // namespace

TEST(StageRuns, QwenMoeStagesStopAtTheirInputs) {
    check_stages("qwen3moe-tiny.gguf", 1,
                 {{R"(^blk\.0\.(attn_q|attn_k|attn_v)\.weight$)", true},
                  {R"(^blk\.0\.attn_output\.weight$)", true},
                  {R"(^blk\.0\.(ffn_gate_exps|ffn_up_exps)\.weight$)", true},
                  {R"(^blk\.0\.ffn_down_exps\.weight$)", true}});
}

TEST(StageRuns, DeepseekStagesStopAtTheirInputsWhereTheyCan) {
    check_stages("deepseek3-tiny.gguf", 1,
                 {{R"(^blk\.0\.(attn_q_a|attn_kv_a_mqa)\.weight$)", true},
                  {R"(^blk\.0\.attn_k_b\.weight$)", true},
                  {R"(^blk\.0\.attn_v_b\.weight$)", true},
                  {R"(^blk\.0\.(ffn_gate_exps|ffn_up_exps|ffn_gate_shexp|ffn_up_shexp)\.weight$)", true},
                  {R"(^blk\.0\.(ffn_down_exps|ffn_down_shexp)\.weight$)", false}});
}
