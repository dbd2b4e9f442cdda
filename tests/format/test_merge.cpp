// merge: exact sums and per-expert counts; merge(imatrix(A), imatrix(B)) equals imatrix(A+B).
#include "core/error.h"
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace imx;
using namespace imx::test;

// Upstream accumulates Σx² in float, so its run over A+B and its runs over A and B round differently:
// measured up to 1.0e-5 relative (deepseek3-tiny, 8 chunks). imx's own collector accumulates in double
// and is held to 1e-6 (test_collect.cpp).
constexpr double kUpstreamFloatTolerance = 3e-5;

TEST(Merge, AddsSumsAndPerExpertCountsExactly) {
    Imatrix a, b;
    a.meta = {{"a.txt"}, 2, 512};
    b.meta = {{"b.txt"}, 3, 512};
    a.tensors["e"] = {{1, 2, 0, 0}, {5, 0}};
    b.tensors["e"] = {{1, 1, 4, 4}, {1, 9}};
    b.tensors["only_b"] = {{7}, {3}};
    merge_into(a, b, "b.gguf");
    EXPECT_EQ(a.tensors.at("e").sums, (std::vector<double>{2, 3, 4, 4}));
    EXPECT_EQ(a.tensors.at("e").counts, (std::vector<int64_t>{6, 9}));
    EXPECT_EQ(a.tensors.at("only_b").counts, std::vector<int64_t>{3});
    EXPECT_EQ(a.meta.chunk_count, 5u);
    EXPECT_EQ(a.meta.datasets, (std::vector<std::string>{"a.txt", "b.txt"}));
}

TEST(Merge, DifferentChunkSizesCountTokens) {
    Imatrix a, b;
    a.meta = {{}, 4, 512};
    b.meta = {{}, 2, 1024};
    merge_into(a, b, "b.gguf");
    EXPECT_EQ(a.meta.chunk_count, 8u);
    EXPECT_EQ(a.meta.chunk_size, 512u);
}

TEST(Merge, SharedCountBroadcastsToExperts) {
    Imatrix a, b;
    a.tensors["e"] = {{1, 1, 1, 1}, {4}};  // legacy-style: one count for both experts
    b.tensors["e"] = {{1, 1, 1, 1}, {1, 2}};
    merge_into(a, b, "b.gguf");
    EXPECT_EQ(a.tensors.at("e").counts, (std::vector<int64_t>{5, 6}));
}

TEST(Merge, ShapeMismatchNamesFileAndTensor) {
    Imatrix a, b;
    a.tensors["blk.0.attn_q.weight"] = {{1, 1}, {1}};
    b.tensors["blk.0.attn_q.weight"] = {{1, 1, 1}, {1}};
    try {
        merge_into(a, b, "b.gguf");
        FAIL();
    } catch (const Error & e) {
        EXPECT_NE(std::string(e.what()).find("b.gguf: tensor blk.0.attn_q.weight"), std::string::npos);
    }
}

// Upstream llama-imatrix on chunks 0-3 (A), 4-7 (B) and 0-7 (A+B) of the calibration text.
class MergeUpstream : public ::testing::TestWithParam<std::string> {};

TEST_P(MergeUpstream, MergeOfHalvesEqualsTheWhole) {
    const std::string model = GetParam();
    const std::string a = upstream_imatrix(model, "--chunks 4", ".gguf");
    const std::string b = upstream_imatrix(model, "--chunk 4 --chunks 4", ".gguf");
    const std::string ab = upstream_imatrix(model, "--chunks 8", ".gguf");
    const std::string merged = work_dir("merge") + "/" + model + "-merged.gguf";
    const RunResult r = run(imx_bin() + " merge " + a + " " + b + " -o " + merged);
    ASSERT_EQ(r.exit_code, 0) << r.output;

    const Imatrix m = load_imatrix(merged);
    const Imatrix whole = load_imatrix(ab);
    EXPECT_EQ(m.meta.chunk_count, whole.meta.chunk_count);
    ASSERT_EQ(m.tensors.size(), whole.tensors.size());
    int n_moe = 0;
    double worst = 0;
    std::string worst_at;
    for (const auto & [name, w] : whole.tensors) {
        const TensorStats & t = m.tensors.at(name);
        ASSERT_EQ(t.counts, w.counts) << name;  // exact, per expert
        n_moe += w.n_mat() > 1;
        ASSERT_EQ(t.sums.size(), w.sums.size());
        for (size_t i = 0; i < w.sums.size(); ++i) {
            const double rel = std::fabs(t.sums[i] - w.sums[i]) / std::max(std::fabs(w.sums[i]), 1e-30);
            if (rel > worst) {
                worst = rel;
                worst_at = name + "[" + std::to_string(i) + "]";
            }
        }
    }
    EXPECT_GT(n_moe, 0) << "the model's expert tensors must be part of the check";
    EXPECT_LT(worst, kUpstreamFloatTolerance) << "worst at " << worst_at;
    RecordProperty("worst_relative_difference", std::to_string(worst));
}

INSTANTIATE_TEST_SUITE_P(SharedModels, MergeUpstream,
                         ::testing::Values("qwen3moe-tiny.gguf", "deepseek3-tiny.gguf"),
                         [](const auto & info) { return info.param.substr(0, info.param.find('-')); });

// Past 2^24 tokens per matrix F32 counts round; files keep the exact counts beside them (an extra tensor
// upstream skips) and read them back in preference. Below 2^24 nothing extra is written (upstream's bytes).
TEST(Merge, CountsPast2To24StayExactThroughFiles) {
    const std::string d = work_dir("merge-exact");
    const int64_t big = (int64_t{1} << 24) - 1;  // exact in F32
    Imatrix a, b;
    a.meta = {{"a.txt"}, 32767, 512};
    b.meta = {{"b.txt"}, 1, 512};
    a.tensors["blk.0.ffn_down_exps.weight"] = {{1, 1, 1, 1}, {big, 5}};
    b.tensors["blk.0.ffn_down_exps.weight"] = {{1, 1, 1, 1}, {2, (int64_t{1} << 26) + 3}};
    save_imatrix(a, d + "/a.gguf", ImatrixFormat::gguf);
    save_imatrix(b, d + "/b.gguf", ImatrixFormat::gguf);
    const auto a_bytes = bytes_of(d + "/a.gguf");
    EXPECT_EQ(std::string(a_bytes.begin(), a_bytes.end()).find("counts_exact"), std::string::npos)
        << "below 2^24 the file is upstream's";
    const RunResult r = run(imx_bin() + " merge " + d + "/a.gguf " + d + "/b.gguf -o " + d + "/ab.gguf");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const Imatrix ab = load_imatrix(d + "/ab.gguf");
    EXPECT_EQ(ab.tensors.at("blk.0.ffn_down_exps.weight").counts,
              (std::vector<int64_t>{big + 2, (int64_t{1} << 26) + 8}));
    // and through a second merge
    const RunResult r2 = run(imx_bin() + " merge " + d + "/ab.gguf " + d + "/b.gguf -o " + d + "/abb.gguf");
    ASSERT_EQ(r2.exit_code, 0) << r2.output;
    EXPECT_EQ(load_imatrix(d + "/abb.gguf").tensors.at("blk.0.ffn_down_exps.weight").counts,
              (std::vector<int64_t>{big + 4, (int64_t{2} << 26) + 11}));
}
