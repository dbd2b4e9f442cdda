// imx collect on the shared models: agreement with upstream llama-imatrix, determinism, resume after kill -9,
// exact merges of shards, and kept partial data.
#include "core/report/compare.h"
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include <gtest/gtest.h>

#include <fstream>
#include <cmath>
#include <filesystem>

using namespace imx;
using namespace imx::test;
namespace fs = std::filesystem;

namespace {

std::string collect(const std::string & model, const std::string & out, const std::string & extra) {
    const std::string cmd = imx_bin() + " collect -m " + shared("models/" + model) + " -f " +
                            shared("data/calibration.txt") + " -o " + out + " -c 512 -t 2 " + extra;
    const RunResult r = run(cmd);
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
    return out;
}

// Worst relative difference over all columns of the tensors both files have; counts must match exactly.
double worst_relative(const Imatrix & a, const Imatrix & b, std::string & where) {
    const Comparison c = compare(a, b);
    EXPECT_TRUE(c.only_in_b.empty()) << "missing tensor " << c.only_in_b.front();
    EXPECT_TRUE(c.count_mismatches.empty()) << "token counts differ for " << c.count_mismatches.front();
    EXPECT_TRUE(c.shape_mismatches.empty()) << "shapes differ for " << c.shape_mismatches.front();
    where = c.worst_at;
    return c.worst_relative;
}

class Collect : public ::testing::TestWithParam<std::string> {
protected:
    std::string dir() { return work_dir("collect"); }
    std::string model() { return GetParam(); }
    std::string stem() { return model().substr(0, model().find('-')); }
};

}  // namespace

TEST_P(Collect, AgreesWithUpstreamImatrix) {
    // -b 512: upstream then computes one chunk per ubatch too, so both see the same forward pass
    const Imatrix up = load_imatrix(upstream_imatrix(model(), "--chunks 8 -b 512", ".gguf"));
    const Imatrix ours = load_imatrix(collect(model(), dir() + "/" + stem() + "-8.gguf", "--chunks 8"));
    EXPECT_EQ(ours.tensors.size(), up.tensors.size());
    EXPECT_EQ(ours.meta.chunk_count, up.meta.chunk_count);
    EXPECT_EQ(ours.meta.chunk_size, up.meta.chunk_size);
    std::string where;
    const double worst = worst_relative(ours, up, where);
    EXPECT_LT(worst, 1e-4) << "at " << where;
    RecordProperty("worst_relative_vs_upstream", std::to_string(worst));
}

// The GPU code path (Σx² by ggml ops where the activations are), run on the CPU backend.
TEST_P(Collect, DeviceSumsEqualHostSums) {
    const Imatrix host = load_imatrix(collect(model(), dir() + "/" + stem() + "-host.gguf", "--chunks 4"));
    const Imatrix dev = load_imatrix(collect(model(), dir() + "/" + stem() + "-dev.gguf", "--chunks 4 --device-sums"));
    std::string where;
    const double worst = worst_relative(dev, host, where);  // counts are compared exactly inside
    EXPECT_EQ(dev.tensors.size(), host.tensors.size());
    EXPECT_LT(worst, 1e-5) << "at " << where;
    RecordProperty("worst_relative_device_vs_host", std::to_string(worst));
}

TEST_P(Collect, SameBytesForRepeatsAndBatchSizes) {
    const auto a = bytes_of(collect(model(), dir() + "/" + stem() + "-b512.gguf", "--chunks 8 -b 512"));
    const auto b = bytes_of(collect(model(), dir() + "/" + stem() + "-b512-again.gguf", "--chunks 8 -b 512"));
    const auto c = bytes_of(collect(model(), dir() + "/" + stem() + "-b2048.gguf", "--chunks 8 -b 2048"));
    const auto d = bytes_of(collect(model(), dir() + "/" + stem() + "-ub64.gguf", "--chunks 8 -b 2048 -ub 64"));
    EXPECT_EQ(a, b) << "repeat run";
    EXPECT_EQ(a, c) << "-b 512 vs -b 2048";
    EXPECT_EQ(a, d) << "-ub 64";
}

