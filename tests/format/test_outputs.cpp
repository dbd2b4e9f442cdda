// What happens to outputs when things go wrong: an output folder that does not exist fails before any work,
// a full disk names the output and its cause, Ctrl-C/SIGTERM leave no temporary file (collect keeps its
// checkpoint), and the temporary file of a kill -9'd run is removed by the next run.
#include "helpers.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <thread>
#include <unistd.h>

using namespace imx::test;
namespace fs = std::filesystem;

namespace {

const std::string kModel = shared("models/qwen3moe-tiny.gguf");
const std::string kText = shared("data/calibration.txt");

std::vector<std::string> names_in(const std::string & dir) {
    std::vector<std::string> n;
    for (const auto & e : fs::directory_iterator(dir)) {
        n.push_back(e.path().filename().string());
    }
    std::sort(n.begin(), n.end());
    return n;
}

size_t lines(const std::string & s) { return (size_t) std::count(s.begin(), s.end(), '\n'); }

// An imatrix to feed the commands that read one (made once per build tree).
std::string small_imatrix() {
    const std::string out = work_dir("outputs-input") + "/im.gguf";
    if (!fs::exists(out)) {
        const RunResult r = run(imx_bin() + " collect -m " + kModel + " -f " + kText + " -o " + out + " --chunks 2 -t 2");
        EXPECT_EQ(r.exit_code, 0) << r.output;
    }
    return out;
}

}  // namespace

// Every command that writes checks its output's folder first: one line naming the output, exit 2, at once.
TEST(Outputs, MissingFolderFailsBeforeAnyWork) {
    const std::string im = small_imatrix();
    const std::string bad = "/nonexistent-imx-dir/x";
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"collect -m " + kModel + " -f " + kText + " -o " + bad + ".gguf", bad + ".gguf"},
        {"quantize -m " + kModel + " --imatrix " + im + " -o " + bad + ".gguf Q2_K", bad + ".gguf"},
        {"merge " + im + " " + im + " -o " + bad + ".gguf", bad + ".gguf"},
        {"convert " + im + " -o " + bad + ".dat", bad + ".dat"},
        {"stats " + im + " --html " + bad + ".html", bad + ".html"},
    };
    for (const auto & [args, out] : cases) {
        const RunResult r = run(imx_bin() + " " + args);
        EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
        EXPECT_EQ(r.output.rfind("imx: error: " + out + ": cannot create", 0), 0u) << args << "\n" << r.output;
        EXPECT_EQ(lines(r.output), 1u) << "nothing ran before the check: " << args << "\n" << r.output;
    }
    // the checkpoint too, when one is asked for (here its name is taken by a folder)
    const std::string d = fresh_dir("outputs-ckpt");
    fs::create_directories(d + "/x.gguf.ckpt");
    const RunResult r = run(imx_bin() + " collect -m " + kModel + " -f " + kText + " -o " + d + "/x.gguf --save-every 1");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_EQ(r.output.rfind("imx: error: " + d + "/x.gguf.ckpt: is a folder", 0), 0u) << r.output;
}

