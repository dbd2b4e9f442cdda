// imx quantize -f TEXT without --imatrix: collection and quantization block by block (engine/stream). Its
// diagonal file is llama-quantize's from the same imatrix byte for byte; its Hessian and sequential files match
// the two-step path's; exact resume after kill -9 at a block; signals leave nothing; split input; refusals.
#include "helpers.h"

#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <thread>

using namespace imx::test;
namespace fs = std::filesystem;

namespace {


std::string quantize_cmd(const std::string & model, const std::string & out, const std::string & args) {
    return "(" + imx_bin() + " quantize -m " + model + " -f " + shared("data/calibration.txt") + " -o " + out + " -t 2 " +
           args + " --json 2>" + out + ".log)";
}


class StreamQuantize : public ::testing::TestWithParam<std::string> {};

}  // namespace

// The writer lays the file out as llama_model_quantize does and encodes each tensor as it does: with the
// imatrix this run collected, llama-quantize writes the same bytes (keys, order, types, offsets, data).
TEST_P(StreamQuantize, DiagonalIsLlamaQuantizeFromTheSameImatrix) {
    const std::string dir = fresh_dir("stream-quantize-" + GetParam());
    const std::string model = shared("models/" + GetParam());
    for (const char * type : {"Q2_K", "Q4_K_M"}) {
        const RunResult r = run("cd " + dir + " && " + quantize_cmd(model, "imx.gguf", std::string(type) + " --chunks 4 --save-imatrix im.gguf"));
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
        const RunResult up = run("cd " + dir + " && " + upstream("llama-quantize") + " --imatrix im.gguf " + model +
                                 " up.gguf " + type + " 2 2>&1");
        ASSERT_EQ(up.exit_code, 0) << tail(up.output);
        EXPECT_TRUE(bytes_of(dir + "/imx.gguf") == bytes_of(dir + "/up.gguf")) << type;
    }
}

// --method hessian: every tensor the two-step path re-encodes, to within a percent of its output error (the
// two-step path reads its covariances back rounded to F32; here they stay in double).
TEST_P(StreamQuantize, HessianMatchesTheTwoStepPath) {
    const std::string dir = fresh_dir("stream-hessian-" + GetParam());
    const std::string model = shared("models/" + GetParam());
    // with the head's input too: the block runner re-encodes an untied head (output.weight) after the last block
    const RunResult c = run(imx_bin() + " collect -m " + model + " -f " + shared("data/calibration.txt") +
                            " --chunks 4 -t 2 --covariance --process-output -o " + dir + "/cov.gguf 2>&1");
    ASSERT_EQ(c.exit_code, 0) << tail(c.output);
    const RunResult two = run("(" + imx_bin() + " quantize -m " + model + " --imatrix " + dir + "/cov.gguf -o " + dir +
                              "/two.gguf Q2_K --method hessian -t 2 --json 2>/dev/null)");
    // qwen3moe-tiny's head is tied to token_embd, which the block runner re-encodes with the lookup's own error
    // beside the head's (engine/stream/head_statistics.h) and the two-step path cannot: the blocks compared here
    const bool tied = GetParam() == "qwen3moe-tiny.gguf";
    const RunResult st = run(quantize_cmd(model, dir + "/stream.gguf", std::string("Q2_K --method hessian --chunks 4") +
                                                                       (tied ? " --hessian-tensors '^blk'" : "")));
    const RunResult tie = tied ? run(quantize_cmd(model, dir + "/tied.gguf", "Q2_K --method hessian --chunks 4")) : st;
    ASSERT_EQ(tie.exit_code, 0) << tail(tie.output);
    const auto h = nlohmann::json::parse(tie.output);
    ASSERT_TRUE(h.contains("output_head")) << h.dump();
    EXPECT_EQ(h["output_head"]["type"], "q6_K");  // the Q2_K mix's head, tied (token_embd) or not (output)
    EXPECT_LT(h["output_head"]["error"].get<double>(), h["output_head"]["error_before"].get<double>());
    ASSERT_EQ(two.exit_code, 0) << tail(two.output);
    ASSERT_EQ(st.exit_code, 0) << tail(st.output);
    const auto a = nlohmann::json::parse(two.output), b = nlohmann::json::parse(st.output);
    EXPECT_EQ(a["hessian_tensors"], b["hessian_tensors"]);
    EXPECT_EQ(a["hessian_rows"], b["hessian_rows"]);
    EXPECT_EQ(b.contains("output_head"), !tied);
    EXPECT_EQ(a["hessian_error_diagonal"].get<double>() > 0, true);
    const double ea = a["hessian_error"].get<double>(), eb = b["hessian_error"].get<double>();
    EXPECT_NEAR(eb, ea, 0.01 * ea);
    EXPECT_NEAR(b["hessian_error_diagonal"].get<double>(), a["hessian_error_diagonal"].get<double>(),
                1e-3 * a["hessian_error_diagonal"].get<double>());
    // the same types: the sizes differ only by the header's quantize.imatrix.* strings (the file's name)
    const auto two_size = (double) fs::file_size(dir + "/two.gguf"), stream_size = (double) fs::file_size(dir + "/stream.gguf");
    EXPECT_NEAR(stream_size, two_size, 256.0);
}

