// --sequential's replays of part of a block's graph (engine/stream/block_replay.h) give what a run of the block
// gives, to the byte: every stage's statistics over the quantized stream (sums, counts, covariances, cross terms)
// and the block's output — on a synthetic Qwen3 block, deepseek3-tiny's dense block 0 (MLA attention) and
// qwen3moe-tiny's MoE block 0; and the stages that replay are the ones expected (attention's never does).
#include "helpers.h"
#include "stream/quantized_block.h"

#include "engine/collect/activation_collector.h"
#include "engine/collect/calibration.h"
#include "engine/encode/sequential_encoder.h"
#include "engine/model/llama_model.h"
#include "engine/model/tensor_file.h"
#include "engine/stream/block_model.h"
#include "engine/stream/block_replay.h"
#include "engine/stream/hidden_states.h"
#include "engine/stream/input_tape.h"
#include "engine/stream/token_embeddings.h"

#include "ggml.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

using namespace imx;
using namespace imx::test;
using namespace imx::engine;

namespace {

struct Streams {
    std::vector<size_t>           tokens;
    std::unique_ptr<HiddenStates> h, hq, next;
};

Streams embedded(const std::string & path, const TensorTable & model, TensorIo & io, const std::string & dir) {
    const ModelPtr vocab = load_vocab_only(path);
    const std::vector<Chunk> chunks =
        calibration_chunks({shared("data/calibration.txt"), 96, 0, 3, false, false, ""}, vocab.get());
    Streams s;
    for (const Chunk & c : chunks) {
        s.tokens.push_back(c.size());
    }
    const size_t n_embd = (size_t) embedding_length(model);
    s.h = std::make_unique<HiddenStates>(dir + "/h", s.tokens, n_embd);
    s.hq = std::make_unique<HiddenStates>(dir + "/hq", s.tokens, n_embd);
    s.next = std::make_unique<HiddenStates>(dir + "/next", s.tokens, n_embd);
    embed_chunks(model, io, chunks, nullptr, *s.h);
    embed_chunks(model, io, chunks, nullptr, *s.hq);
    return s;
}

BlockPassSettings cpu_settings(const std::string & dir) {
    return {dir + "/scratch", 96, 2, 0, BlockWeights::f16, 1ull << 30, nullptr, nullptr};
}

}  // namespace

static bool same_statistics(const Imatrix & a, const Imatrix & b, std::string & why) {
    if (a.tensors.size() != b.tensors.size() || a.covariances.size() != b.covariances.size()) {
        why = "different tensors or covariances";
        return false;
    }
    for (const auto & [name, ts] : a.tensors) {
        const auto it = b.tensors.find(name);
        if (it == b.tensors.end() || ts.sums != it->second.sums || ts.counts != it->second.counts) {
            why = name;
            return false;
        }
    }
    for (size_t i = 0; i < a.covariances.size(); ++i) {
        const Covariance & x = a.covariances[i];
        const Covariance & y = b.covariances[i];
        if (x.readers != y.readers || x.values != y.values || x.counts != y.counts || x.cross != y.cross ||
            x.cross_out != y.cross_out) {
            why = x.readers.empty() ? "a covariance" : x.readers[0];
            return false;
        }
    }
    return true;
}

struct ReplayCase {
    std::string       model;
    std::vector<bool> stages_replayed;  // by the plan
    bool              output_replayed;
    int               runtime_replays;  // parts replayed, the output included
    uint64_t          kept_in_memory = kKeptInMemory;  // 0: every kept value through a scratch file
};

void PrintTo(const ReplayCase & c, std::ostream * os) { *os << c.model; }

class BlockReplayOf : public ::testing::TestWithParam<ReplayCase> {};

