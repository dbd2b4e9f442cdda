// collect --all-experts on the shared models: the routed sums stay what llama-imatrix writes, the side pass
// agrees with the model's own computation where the routing already sends every token to every expert, and
// the statistics survive resume, shards and merge exactly; quantize --prior all-experts uses them.
#include "core/report/compare.h"
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

using namespace imx;
using namespace imx::test;
namespace fs = std::filesystem;

namespace {

std::string collect_cmd(const std::string & model, const std::string & out, const std::string & extra) {
    return imx_bin() + " collect -m " + shared("models/" + model) + " -f " + shared("data/calibration.txt") + " -o " +
           out + " -c 512 -t 2 " + extra;
}

std::string collect(const std::string & model, const std::string & out, const std::string & extra) {
    const RunResult r = run(collect_cmd(model, out, extra));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return out;
}

bool is_expert_tensor(const std::string & name) { return name.find("_exps.") != std::string::npos; }

class AllExperts : public ::testing::TestWithParam<std::string> {
protected:
    std::string model() { return GetParam(); }
    std::string stem() { return model().substr(0, model().find('-')); }
    std::string dir() { return work_dir("all-experts"); }
};

}  // namespace

TEST_P(AllExperts, RoutedSumsStayAndEveryTokenReachesEveryExpert) {
    const Imatrix plain = load_imatrix(collect(model(), dir() + "/" + stem() + "-plain.gguf", "--chunks 3"));
    const std::string with_file = collect(model(), dir() + "/" + stem() + "-all.gguf", "--chunks 3 --all-experts");
    const Imatrix with = load_imatrix(with_file);
    const Comparison c = compare(with, plain);
    EXPECT_EQ(c.worst_relative, 0.0) << "routed sums changed at " << c.worst_at;
    EXPECT_TRUE(c.count_mismatches.empty());
    EXPECT_EQ(with.tensors.size(), plain.tensors.size());

    const int64_t n_used = stem() == "qwen3moe" ? 2 : 4;
    size_t n_expert_tensors = 0;
    for (const auto & [name, ts] : with.tensors) {
        if (!is_expert_tensor(name)) {
            EXPECT_EQ(with.all_experts.count(name), 0u) << name;
            continue;
        }
        ++n_expert_tensors;
        ASSERT_EQ(with.all_experts.count(name), 1u) << name;
        const AllExpertStats & a = with.all_experts.at(name);
        EXPECT_EQ(a.tokens, 3 * 512) << name;
        const int64_t n_cols = ts.n_cols();
        ASSERT_EQ(a.n_cols(), n_cols) << name;
        if (name.find("ffn_down_exps") == std::string::npos) {
            // gate/up: every routed slot reads the token's one input, so the routed sums add up to n_used × all
            ASSERT_EQ(a.n_rows, 1) << name;
            for (int64_t j = 0; j < n_cols; ++j) {
                double routed = 0;
                for (int64_t e = 0; e < ts.n_mat(); ++e) {
                    routed += ts.sums[e * n_cols + j];
                }
                ASSERT_NEAR(routed, n_used * a.sums[j], 1e-6 * routed) << name << " column " << j;
            }
        } else {
            // down: over every token, an expert sees at least what it saw over its routed ones
            ASSERT_EQ(a.n_rows, ts.n_mat()) << name;
            for (size_t i = 0; i < a.sums.size(); ++i) {
                ASSERT_GE(a.sums[i], ts.sums[i] * (1 - 1e-5)) << name << " value " << i;
            }
            const int64_t unseen = ts.n_unseen();
            for (int64_t e = 0; e < ts.n_mat() && unseen > 0; ++e) {
                if (ts.counts[e] == 0) {
                    EXPECT_GT(*std::max_element(a.sums.begin() + e * n_cols, a.sums.begin() + (e + 1) * n_cols), 0.0)
                        << name << ": unrouted expert " << e << " still has statistics of its own";
                }
            }
        }
    }
    EXPECT_EQ(with.all_experts.size(), n_expert_tensors);
    EXPECT_GT(n_expert_tensors, 0u);
    const RunResult shown = run(imx_bin() + " inspect " + with_file);
    EXPECT_NE(shown.output.find("all experts: " + std::to_string(n_expert_tensors) + " expert tensors over all 1536 "
                                "tokens"), std::string::npos) << shown.output;
    if (stem() == "qwen3moe") {  // upstream reads the file as before
        const RunResult q = run(upstream("llama-quantize") + " --imatrix " + with_file + " " +
                                shared("models/" + model()) + " " + dir() + "/upstream-q4.gguf Q4_K_M 2");
        EXPECT_EQ(q.exit_code, 0) << q.output;
        fs::remove(dir() + "/upstream-q4.gguf");
    }
}

