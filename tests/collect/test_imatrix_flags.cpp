// llama-imatrix's command lines run unchanged with imx collect: the same flags with the same meaning, or a
// one-line note where imx does something else (docs/collect.md has the table).
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include <gtest/gtest.h>

#include <filesystem>

using namespace imx;
using namespace imx::test;
namespace fs = std::filesystem;

namespace {

const std::string kModel = shared("models/qwen3moe-tiny.gguf");
const std::string kModelWithHead = shared("models/deepseek3-tiny.gguf");  // qwen3moe-tiny ties its head
const std::string kText = shared("data/calibration.txt");

RunResult in_dir(const std::string & dir, const std::string & args) {
    return run("cd " + dir + " && " + imx_bin() + " collect " + args);
}

}  // namespace

// Published recipes, as people paste them (only the binary's name changes).
TEST(ImatrixFlags, PublishedCommandLinesRunUnchanged) {
    const std::string d = work_dir("imatrix-flags");
    fs::remove(d + "/imatrix.dat");
    const RunResult a = in_dir(d, "-m " + kModel + " -f " + kText + " -o imatrix.dat -ngl 99 --chunks 3");
    ASSERT_EQ(a.exit_code, 0) << a.output;
    EXPECT_EQ(load_imatrix(d + "/imatrix.dat").meta.chunk_count, 3u);

    fs::remove(d + "/im.gguf");
    const RunResult b = in_dir(d, "-m " + kModelWithHead + " -f " + kText + " -o im.gguf -c 512 -b 512 -ub 512 -t 2 --no-ppl "
                                  "-fa on --chunk 1 --chunks 2 --parse-special --output-format gguf -ofreq 1 "
                                  "--save-frequency 5 --process-output");
    ASSERT_EQ(b.exit_code, 0) << b.output;
    EXPECT_NE(b.output.find("note: -ofreq 1"), std::string::npos) << b.output;
    EXPECT_NE(b.output.find("note: --save-frequency is ignored"), std::string::npos) << b.output;
    const Imatrix im = load_imatrix(d + "/im.gguf");
    EXPECT_EQ(im.meta.chunk_count, 2u);
    ASSERT_TRUE(im.tensors.count("output.weight")) << "--process-output collects the head";
    EXPECT_EQ(im.tensors.at("output.weight").counts[0], 2 * 512);
    // without --process-output the head is not collected (and not computed)
    EXPECT_FALSE(load_imatrix(d + "/imatrix.dat").tensors.count("output.weight"));
}

// --in-file: added to what a run collects; without -f only combined; with --show-statistics printed.
TEST(ImatrixFlags, InFileCombinesAndShowsStatistics) {
    const std::string d = work_dir("imatrix-flags-in");
    for (const char * f : {"a.gguf", "b.gguf", "ab.gguf", "ab2.gguf"}) {
        fs::remove(d + "/" + f);
    }
    ASSERT_EQ(in_dir(d, "-m " + kModel + " -f " + kText + " -o a.gguf --chunks 2 -t 2").exit_code, 0);
    ASSERT_EQ(in_dir(d, "-m " + kModel + " -f " + kText + " -o b.gguf --chunk 2 --chunks 1 -t 2").exit_code, 0);
    const RunResult combined = in_dir(d, "--in-file a.gguf,b.gguf -o ab.gguf");
    ASSERT_EQ(combined.exit_code, 0) << combined.output;
    const RunResult both = in_dir(d, "-m " + kModel + " -f " + kText + " -o ab2.gguf --chunk 2 --chunks 1 -t 2 "
                                     "--in-file a.gguf");
    ASSERT_EQ(both.exit_code, 0) << both.output;
    const Imatrix ab = load_imatrix(d + "/ab.gguf"), ab2 = load_imatrix(d + "/ab2.gguf");
    const Imatrix a = load_imatrix(d + "/a.gguf"), b = load_imatrix(d + "/b.gguf");
    EXPECT_EQ(ab.meta.chunk_count, 3u);
    EXPECT_EQ(ab2.meta.chunk_count, 3u);
    for (const auto & [name, ts] : ab.tensors) {
        EXPECT_EQ(ts.counts, ab2.tensors.at(name).counts) << name;
        for (size_t e = 0; e < ts.counts.size(); ++e) {
            EXPECT_EQ(ts.counts[e], a.tensors.at(name).counts[e] + b.tensors.at(name).counts[e]) << name;
        }
    }
    const RunResult stats = in_dir(d, "--in-file ab.gguf --show-statistics");
    ASSERT_EQ(stats.exit_code, 0) << stats.output;
    EXPECT_NE(stats.output.find("Statistics for ab.gguf"), std::string::npos) << stats.output;
    EXPECT_EQ(in_dir(d, "--in-file a.gguf,b.gguf --show-statistics").exit_code, 2);
    EXPECT_EQ(in_dir(d, "-o x.gguf").exit_code, 2) << "neither text nor --in-file";
}