TEST_P(BlockReplayOf, StagesAndOutputAreTheBlockRunsOwn) {
    const ReplayCase & rc = GetParam();
    const std::string dir = fresh_dir("block-replay-" + rc.model);
    std::string path = shared("models/" + rc.model + ".gguf");
    if (rc.model == "qwen3") {
        path = dir + "/qwen3.gguf";
        const RunResult made = run(imx_bin() + " synth --arch qwen3 --vocab-from " + shared("models/qwen3moe-tiny.gguf") +
                                   " -o " + path + " --layers 2 --embd 256 --heads 4 --kv-heads 2 --ff 512");
        ASSERT_EQ(made.exit_code, 0) << made.output;
    }
    init_llama(false);
    const TensorTable model(path);
    TensorIo io(model, false);
    Streams s = embedded(path, model, io, dir);
    ASSERT_EQ(s.tokens.size(), 3u);
    const BlockPassSettings bp = cpu_settings(dir);

    InputTape tape(dir + "/inputs.tape");
    BlockStages order;
    BlockGraph graph;
    record_float_block(model, io, 0, *s.h, *s.next, bp, tape, order, graph);
    ASSERT_GE(graph.output(), 0);
    const TensorReplacements repl = quantized_block(model, io, GGML_TYPE_Q4_0);
    std::set<std::string> encoded;
    for (const auto & [name, bytes] : repl) {
        encoded.insert(name);
    }
    const std::vector<std::vector<std::string>> stages = order.stages(encoded);
    const std::unique_ptr<BlockReplay> replay = block_replay(graph, stages, *s.hq, bp, false, rc.kept_in_memory);
    ASSERT_EQ(replay->plan().stages.size(), rc.stages_replayed.size());
    for (size_t k = 0; k < stages.size(); ++k) {
        EXPECT_EQ(replay->plan().stages[k].has_value(), rc.stages_replayed[k]) << "stage " << k << ": " << stages[k][0];
    }
    EXPECT_EQ(replay->plan().output.has_value(), rc.output_replayed);
    // none where the block models keep their types (a GPU) or the norms change between stages
    EXPECT_FALSE(block_replay(graph, stages, *s.hq, {dir + "/x", 96, 2, 0, BlockWeights::as_given, 0, nullptr, nullptr},
                              false)->plan().output.has_value());
    EXPECT_FALSE(block_replay(graph, stages, *s.hq, bp, true)->plan().output.has_value());

    // with --gate-weights: a stage of expert matmuls replays (or runs to) the router's gate weights with its inputs,
    // so both ways weight its covariances, and alike
    ActivationCollector::weight_experts_by_gates(true);
    int weighted_stages = 0;
    for (size_t k = 0; k < stages.size(); ++k) {  // in order: each keeps what the later ones replay from
        tape.rewind();
        const Imatrix replayed = shifted_block_statistics(model, io, 0, repl, *s.h, *s.hq, *s.next, bp, &tape, stages[k],
                                                          replay.get(), k);
        tape.rewind();
        const Imatrix ran = shifted_block_statistics(model, io, 0, repl, *s.h, *s.hq, *s.next, bp, &tape, stages[k]);
        std::string why;
        EXPECT_TRUE(same_statistics(replayed, ran, why)) << "stage " << k << ": " << why;
        EXPECT_FALSE(ran.tensors.empty());
        if (std::any_of(stages[k].begin(), stages[k].end(), [](const std::string & w) { return w.find("_exps") != std::string::npos; })) {
            ActivationCollector::weight_experts_by_gates(false);
            tape.rewind();
            const Imatrix plain = shifted_block_statistics(model, io, 0, repl, *s.h, *s.hq, *s.next, bp, &tape, stages[k]);
            ActivationCollector::weight_experts_by_gates(true);
            EXPECT_FALSE(same_statistics(plain, ran, why)) << "stage " << k << ": the experts' covariances are weighted";
            ++weighted_stages;
        }
    }
    ActivationCollector::weight_experts_by_gates(false);
    EXPECT_EQ(weighted_stages, rc.model == "qwen3moe-tiny" ? 2 : 0) << "gate/up and down (deepseek3-tiny's block 0 is dense)";
    bool node_files = false;  // the kept values' scratch files, beside bp.scratch
    for (const auto & e : std::filesystem::directory_iterator(dir)) {
        node_files = node_files || e.path().filename().string().find(".node") != std::string::npos;
    }
    EXPECT_EQ(node_files, rc.kept_in_memory == 0);
    const size_t width = (size_t) embedding_length(model);
    HiddenStates by_replay(dir + "/by-replay", s.tokens, width), by_run(dir + "/by-run", s.tokens, width);
    finish_quantized_block(model, io, 0, repl, *s.hq, by_replay, bp, replay.get());
    run_block(model, io, 0, repl, *s.hq, by_run, bp);
    std::vector<float> a, b, x;
    for (size_t c = 0; c < s.tokens.size(); ++c) {
        by_replay.read(c, a);
        by_run.read(c, b);
        ASSERT_EQ(a.size(), s.tokens[c] * width);
        EXPECT_TRUE(a == b) << "chunk " << c;
        s.hq->read(c, x);
        EXPECT_FALSE(a == x) << "chunk " << c;  // the block did something
    }
    // what replayed at run time: every planned part, except where a weight is in a type the CPU may repack
    EXPECT_EQ(replay->replayed(), rc.runtime_replays);
}

// A dense block (its kept values in scratch files): q/k/v (from the first norm), gate/up (from attention's
// output), down and the output replay; attn_output's input is attention, which reads the KV cache. MLA (deepseek3-tiny's dense block 0, stages
// q_a/kv_a_mqa; q_b; k_b; v_b; attn_output; gate/up; down): all but v_b's (its input is attention's) — attn_output's
// from v_b's run's attention output, through v_b's product — and at run time not the two whose parts multiply the
// per-head k_b or v_b, which block models keep in their own type (Q4_0 here; only 2-D matrices become F16). A MoE
// block's experts are 3-D too: of its planned parts only q/k/v's replays.
INSTANTIATE_TEST_SUITE_P(Blocks, BlockReplayOf,
                         ::testing::Values(ReplayCase{"qwen3", {true, false, true, true}, true, 4, 0},
                                           ReplayCase{"deepseek3-tiny", {true, true, true, false, true, true, true}, true, 5},
                                           ReplayCase{"qwen3moe-tiny", {true, false, true, true}, true, 1}),
                         [](const auto & info) {
                             std::string n = info.param.model;
                             std::replace(n.begin(), n.end(), '-', '_');
                             return n;
                         });