TEST_P(Collect, MergeOfShardsEqualsTheWholeRun) {
    const std::string a = collect(model(), dir() + "/" + stem() + "-A.gguf", "--chunks 4");
    const std::string b = collect(model(), dir() + "/" + stem() + "-B.gguf", "--from-chunk 4 --chunks 4");
    const std::string ab = collect(model(), dir() + "/" + stem() + "-AB.gguf", "--chunks 8");
    const std::string merged = dir() + "/" + stem() + "-merged.gguf";
    ASSERT_EQ(run(imx_bin() + " merge " + a + " " + b + " -o " + merged).exit_code, 0);
    const Imatrix m = load_imatrix(merged);
    const Imatrix whole = load_imatrix(ab);
    EXPECT_EQ(m.meta.chunk_count, 8u);
    std::string where;
    const double worst = worst_relative(m, whole, where);
    EXPECT_LT(worst, 1e-6) << "at " << where;
    RecordProperty("worst_relative_merge", std::to_string(worst));
}

TEST_P(Collect, ResumeAfterKill9GivesTheSameBytes) {
    const std::string whole = collect(model(), dir() + "/" + stem() + "-whole.gguf", "--chunks 12 -b 512");
    const std::string out = dir() + "/" + stem() + "-killed.gguf";
    const std::string ckpt = out + ".ckpt";
    fs::remove(out);
    fs::remove(ckpt);
    const std::string cmd = imx_bin() + " collect -m " + shared("models/" + model()) + " -f " +
                            shared("data/calibration.txt") + " -o " + out +
                            " -c 512 -t 2 --chunks 12 -b 512 --save-every 2";
    ASSERT_TRUE(kill_after_checkpoint(cmd, ckpt)) << "no checkpoint appeared";
    EXPECT_FALSE(fs::exists(out)) << "killed before the end: no output yet";

    const RunResult resumed = run(cmd + " --resume");
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("resumed after chunk"), std::string::npos) << resumed.output;
    EXPECT_EQ(bytes_of(out), bytes_of(whole));
    EXPECT_FALSE(fs::exists(ckpt)) << "the checkpoint is removed once the output is written";
}

TEST_P(Collect, ResumeRefusesACheckpointOfAnotherRun) {
    const std::string out = dir() + "/" + stem() + "-other.gguf";
    collect(model(), out, "--chunks 4 --save-every 2");  // leaves no checkpoint once done
    // make a checkpoint with 6 chunks, then resume asking for 4
    const std::string cmd_base = imx_bin() + " collect -m " + shared("models/" + model()) + " -f " +
                                 shared("data/calibration.txt") + " -o " + out + " -c 512 -t 2 -b 512 ";
    kill_after_checkpoint(cmd_base + "--chunks 40 --save-every 2", out + ".ckpt");
    const RunResult r = run(cmd_base + "--chunks 4 --resume");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find(out + ".ckpt: made by a different run"), std::string::npos) << r.output;
    fs::remove(out + ".ckpt");
}

INSTANTIATE_TEST_SUITE_P(SharedModels, Collect, ::testing::Values("qwen3moe-tiny.gguf", "deepseek3-tiny.gguf"),
                         [](const auto & info) { return info.param.substr(0, info.param.find('-')); });

TEST(CollectExpertsUsed, OverrideRoutesEveryTokenToNExperts) {
    const std::string out = work_dir("collect") + "/qwen3moe-top4.gguf";
    collect("qwen3moe-tiny.gguf", out, "--chunks 2 --experts-used 4");
    const Imatrix im = load_imatrix(out);
    int64_t routed = 0;
    for (int64_t c : im.tensors.at("blk.1.ffn_gate_exps.weight").counts) {
        routed += c;
    }
    EXPECT_EQ(routed, 4 * 2 * 512) << "4 experts per token instead of the model's 2";
}

TEST(CollectPartial, ExpertsWithoutTokensAreKept) {
    // 8 chunks leave experts of qwen3moe-tiny's blk.3 unrouted (measured: 0, 2 and 3)
    const std::string out = work_dir("collect") + "/qwen3moe-8.gguf";
    if (!file_exists(out)) {
        collect("qwen3moe-tiny.gguf", out, "--chunks 8");
    }
    const Imatrix im = load_imatrix(out);
    const TensorStats & down = im.tensors.at("blk.3.ffn_down_exps.weight");
    EXPECT_GT(down.n_unseen(), 0);
    EXPECT_LT(down.n_unseen(), down.n_mat());
    for (int64_t e = 0; e < down.n_mat(); ++e) {
        if (down.counts[e] == 0) {
            for (int64_t j = 0; j < down.n_cols(); ++j) {
                ASSERT_EQ(down.sums[e * down.n_cols() + j], 0.0);
            }
        }
    }
}