INSTANTIATE_TEST_SUITE_P(SharedModels, StreamQuantize, ::testing::Values("qwen3moe-tiny.gguf", "deepseek3-tiny.gguf"),
                         [](const auto & info) { return info.param.substr(0, info.param.find('-')); });

// --sequential (the float block, the block stage by stage, the final block): the file loads and evaluates, and a
// run killed with -9 after a block's checkpoint resumes to the same bytes as an uninterrupted one (both streams'
// hidden states and the output so far in the checkpoint).
TEST(StreamQuantizeRuns, SequentialResumesAfterKillNine) {
    const std::string dir = fresh_dir("stream-sequential");
    const std::string model = shared("models/deepseek3-tiny.gguf");
    const std::string args = "Q2_K --method hessian --sequential --chunks 6";
    const RunResult full = run(quantize_cmd(model, dir + "/full.gguf", args));
    ASSERT_EQ(full.exit_code, 0) << tail(full.output);
    const auto j = nlohmann::json::parse(full.output);
    EXPECT_EQ(j["blocks"], 4);
    // every block tensor encoded once, stage by stage (MLA: q_a/kv_a, q_b, k_b, v_b, output, gate/up, down), and no
    // Hessian encoding before it to report
    EXPECT_EQ(j["sequential_stages"], 7);
    EXPECT_FALSE(j.contains("hessian_tensors"));
    EXPECT_GE(j["sequential_tensors"].get<int64_t>(), 4 * 5);
    EXPECT_GT(j["sequential_error"].get<double>(), 0);
    // the head after the last block, toward the float model's outputs from the quantized stream's inputs
    ASSERT_TRUE(j.contains("output_head")) << j.dump();
    EXPECT_LT(j["output_head"]["error"].get<double>(), j["output_head"]["error_before"].get<double>());
    const std::string out = dir + "/r.gguf";
    ASSERT_TRUE(kill_after_checkpoint(imx_bin() + " quantize -m " + model + " -f " + shared("data/calibration.txt") +
                                          " -o " + out + " -t 2 " + args + " --save-every 1",
                                      out + ".ckpt"));
    // what a kill between a checkpoint's save and the removal of the block's inputs leaves (block 0's inputs
    // are never the checkpoint's: the first one is saved after block 0)
    for (const char * stream : {".hidden-0", ".qhidden-0"}) {
        std::ofstream(out + ".ckpt" + stream, std::ios::app).put('x');
    }
    const RunResult r = run(quantize_cmd(model, out, args + " --save-every 1 --resume"));
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    EXPECT_GT(nlohmann::json::parse(r.output)["blocks_resumed"].get<int>(), 0);
    EXPECT_TRUE(bytes_of(out) == bytes_of(dir + "/full.gguf"));
    const RunResult e = run("(" + imx_bin() + " eval --base " + model + " " + out + " -f " + shared("data/wiki.test.raw") +
                            " --chunks 2 -t 2 --no-cache --json 2>/dev/null)");
    ASSERT_EQ(e.exit_code, 0) << tail(e.output);
    EXPECT_TRUE(std::isfinite(nlohmann::json::parse(e.output)["models"][1]["kld_mean"]["value"].get<double>()));
    for (const std::string & name : file_names(dir)) {
        EXPECT_TRUE(name.ends_with(".gguf") || name.ends_with(".log")) << name << " left behind";
    }
}

// Where step 2 has no covariance for a block's last matrices either (none fits the budget), they still get
// the diagonal encoding step 1 left to step 2: the file is the diagonal quantization's, byte for byte.
TEST(StreamQuantizeRuns, SequentialWithoutCovariancesIsTheDiagonalFile) {
    const std::string dir = fresh_dir("stream-sequential-nocov");
    const std::string model = shared("models/deepseek3-tiny.gguf");
    const RunResult seq = run(quantize_cmd(model, dir + "/seq.gguf",
                                           "Q2_K --method hessian --sequential --covariance-budget 0.01 --chunks 3"));
    ASSERT_EQ(seq.exit_code, 0) << tail(seq.output);
    const RunResult diag = run(quantize_cmd(model, dir + "/diag.gguf", "Q2_K --method diagonal --chunks 3"));
    ASSERT_EQ(diag.exit_code, 0) << tail(diag.output);
    EXPECT_TRUE(bytes_of(dir + "/seq.gguf") == bytes_of(dir + "/diag.gguf"));
}

