// imx collect --shard I/N and imx merge: N parts of one text's chunks merge into the very bytes of one run over
// them (sums carried in double between), each part is a file upstream reads, and parts cannot be counted twice.
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include <gtest/gtest.h>

#include <filesystem>

using namespace imx;
using namespace imx::test;
namespace fs = std::filesystem;

namespace {


std::string collect(const std::string & dir, const std::string & model, const std::string & args) {
    return "cd " + dir + " && " + imx_bin() + " collect -m " + shared("models/" + model) + " -f " +
           shared("data/calibration.txt") + " -c 256 -t 2 " + (args.find("--chunks") == std::string::npos ? "--chunks 7 " : "") + args;
}

}  // namespace

TEST(Shards, ThreePartsMergeIntoOneRunByteForByte) {
    for (const std::string model : {"qwen3moe-tiny.gguf", "deepseek3-tiny.gguf"}) {
        const std::string dir = fresh_dir("shards");
        const std::string cov = model == "deepseek3-tiny.gguf" ? " --covariance" : "";
        RunResult r = run(collect(dir, model, "-o whole.gguf" + cov));
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
        for (int i = 1; i <= 3; ++i) {
            r = run(collect(dir, model, "--shard " + std::to_string(i) + "/3 -o part" + std::to_string(i) + ".gguf" + cov));
            ASSERT_EQ(r.exit_code, 0) << tail(r.output);
        }
        // 7 chunks in parts of 2, 2 and 3
        EXPECT_EQ(load_imatrix(dir + "/part1.gguf").meta.chunk_count, 2u);
        EXPECT_EQ(load_imatrix(dir + "/part3.gguf").meta.chunk_count, 3u);
        // in any order
        r = run("cd " + dir + " && " + imx_bin() + " merge part3.gguf part1.gguf part2.gguf -o merged.gguf");
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
        EXPECT_TRUE(bytes_of(dir + "/merged.gguf") == bytes_of(dir + "/whole.gguf")) << model;

        // two parts merged are still a part (sums in double), and the third completes them
        r = run("cd " + dir + " && " + imx_bin() + " merge part1.gguf part2.gguf -o p12.gguf && " + imx_bin() +
                " merge p12.gguf part3.gguf -o merged2.gguf");
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
        EXPECT_EQ(load_imatrix(dir + "/p12.gguf").meta.shards, (std::vector<uint32_t>{1, 2}));
        EXPECT_TRUE(bytes_of(dir + "/merged2.gguf") == bytes_of(dir + "/whole.gguf")) << model;

        // a part counted twice is refused, naming the file
        r = run("cd " + dir + " && " + imx_bin() + " merge p12.gguf part2.gguf -o bad.gguf");
        EXPECT_EQ(r.exit_code, 2);
        EXPECT_NE(r.output.find("part2.gguf: shard 2/3 is already in the files before it"), std::string::npos)
            << r.output;
    }
}

TEST(Shards, APartIsAFileUpstreamReads) {
    const std::string dir = fresh_dir("shards-upstream");
    const std::string model = shared("models/qwen3moe-tiny.gguf");
    RunResult r = run(collect(dir, "qwen3moe-tiny.gguf", "--shard 2/2 -o part.gguf"));
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    r = run(upstream("llama-imatrix") + " -m " + model + " --in-file " + dir + "/part.gguf --show-statistics");
    EXPECT_EQ(r.exit_code, 0) << tail(r.output);
    r = run(upstream("llama-quantize") + " --imatrix " + dir + "/part.gguf " + model + " " + dir + "/q.gguf Q2_K 2");
    EXPECT_EQ(r.exit_code, 0) << tail(r.output);

    const std::pair<std::string, std::string> bad[] = {
        {"--shard 3/2 -o x.gguf", "expected I/N"},
        {"--shard 0/2 -o x.gguf", "expected I/N"},
        {"--shard 1/2 -o x.dat", "needs the GGUF format"},
        {"--shard 1/9 -o x.gguf", "is empty"},
    };
    for (const auto & [args, message] : bad) {
        r = run(collect(dir, "qwen3moe-tiny.gguf", args));
        EXPECT_EQ(r.exit_code, 2) << args;
        EXPECT_NE(r.output.find(message), std::string::npos) << args << ": " << r.output;
    }
}

TEST(Shards, CovarianceSetsOfOneRunJoin) {
    const std::string dir = fresh_dir("covariance-sets");
    RunResult r = run(collect(dir, "qwen3moe-tiny.gguf", "--chunks 3 --covariance -o whole.gguf"));
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    r = run(collect(dir, "qwen3moe-tiny.gguf", "--chunks 3 --covariance --covariance-tensors 'blk\\.[01]\\.' -o a.gguf"));
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    r = run(collect(dir, "qwen3moe-tiny.gguf", "--chunks 3 --covariance --covariance-tensors 'blk\\.[23]\\.' -o b.gguf"));
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    const Imatrix a = load_imatrix(dir + "/a.gguf"), whole = load_imatrix(dir + "/whole.gguf");
    ASSERT_FALSE(a.covariances.empty());
    EXPECT_LT(a.covariances.size(), whole.covariances.size());
    for (const Covariance & c : a.covariances) {
        EXPECT_TRUE(c.readers[0].rfind("blk.0.", 0) == 0 || c.readers[0].rfind("blk.1.", 0) == 0) << c.readers[0];
    }
    r = run("cd " + dir + " && " + imx_bin() + " merge b.gguf a.gguf -o joined.gguf");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    const Imatrix j = load_imatrix(dir + "/joined.gguf");
    for (const auto & [name, ts] : whole.tensors) {
        EXPECT_EQ(j.tensors.at(name).sums, ts.sums) << name;  // kept once, not added
        EXPECT_EQ(j.tensors.at(name).counts, ts.counts) << name;
    }
    ASSERT_EQ(j.covariances.size(), whole.covariances.size());
    for (const Covariance & c : whole.covariances) {
        const Covariance * got = j.covariance_of(c.readers[0]);
        ASSERT_NE(got, nullptr) << c.readers[0];
        EXPECT_EQ(got->readers, c.readers);
        EXPECT_EQ(got->values, c.values) << c.readers[0];
    }
    // the same set twice would count it twice
    r = run("cd " + dir + " && " + imx_bin() + " merge a.gguf a.gguf -o bad.gguf");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("is already in the files before it"), std::string::npos) << r.output;
    r = run(collect(dir, "qwen3moe-tiny.gguf", "--chunks 3 --covariance-tensors 'blk' -o c.gguf"));
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("--covariance-tensors goes with --covariance"), std::string::npos) << r.output;
}