// A disk that fills up: the output is named with the system's reason, and nothing is left behind. The small
// file system is a tmpfs mounted in a private mount namespace (unshare), so no root is needed.
TEST(Outputs, FullDiskNamesTheOutputAndLeavesNothing) {
    if (run("unshare -Urm true").exit_code != 0) {
        GTEST_SKIP() << "unshare -Urm is not permitted here";
    }
    const std::string d = fresh_dir("outputs-full");
    const std::string mnt = d + "/small";
    fs::create_directories(mnt);
    // 61 MiB of F16 model into Q8_0 (about 33 MiB) on a 4 MiB file system
    const RunResult r = run("unshare -Urm sh -c 'mount -t tmpfs -o size=4m tmpfs " + mnt + " && " + imx_bin() +
                            " quantize -m " + kModel + " -o " + mnt + "/out.gguf Q8_0 -t 2; echo rc=$?; ls -A " +
                            mnt + "'");
    EXPECT_NE(r.output.find("imx: error: " + mnt + "/out.gguf: cannot write (No space left on device)"),
              std::string::npos) << r.output;
    EXPECT_NE(r.output.find("rc=2\n"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.substr(r.output.find("rc=2\n") + 5), "") << "left behind in the full folder";
}

// The output's temporary once the quantizer writes into it: before that, the folder check (prepare_output) creates
// and removes an empty file of the very same name, and a signal aimed at that one finds nothing to remove (a
// fresh-clone CI run under load caught it once: "imx: terminated" alone).
static std::string wait_for_written_temporary(const std::string & prefix) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < deadline) {
        const std::string f = wait_for_file(prefix);
        std::error_code ec;
        if (!f.empty() && fs::file_size(f, ec) > 0 && !ec) {
            return f;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return "";
}

// SIGTERM in the middle of a quantization removes the temporary output, says so, and exits 143.
TEST(Outputs, SigtermRemovesTheTemporaryOutput) {
    const std::string d = fresh_dir("outputs-sigterm");
    const Background b = start(imx_bin() + " quantize -m " + kModel + " -o " + d + "/out.gguf Q8_0 -t 1", d + "/log");
    const std::string tmp = wait_for_written_temporary(d + "/out.gguf.tmp-");
    ASSERT_FALSE(tmp.empty()) << "no temporary output appeared";
    ::kill(b.pid, SIGTERM);
    const RunResult r = finish(b);
    EXPECT_EQ(r.exit_code, 143) << r.output;
    EXPECT_NE(r.output.find("imx: terminated; removed " + tmp), std::string::npos) << r.output;
    EXPECT_EQ(names_in(d), std::vector<std::string>{"log"});
}

// A run killed with -9 cannot clean up; the next run with the same output removes what it left, saying so.
TEST(Outputs, NextRunRemovesTheTemporaryOfAKilledRun) {
    const std::string d = fresh_dir("outputs-kill9");
    const Background b = start(imx_bin() + " quantize -m " + kModel + " -o " + d + "/out.gguf Q8_0 -t 1", d + "/log");
    const std::string tmp = wait_for_written_temporary(d + "/out.gguf.tmp-");
    ASSERT_FALSE(tmp.empty());
    ::kill(b.pid, SIGKILL);
    EXPECT_EQ(finish(b).exit_code, 128 + SIGKILL);
    ASSERT_TRUE(fs::exists(tmp));
    const RunResult r = run(imx_bin() + " quantize -m " + kModel + " -o " + d + "/out.gguf Q8_0 -t 2");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("imx: removed " + tmp), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("left by an ended run (pid " + std::to_string(b.pid) + ")"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(tmp));
    EXPECT_EQ(names_in(d), (std::vector<std::string>{"log", "out.gguf"}));
}

// Ctrl-C during collect: the current chunk finishes, a checkpoint is written, exit 130, and --resume ends with
// the bytes of an uninterrupted run.
TEST(Outputs, CtrlCInCollectKeepsACheckpoint) {
    const std::string d = fresh_dir("outputs-sigint");
    const std::string base = imx_bin() + " collect -m " + kModel + " -f " + kText + " -c 256 -t 2 --chunks 30 ";
    const std::string out = d + "/im.gguf";
    const Background b = start(base + "-o " + out + " --save-every 1000", d + "/log");
    // wait until the progress line says some chunks are done (no checkpoint is due before chunk 1000)
    for (int i = 0; i < 6000 && run("grep -q 'imx collect: chunk' " + d + "/log").exit_code != 0; ++i) {
        usleep(10000);
    }
    ::kill(b.pid, SIGINT);
    const RunResult r = finish(b);
    ASSERT_EQ(r.exit_code, 130) << r.output;
    EXPECT_NE(r.output.find(out + ".ckpt holds"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("--resume continues"), std::string::npos) << r.output;
    EXPECT_TRUE(fs::exists(out + ".ckpt"));
    EXPECT_FALSE(fs::exists(out));

    const RunResult resumed = run(base + "-o " + out + " --save-every 1000 --resume");
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("resumed after chunk"), std::string::npos) << resumed.output;
    const RunResult whole = run(base + "-o " + d + "/whole.gguf");
    ASSERT_EQ(whole.exit_code, 0) << whole.output;
    EXPECT_EQ(bytes_of(out), bytes_of(d + "/whole.gguf"));
    EXPECT_EQ(names_in(d), (std::vector<std::string>{"im.gguf", "log", "whole.gguf"}));
}