// SIGTERM mid-run leaves nothing (hidden states of both streams, block models, the output so far).
TEST(StreamQuantizeRuns, SignalLeavesNoFiles) {
    const std::string dir = fresh_dir("stream-signal");
    const Background b = start(imx_bin() + " quantize -m " + shared("models/deepseek3-tiny.gguf") + " -f " +
                                   shared("data/calibration.txt") + " -o " + dir + "/s.gguf -t 2 Q2_K --method hessian "
                                   "--sequential --chunks 40",
                               dir + "/../stream-signal.log");
    std::this_thread::sleep_for(std::chrono::seconds(4));
    ::kill(b.pid, SIGTERM);
    const RunResult r = finish(b);
    EXPECT_EQ(r.exit_code, 143) << tail(r.output);
    EXPECT_TRUE(file_names(dir).empty()) << file_names(dir).size() << " files left, the first " << file_names(dir)[0];
}

// A split model in, the same bytes out as from the unsplit model.
TEST(StreamQuantizeRuns, SplitModelIn) {
    const std::string dir = fresh_dir("stream-split");
    const RunResult split = run(upstream("llama-gguf-split") + " --split --split-max-size 20M " +
                                shared("models/qwen3moe-tiny.gguf") + " " + dir + "/m 2>&1");
    ASSERT_EQ(split.exit_code, 0) << tail(split.output);
    const std::string args = "Q2_K --method hessian --chunks 3";
    ASSERT_EQ(run(quantize_cmd(dir + "/m-00001-of-00004.gguf", dir + "/a.gguf", args)).exit_code, 0);
    ASSERT_EQ(run(quantize_cmd(shared("models/qwen3moe-tiny.gguf"), dir + "/b.gguf", args)).exit_code, 0);
    EXPECT_TRUE(bytes_of(dir + "/a.gguf") == bytes_of(dir + "/b.gguf"));
}

// --refit-norms: every block's attn_norm and ffn_norm re-fitted (the router, F32, takes the inverse scales), the
// file as large as without and loadable, its KLD finite; the norms are what changed.
TEST(StreamQuantizeRuns, RefitNormsChangesOnlyTheNorms) {
    const std::string dir = fresh_dir("stream-refit");
    const std::string model = shared("models/qwen3moe-tiny.gguf");
    const std::string args = "Q2_K --method hessian --chunks 3";
    const RunResult plain = run(quantize_cmd(model, dir + "/plain.gguf", args));
    const RunResult refit = run(quantize_cmd(model, dir + "/refit.gguf", args + " --refit-norms"));
    ASSERT_EQ(plain.exit_code, 0) << tail(plain.output);
    ASSERT_EQ(refit.exit_code, 0) << tail(refit.output);
    const auto j = nlohmann::json::parse(refit.output);
    EXPECT_EQ(j["norms_refit"].get<int>(), 8);  // 4 blocks × (attn_norm, ffn_norm)
    EXPECT_GT(j["norm_gain"].get<double>(), 0);
    EXPECT_EQ(fs::file_size(dir + "/plain.gguf"), fs::file_size(dir + "/refit.gguf"));
    EXPECT_FALSE(bytes_of(dir + "/plain.gguf") == bytes_of(dir + "/refit.gguf"));
    const RunResult e = run("(" + imx_bin() + " eval --base " + model + " " + dir + "/refit.gguf -f " +
                            shared("data/wiki.test.raw") + " --chunks 2 -t 2 --no-cache --json 2>/dev/null)");
    ASSERT_EQ(e.exit_code, 0) << tail(e.output);
    EXPECT_TRUE(std::isfinite(nlohmann::json::parse(e.output)["models"][1]["kld_mean"]["value"].get<double>()));
}

TEST(StreamQuantizeRuns, WhatItCannotDoIsRefused) {
    const std::string dir = fresh_dir("stream-refused");
    const std::string model = shared("models/qwen3moe-tiny.gguf");
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"Q2_K --keep-split", "--keep-split is not written for a block-by-block quantization"},
        {"Q2_K --prior-weight auto", "--prior-weight auto cross-fits parts of an imatrix"},
        {"Q2_K --method hessian --output-scales", "--output-scales goes with --imatrix"},
        {"Q2_K --prior all-experts --prior-weight 8", "--prior all-experts needs imx collect --all-experts"},
        {"Q2_K --sequential", "--sequential goes with --method hessian"},
        {"Q2_K --refit-norms", "--refit-norms goes with --method hessian"},
    };
    for (const auto & [args, message] : cases) {
        const RunResult r = run(imx_bin() + " quantize -m " + model + " -f " + shared("data/calibration.txt") + " -o " +
                                dir + "/x.gguf " + args + " 2>&1");
        EXPECT_EQ(r.exit_code, 2) << args << ": " << r.output;
        EXPECT_NE(r.output.find(message), std::string::npos) << args << ": " << r.output;
    }
    const RunResult two = run(imx_bin() + " quantize -m " + model + " --imatrix " +
                              upstream_imatrix("qwen3moe-tiny.gguf", "--chunks 6", ".gguf") + " -o " + dir +
                              "/x.gguf Q2_K --save-every 1 2>&1");
    EXPECT_EQ(two.exit_code, 2);
    EXPECT_NE(two.output.find("--save-every goes with a block-by-block run"), std::string::npos) << two.output;
    EXPECT_TRUE(file_names(dir).empty());
}
