// imx collect --stream: block by block through the model (engine/stream). The same bytes as the whole-model run
// on both shared models (with covariances, chat chunks of their own lengths, a split model), exact resume after
// kill -9 at a block, no files left by a signal, and the options it cannot take refused.
#include "helpers.h"

#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

using namespace imx::test;
namespace fs = std::filesystem;

namespace {


std::string collect_cmd(const std::string & model, const std::string & out, const std::string & extra) {
    return imx_bin() + " collect -m " + shared("models/" + model) + " -f " + shared("data/calibration.txt") + " -o " +
           out + " -t 2 " + extra + " 2>&1";
}


class StreamCollect : public ::testing::TestWithParam<std::string> {};

}  // namespace

// The block run is libllama's own graph for the block on the whole model's hidden states: the file is the
// whole-model run's to the byte, sums, counts and covariances.
TEST_P(StreamCollect, SameBytesAsTheWholeModelRun) {
    const std::string dir = fresh_dir("stream-collect-" + GetParam());
    for (const char * mode : {"--no-stream", "--stream"}) {
        const RunResult r = run(collect_cmd(GetParam(), dir + "/" + mode + ".gguf", std::string(mode) + " --chunks 3 --covariance"));
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    }
    EXPECT_TRUE(bytes_of(dir + "/--no-stream.gguf") == bytes_of(dir + "/--stream.gguf"));
    EXPECT_EQ(file_names(dir), (std::vector<std::string>{"--no-stream.gguf", "--stream.gguf"}));
}

INSTANTIATE_TEST_SUITE_P(SharedModels, StreamCollect, ::testing::Values("qwen3moe-tiny.gguf", "deepseek3-tiny.gguf"),
                         [](const auto & info) { return info.param.substr(0, info.param.find('-')); });

TEST(StreamCollectRuns, ChatChunksAndSplitModels) {
    const std::string dir = fresh_dir("stream-collect-inputs");
    {
        std::ofstream chat(dir + "/chat.jsonl");
        for (int i = 0; i < 4; ++i) {
            chat << R"({"messages":[{"role":"user","content":"Which page table entry )" << i
                 << R"( is dirty?"},{"role":"assistant","content":"The one the process wrote to last."}]})" << "\n";
        }
    }
    for (const char * mode : {"--no-stream", "--stream"}) {
        const RunResult r = run(imx_bin() + " collect -m " + shared("models/qwen3moe-tiny.gguf") + " -f " + dir +
                                "/chat.jsonl --chat-template chatml -t 2 -o " + dir + "/chat" + mode + ".gguf " + mode + " 2>&1");
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    }
    EXPECT_TRUE(bytes_of(dir + "/chat--no-stream.gguf") == bytes_of(dir + "/chat--stream.gguf"));

    const RunResult split = run(upstream("llama-gguf-split") + " --split --split-max-size 20M " +
                                shared("models/deepseek3-tiny.gguf") + " " + dir + "/m 2>&1");
    ASSERT_EQ(split.exit_code, 0) << tail(split.output);
    const RunResult s = run(imx_bin() + " collect -m " + dir + "/m-00001-of-00004.gguf -f " + shared("data/calibration.txt") +
                            " --chunks 2 -t 2 --stream -o " + dir + "/split.gguf 2>&1");
    ASSERT_EQ(s.exit_code, 0) << tail(s.output);
    const RunResult w = run(collect_cmd("deepseek3-tiny.gguf", dir + "/whole.gguf", "--chunks 2 --no-stream"));
    ASSERT_EQ(w.exit_code, 0) << tail(w.output);
    EXPECT_TRUE(bytes_of(dir + "/split.gguf") == bytes_of(dir + "/whole.gguf"));
}

// Killed with -9 after a block's checkpoint, the same command with --resume ends with an uninterrupted run's
// bytes; the dead run's scratch files are removed by the next run.
TEST(StreamCollectRuns, ResumesAfterKillNineAtABlock) {
    const std::string dir = fresh_dir("stream-collect-resume");
    const std::string extra = "--stream --covariance --chunks 16";
    ASSERT_EQ(run(collect_cmd("deepseek3-tiny.gguf", dir + "/full.gguf", extra)).exit_code, 0);
    const std::string out = dir + "/r.gguf";
    ASSERT_TRUE(kill_after_checkpoint(collect_cmd("deepseek3-tiny.gguf", out, extra + " --save-every 1"), out + ".ckpt"));
    // what a kill between a checkpoint's save and the removal of the block's input leaves (block 0's input is
    // never the checkpoint's: the first one is saved after block 0)
    std::ofstream(out + ".ckpt.hidden-0", std::ios::app).put('x');
    // --resume alone checkpoints every block as it goes (the one stream class of collect and quantize)
    const RunResult r = run(collect_cmd("deepseek3-tiny.gguf", out, extra + " --resume"));
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    EXPECT_TRUE(bytes_of(out) == bytes_of(dir + "/full.gguf"));
    EXPECT_EQ(file_names(dir), (std::vector<std::string>{"full.gguf", "r.gguf"}));
}