// With every token routed to all 16 experts, the model computes each expert's down input itself: the side
// pass must give the same sums.
TEST(AllExpertsEveryExpertRouted, SidePassEqualsTheModelsOwnDownInputs) {
    const std::string out = collect("qwen3moe-tiny.gguf", work_dir("all-experts") + "/qwen3moe-top16.gguf",
                                    "--chunks 2 --experts-used 16 --all-experts");
    const Imatrix im = load_imatrix(out);
    for (const auto & [name, ts] : im.tensors) {
        if (name.find("ffn_down_exps") == std::string::npos) {
            continue;
        }
        const AllExpertStats & a = im.all_experts.at(name);
        ASSERT_EQ(a.sums.size(), ts.sums.size());
        for (int64_t e = 0; e < ts.n_mat(); ++e) {
            EXPECT_EQ(ts.counts[e], a.tokens) << name;
        }
        double worst = 0;
        for (size_t i = 0; i < a.sums.size(); ++i) {
            worst = std::max(worst, std::abs(a.sums[i] - ts.sums[i]) / std::max(ts.sums[i], 1e-12));
        }
        EXPECT_LT(worst, 1e-4) << name;
    }
}

TEST(AllExpertsFiles, ResumeShardsAndMergeGiveTheSameBytes) {
    const std::string dir = work_dir("all-experts");
    const std::string whole = collect("deepseek3-tiny.gguf", dir + "/ds-whole.gguf", "--chunks 6 --all-experts");

    const std::string out = dir + "/ds-killed.gguf";
    fs::remove(out);
    fs::remove(out + ".ckpt");
    const std::string cmd = collect_cmd("deepseek3-tiny.gguf", out, "--chunks 6 --all-experts --save-every 1");
    ASSERT_TRUE(kill_after_checkpoint(cmd, out + ".ckpt")) << "no checkpoint appeared";
    const RunResult resumed = run(cmd + " --resume");
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_EQ(bytes_of(out), bytes_of(whole)) << "resume after kill -9";

    const std::string a = collect("deepseek3-tiny.gguf", dir + "/ds-1of2.gguf", "--chunks 6 --all-experts --shard 1/2");
    const std::string b = collect("deepseek3-tiny.gguf", dir + "/ds-2of2.gguf", "--chunks 6 --all-experts --shard 2/2");
    const RunResult m = run(imx_bin() + " merge " + b + " " + a + " -o " + dir + "/ds-merged.gguf");
    ASSERT_EQ(m.exit_code, 0) << m.output;
    EXPECT_EQ(bytes_of(dir + "/ds-merged.gguf"), bytes_of(whole)) << "merged shards";

    // a file without them: the merged file drops the statistics (they would cover part of the text), saying so
    const std::string plain = collect("deepseek3-tiny.gguf", dir + "/ds-plain.gguf", "--chunks 2");
    const RunResult mixed = run(imx_bin() + " merge " + whole + " " + plain + " -o " + dir + "/ds-mixed.gguf");
    ASSERT_EQ(mixed.exit_code, 0) << mixed.output;
    EXPECT_NE(mixed.output.find("lacks all-experts statistics"), std::string::npos) << mixed.output;
    EXPECT_TRUE(load_imatrix(dir + "/ds-mixed.gguf").all_experts.empty());
    const RunResult reversed = run(imx_bin() + " merge " + plain + " " + whole + " -o " + dir + "/ds-mixed2.gguf");
    ASSERT_EQ(reversed.exit_code, 0) << reversed.output;
    EXPECT_NE(reversed.output.find("the files before " + whole + " lack all-experts statistics"), std::string::npos)
        << reversed.output;
    EXPECT_TRUE(load_imatrix(dir + "/ds-mixed2.gguf").all_experts.empty());
}

TEST(AllExpertsQuantize, PriorUsesThemAndBadCombinationsFailInOneLine) {
    const std::string dir = work_dir("all-experts");
    const std::string with = collect("qwen3moe-tiny.gguf", dir + "/q-4.gguf", "--chunks 4 --all-experts");
    const std::string plain = collect("qwen3moe-tiny.gguf", dir + "/q-4-plain.gguf", "--chunks 4");
    const std::string q = imx_bin() + " quantize -m " + shared("models/qwen3moe-tiny.gguf") + " -t 2 ";
    const RunResult ok = run(q + "-o " + dir + "/q2k.gguf Q2_K --imatrix " + with + " --prior all-experts --prior-weight 64");
    ASSERT_EQ(ok.exit_code, 0) << ok.output;
    EXPECT_NE(ok.output.find("saw no token in " + with + ": they get the prior's target (all-experts)"), std::string::npos)
        << ok.output;

    const RunResult none = run(q + "-o " + dir + "/x.gguf Q2_K --imatrix " + plain + " --prior all-experts --prior-weight 64");
    EXPECT_EQ(none.exit_code, 2);
    EXPECT_NE(none.output.find(plain + ": holds no all-experts statistics"), std::string::npos) << none.output;
    EXPECT_FALSE(fs::exists(dir + "/x.gguf"));
    const RunResult autow = run(q + "-o " + dir + "/x.gguf Q2_K --imatrix " + with + " --imatrix " + with +
                                " --prior all-experts --prior-weight auto");
    EXPECT_EQ(autow.exit_code, 2) << autow.output;
    const RunResult dat = run(collect_cmd("qwen3moe-tiny.gguf", dir + "/x.dat", "--chunks 1 --all-experts"));
    EXPECT_EQ(dat.exit_code, 2);
    EXPECT_NE(dat.output.find("--all-experts needs the GGUF format"), std::string::npos) << dat.output;
}

INSTANTIATE_TEST_SUITE_P(SharedModels, AllExperts, ::testing::Values("qwen3moe-tiny.gguf", "deepseek3-tiny.gguf"),
                         [](const auto & info) { return info.param.substr(0, info.param.find('-')); });
