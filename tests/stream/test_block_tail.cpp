// --sequential's last pass over a dense block: the output R + W̃·X from the last stage's recorded X and R
// (engine/stream/block_tail.h) is the same bytes, chunk for chunk, as a run of the block with every matrix
// encoded — on a synthetic Qwen3 block and deepseek3-tiny's dense block 0; a MoE block (its FFN's output a sum over
// experts) has no such tail and is run.
#include "helpers.h"
#include "stream/quantized_block.h"

#include "engine/collect/activation_collector.h"
#include "engine/collect/calibration.h"
#include "engine/encode/sequential_encoder.h"
#include "engine/model/llama_model.h"
#include "engine/model/tensor_file.h"
#include "engine/stream/block_model.h"
#include "engine/stream/block_tail.h"
#include "engine/stream/hidden_states.h"
#include "engine/stream/input_tape.h"
#include "engine/stream/token_embeddings.h"

#include "ggml.h"

#include <gtest/gtest.h>

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

class BlockTailOf : public ::testing::TestWithParam<std::string> {};

TEST_P(BlockTailOf, DenseBlockOutputFromTheTailIsTheBlocksOwn) {
    const std::string dir = fresh_dir("block-tail-" + GetParam());
    std::string path = shared("models/deepseek3-tiny.gguf");
    if (GetParam() == "qwen3") {
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
    BlockTailFinder finder;
    record_float_block(model, io, 0, *s.h, *s.next, bp, tape, order, finder);
    const BlockTail & tail = finder.tail();
    ASSERT_EQ(tail.weight, "blk.0.ffn_down.weight");
    EXPECT_EQ(tail.width, embedding_length(model));
    EXPECT_EQ(tail.input_width, model.find("blk.0.ffn_down.weight")->ne[0]);

    // the down stage's run over the quantized stream, as --sequential's last stage, recording the tail
    const TensorReplacements repl = quantized_block(model, io, GGML_TYPE_Q4_0);
    const std::vector<std::string> stage = {tail.weight};
    const std::unique_ptr<TailRecorder> recorder = tail_recorder(tail, stage, true, *s.hq, bp);
    ASSERT_NE(recorder, nullptr);
    EXPECT_EQ(tail_recorder(tail, stage, false, *s.hq, bp), nullptr);  // not the last stage: the block is run
    tape.rewind();
    shifted_block_statistics(model, io, 0, repl, *s.h, *s.hq, *s.next, bp, &tape, stage, recorder.get());
    ASSERT_TRUE(recorder->complete());
    EXPECT_EQ(block_model_tensor(model, io, 0, repl, "blk.0.ffn_down.weight", bp.weights).type, GGML_TYPE_F16);

    HiddenStates by_tail(dir + "/by-tail", s.tokens, (size_t) tail.width), by_run(dir + "/by-run", s.tokens, (size_t) tail.width);
    finish_quantized_block(model, io, 0, repl, *s.hq, by_tail, bp, recorder.get());
    run_block(model, io, 0, repl, *s.hq, by_run, bp);
    std::vector<float> a, b, x;
    for (size_t c = 0; c < s.tokens.size(); ++c) {
        by_tail.read(c, a);
        by_run.read(c, b);
        ASSERT_EQ(a.size(), s.tokens[c] * (size_t) tail.width);
        EXPECT_TRUE(a == b) << "chunk " << c;
        s.hq->read(c, x);
        EXPECT_FALSE(a == x) << "chunk " << c;  // the block did something
    }
}

INSTANTIATE_TEST_SUITE_P(Dense, BlockTailOf, ::testing::Values("qwen3", "deepseek2"));

TEST(BlockTail, MoeBlockHasNone) {
    const std::string dir = fresh_dir("block-tail-moe");
    const std::string path = shared("models/qwen3moe-tiny.gguf");
    init_llama(false);
    const TensorTable model(path);
    TensorIo io(model, false);
    Streams s = embedded(path, model, io, dir);
    InputTape tape(dir + "/inputs.tape");
    BlockStages order;
    BlockTailFinder finder;
    record_float_block(model, io, 0, *s.h, *s.next, cpu_settings(dir), tape, order, finder);
    EXPECT_EQ(finder.tail().weight, "");
    EXPECT_EQ(tail_recorder(finder.tail(), {"blk.0.ffn_down_exps.weight"}, true, *s.hq, cpu_settings(dir)), nullptr);
}