// SIGTERM mid-run: without checkpoints nothing is left (hidden states, block models); with them, the
// checkpoint and the hidden states it names, from which --resume finishes.
TEST(StreamCollectRuns, SignalsLeaveOnlyTheCheckpoint) {
    const std::string dir = fresh_dir("stream-collect-signal");
    for (const bool keep : {false, true}) {
        const std::string out = dir + "/s.gguf";
        const Background b = start(collect_cmd("deepseek3-tiny.gguf", out, std::string("--stream --chunks 40") +
                                                                           (keep ? " --save-every 1" : "")),
                                   dir + "/../signal.log");
        if (keep) {
            ASSERT_FALSE(wait_for_file(out + ".ckpt", true).empty());
        } else {
            std::this_thread::sleep_for(std::chrono::seconds(2));
        }
        ::kill(b.pid, SIGTERM);
        const RunResult r = finish(b);
        EXPECT_EQ(r.exit_code, 143) << tail(r.output);
        for (const std::string & name : file_names(dir)) {
            const bool checkpoint = name == "s.gguf.ckpt" || name.rfind("s.gguf.ckpt.hidden-", 0) == 0;
            EXPECT_TRUE(keep && checkpoint) << name << " left behind";
        }
        if (keep) {
            const RunResult resumed = run(collect_cmd("deepseek3-tiny.gguf", out, "--stream --chunks 40 --save-every 1 --resume"));
            ASSERT_EQ(resumed.exit_code, 0) << tail(resumed.output);
            EXPECT_EQ(file_names(dir), std::vector<std::string>{"s.gguf"});
        }
    }
}

// --process-output: the head's input is the final norm of the last block's output, computed after the blocks
// (engine/stream/head_statistics.h) — the whole-model run's sums within 1e-6 and its covariance; a model whose
// head is its token embedding has none in either run, and its file is the one without the flag.
TEST(StreamCollectRuns, ProcessOutputIsTheWholeModelRunsHead) {
    const std::string dir = fresh_dir("stream-collect-head");
    for (const char * mode : {"--no-stream", "--stream"}) {
        const RunResult r = run(collect_cmd("deepseek3-tiny.gguf", dir + "/ds" + mode + ".gguf",
                                            std::string(mode) + " --chunks 3 --covariance --process-output"));
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    }
    const RunResult d = run(imx_bin() + " diff " + dir + "/ds--stream.gguf " + dir + "/ds--no-stream.gguf --tolerance 1e-6 2>&1");
    EXPECT_EQ(d.exit_code, 0) << d.output;
    const RunResult i = run("(" + imx_bin() + " inspect " + dir + "/ds--stream.gguf --json 2>/dev/null)");
    ASSERT_EQ(i.exit_code, 0) << tail(i.output);
    const nlohmann::json j = nlohmann::json::parse(i.output);
    const bool head_cov = std::any_of(j["covariances"].begin(), j["covariances"].end(), [](const auto & c) {
        return c["readers"][0] == "output.weight" && c["block"] == c["n_cols"];
    });
    EXPECT_TRUE(head_cov) << "the head's whole covariance";
    const auto covs = d.output.find("covariances: ");
    ASSERT_NE(covs, std::string::npos) << d.output;
    EXPECT_LE(std::stod(d.output.substr(covs + 13)), 1e-6) << d.output;
    for (const char * flag : {"", "--process-output"}) {
        const RunResult r = run(collect_cmd("qwen3moe-tiny.gguf", dir + "/qw" + flag + ".gguf", std::string("--stream --chunks 2 ") + flag));
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    }
    EXPECT_TRUE(bytes_of(dir + "/qw.gguf") == bytes_of(dir + "/qw--process-output.gguf"));
}

TEST(StreamCollectRuns, OptionsOfTheWholeModelPathAreRefused) {
    const std::string dir = fresh_dir("stream-collect-refused");
    for (const std::string & flag : {std::string("--all-experts")}) {
        const RunResult r = run(collect_cmd("qwen3moe-tiny.gguf", dir + "/x.gguf", "--stream --chunks 1 " + flag));
        EXPECT_EQ(r.exit_code, 2) << r.output;
        EXPECT_NE(r.output.find(flag + " does not go with a block-by-block run"), std::string::npos) << r.output;
    }
    EXPECT_TRUE(file_names(dir).empty());
}