// Synthetic models of both architectures: imx collect sees the shapes llama-imatrix sees, with the same sums.
class SynthModels : public ::testing::TestWithParam<std::string> {};

TEST_P(SynthModels, CollectAgreesWithUpstreamOnSyntheticModel) {
    const std::string arch = GetParam();
    const std::string dir = work_dir("synth");
    const std::string model = dir + "/" + arch + ".gguf";
    // deepseek2: one dense block then one MoE block with a shared expert, MLA attention, Q8_0 weights
    const std::string shape = arch == "qwen3moe"    ? " --experts 8 --experts-used 2 --expert-ff 128"
                              : arch == "deepseek2" ? " --experts 8 --experts-used 2 --expert-ff 128 --q-lora 128 "
                                                      "--kv-lora 128 --rope-dim 32 --head-dim 64 --dense-layers 1 "
                                                      "--ff 512 --weight-type q8_0"
                                                    : " --ff 512";
    const RunResult made = run(imx_bin() + " synth --arch " + arch + " --vocab-from " +
                               shared("models/qwen3moe-tiny.gguf") + " -o " + model +
                               " --layers 2 --embd 256 --heads 4 --kv-heads 2" + shape);
    ASSERT_EQ(made.exit_code, 0) << made.output;
    const std::string text = shared("data/calibration.txt");
    const RunResult up = run(upstream("llama-imatrix") + " -m " + model + " -f " + text + " -o " + dir + "/" + arch +
                             "-up.gguf -c 512 -b 512 --chunks 3 -t 2");
    ASSERT_EQ(up.exit_code, 0) << up.output;
    const RunResult ours = run(imx_bin() + " collect -m " + model + " -f " + text + " -o " + dir + "/" + arch +
                               "-imx.gguf -c 512 --chunks 3 -t 2");
    ASSERT_EQ(ours.exit_code, 0) << ours.output;
    const Imatrix a = load_imatrix(dir + "/" + arch + "-imx.gguf");
    const Imatrix b = load_imatrix(dir + "/" + arch + "-up.gguf");
    EXPECT_EQ(a.tensors.size(), b.tensors.size());
    // 7 or 8 weights per block, 2 blocks; deepseek2: 6 attention + 3 dense FFN, then 6 + router + 3 + 3 shared
    EXPECT_EQ(a.tensors.size(), arch == "qwen3moe" ? 16u : arch == "deepseek2" ? 22u : 14u);
    std::string where;
    EXPECT_LT(worst_relative(a, b, where), 1e-4) << "at " << where;
}

INSTANTIATE_TEST_SUITE_P(Archs, SynthModels, ::testing::Values("qwen3", "qwen3moe", "deepseek2"));

// A non-finite activation stops the run, naming tensor and chunk; the last checkpoint stays, no output is written.
TEST(CollectNonFinite, StopsNamingTensorAndChunkAndKeepsTheCheckpoint) {
    const std::string dir = work_dir("nonfinite");
    const std::string model = dir + "/nan.gguf";
    // a model whose embedding of " ~" is NaN, and a text where " ~" first comes in chunk 6 (64-token chunks)
    const RunResult made = run(imx_bin() + " synth --arch qwen3 --vocab-from " + shared("models/qwen3moe-tiny.gguf") +
                               " -o " + model + " --layers 2 --embd 256 --heads 4 --kv-heads 2 --ff 512 --nan-token 'Ġ~'");
    ASSERT_EQ(made.exit_code, 0) << made.output;
    std::string text;
    for (int i = 0; i < 400; ++i) {
        text += "the ";
    }
    text += "~ ";
    for (int i = 0; i < 400; ++i) {
        text += "the ";
    }
    std::ofstream(dir + "/text.txt") << text;
    const std::string out = dir + "/out.gguf";
    fs::remove(out);
    fs::remove(out + ".ckpt");
    const RunResult r = run(imx_bin() + " collect -m " + model + " -f " + dir + "/text.txt -o " + out +
                            " -c 64 --save-every 1 -t 2");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("imx: error: " + model + ": non-finite activation in the input of blk.0.attn_q.weight "
                            "in chunk 6"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out));
    ASSERT_TRUE(fs::exists(out + ".ckpt")) << "the last checkpoint stays";
}
