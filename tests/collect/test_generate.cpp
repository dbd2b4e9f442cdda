// imx generate: calibration text sampled from the model itself — the token count asked for, the same text for
// the same seed and another for another seed, documents split at the end-of-text the model samples, and a text
// that imx collect takes as calibration.
#include "helpers.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace imx::test {

namespace {

RunResult generate(const std::string & out, const std::string & extra) {
    return run("(" + imx_bin() + " generate -m " + shared("models/qwen3moe-tiny.gguf") + " -o " + out +
               " --sequences 6 -n 96 --parallel 4 -t 2 --json " + extra + " 2>/dev/null)");
}

}  // namespace

TEST(Generate, SeededSamplesThatCollectReads) {
    const std::string dir = fresh_dir("generate");
    const RunResult a = generate(dir + "/a.txt", "");
    ASSERT_EQ(a.exit_code, 0) << tail(a.output);
    const auto j = nlohmann::json::parse(a.output);
    EXPECT_EQ(j["sequences"], 6);
    EXPECT_EQ(j["tokens"], 6 * 96);  // end-of-text starts a new document, it does not end the sequence
    EXPECT_GE(j["documents"].get<int>(), 6);
    EXPECT_EQ(j["bytes"].get<uint64_t>(), bytes_of(dir + "/a.txt").size());
    EXPECT_GT(bytes_of(dir + "/a.txt").size(), 6u * 96u);  // text, not one character a token

    ASSERT_EQ(generate(dir + "/b.txt", "").exit_code, 0);
    EXPECT_TRUE(bytes_of(dir + "/a.txt") == bytes_of(dir + "/b.txt")) << "same command, another text";
    ASSERT_EQ(generate(dir + "/c.txt", "--seed 7").exit_code, 0);
    EXPECT_FALSE(bytes_of(dir + "/a.txt") == bytes_of(dir + "/c.txt")) << "another seed, the same text";

    const RunResult c = run(imx_bin() + " collect -m " + shared("models/qwen3moe-tiny.gguf") + " -f " + dir +
                            "/a.txt -c 128 -t 2 -o " + dir + "/a.imatrix.gguf 2>&1");
    ASSERT_EQ(c.exit_code, 0) << tail(c.output);
    EXPECT_TRUE(file_exists(dir + "/a.imatrix.gguf"));
    EXPECT_EQ(file_names(dir).size(), 4u) << "a temporary file left behind";
}

TEST(Generate, BadInputIsRefused) {
    const std::string dir = fresh_dir("generate-bad");
    const RunResult r = run(imx_bin() + " generate -m " + dir + "/missing.gguf -o " + dir + "/x.txt 2>&1");
    EXPECT_EQ(r.exit_code, 2) << tail(r.output);
    EXPECT_NE(r.output.find("missing.gguf"), std::string::npos) << tail(r.output);
    EXPECT_EQ(generate(dir + "/x.txt", "-n 0").exit_code, 1);
    EXPECT_EQ(generate(dir + "/no-such-folder/x.txt", "").exit_code, 2);
}

}  // namespace imx::test
