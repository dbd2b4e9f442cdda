// Choosing the prior per tensor by cross-fitting parts of the text: synthetic experts where the answer is known,
// then imx quantize --prior-weight auto on two real parts of calibration.txt.
#include "core/error.h"
#include "core/math/prior_choice.h"
#include "helpers.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <random>

using namespace imx;
using namespace imx::test;

namespace {

// K parts of one tensor: expert m's column j has true mean x² mu[m][j]; each part sees `tokens` per expert.
std::vector<Imatrix> parts_of(const std::vector<std::vector<double>> & mu, int64_t tokens, int k, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<Imatrix> parts(k);
    const int64_t n_mat = (int64_t) mu.size(), n_cols = (int64_t) mu[0].size();
    for (Imatrix & p : parts) {
        TensorStats ts;
        ts.sums.assign(n_mat * n_cols, 0.0);
        ts.counts.assign(n_mat, tokens);
        for (int64_t m = 0; m < n_mat; ++m) {
            for (int64_t j = 0; j < n_cols; ++j) {
                std::exponential_distribution<double> x2(1.0 / mu[m][j]);  // x² of one token, heavy-tailed
                for (int64_t t = 0; t < tokens; ++t) {
                    ts.sums[m * n_cols + j] += x2(rng);
                }
            }
        }
        p.tensors["w"] = ts;
    }
    return parts;
}

}  // namespace

TEST(PriorChoice, LeansOnThePriorWhereExpertsDoNotDifferAndNotWhereTheyDo) {
    std::mt19937 rng(1);
    std::lognormal_distribution<double> spread(0.0, 1.5);
    // experts alike and columns alike, few tokens: the tensor's mean is the better estimate of every weight
    const std::vector<std::vector<double>> alike(8, std::vector<double>(64, 1.7));
    const auto a = choose_priors(parts_of(alike, 4, 2, 7), {PriorTarget::mean}).at("w");
    EXPECT_GE(a.prior.weight, 64) << "thin, alike experts: a strong prior";
    EXPECT_LT(a.loss, 0.8 * a.loss_none);
    // experts different and well seen: their own data
    std::vector<std::vector<double>> distinct(8, std::vector<double>(64));
    for (auto & e : distinct) for (double & c : e) c = spread(rng);
    const auto d = choose_priors(parts_of(distinct, 2000, 2, 9), {PriorTarget::mean}).at("w");
    EXPECT_LE(d.prior.weight, 8) << "well-seen, distinct experts: little or no prior";
    EXPECT_THROW(choose_priors(parts_of(alike, 4, 1, 3), {PriorTarget::one}), Error);
}

TEST(PriorChoice, QuantizeChoosesPerTensorFromShardParts) {
    const std::string dir = fresh_dir("prior-auto");
    const std::string model = shared("models/qwen3moe-tiny.gguf");
    for (int i = 1; i <= 2; ++i) {
        const RunResult r = run(imx_bin() + " collect -m " + model + " -f " + shared("data/calibration.txt") +
                                " -c 256 -t 2 --chunks 8 --shard " + std::to_string(i) + "/2 -o " + dir + "/p" +
                                std::to_string(i) + ".gguf");
        ASSERT_EQ(r.exit_code, 0) << r.output;
    }
    const std::string base = imx_bin() + " quantize -m " + model + " -o " + dir + "/q.gguf Q2_K -t 2 ";
    RunResult r = run(base + "--imatrix " + dir + "/p1.gguf --imatrix " + dir + "/p2.gguf --prior-weight auto "
                      "--prior auto --json");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("prior chosen per tensor by cross-fitting 2 parts"), std::string::npos) << r.output;
    const nlohmann::json j = nlohmann::json::parse(r.output.substr(r.output.find("{\n")));
    EXPECT_EQ(j["prior_weight"], "auto");
    EXPECT_GE(j["priors"].size(), 20u);
    // bad inputs: one line, exit 2
    r = run(base + "--imatrix " + dir + "/p1.gguf --prior-weight auto");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("needs parts of the text to cross-fit"), std::string::npos) << r.output;
    r = run(base + "--imatrix " + dir + "/p1.gguf --prior-weight lots");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("expected a number of tokens"), std::string::npos) << r.output;
    r = run(base + "--imatrix " + dir + "/p1.gguf --prior auto --prior-weight 4");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("give --prior-weight auto too"), std::string::npos) << r.output;
}
