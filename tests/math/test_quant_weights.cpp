// From sums and counts to quantization weights: upstream's division at W = 0, the neutral prior's pull and
// targets, unseen experts, legacy data, and MLA substitutes.
#include "core/error.h"
#include "core/math/quant_weights.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace imx;

namespace {

// 3 experts × 2 columns; expert 2 saw nothing
TensorStats three_experts() {
    TensorStats t;
    t.sums = {8, 2, 30, 6, 0, 0};
    t.counts = {4, 10, 0};
    return t;
}

}  // namespace

TEST(QuantWeights, WeightZeroIsUpstreamsDivisionAndUnseenGetOne) {
    const std::vector<float> w = quant_weights(three_experts(), Prior{0, PriorTarget::one});
    ASSERT_EQ(w.size(), 6u);
    EXPECT_EQ(w[0], 8.0f / 4.0f);
    EXPECT_EQ(w[1], 2.0f / 4.0f);
    EXPECT_EQ(w[2], 30.0f / 10.0f);
    EXPECT_EQ(w[3], 6.0f / 10.0f);
    EXPECT_EQ(w[4], 1.0f);
    EXPECT_EQ(w[5], 1.0f);
}

TEST(QuantWeights, PriorPullsThinDataTowardTheTarget) {
    const std::vector<float> w = quant_weights(three_experts(), Prior{4, PriorTarget::one});
    EXPECT_FLOAT_EQ(w[0], (8.0f + 4.0f) / (4.0f + 4.0f));
    EXPECT_FLOAT_EQ(w[3], (6.0f + 4.0f) / (10.0f + 4.0f));
    EXPECT_FLOAT_EQ(w[4], 1.0f);
    // a huge W leaves only the target
    const std::vector<float> big = quant_weights(three_experts(), Prior{1e12, PriorTarget::one});
    for (float v : big) EXPECT_NEAR(v, 1.0f, 1e-6);
}

TEST(QuantWeights, MeanAndGeomeanTargetsComeFromThePooledColumns) {
    // pooled over 14 tokens: columns 38/14 and 8/14
    const double c0 = 38.0 / 14, c1 = 8.0 / 14;
    const std::vector<float> mean = quant_weights(three_experts(), Prior{0, PriorTarget::mean});
    EXPECT_FLOAT_EQ(mean[4], (float) ((c0 + c1) / 2));
    EXPECT_FLOAT_EQ(mean[5], (float) ((c0 + c1) / 2));
    const std::vector<float> geo = quant_weights(three_experts(), Prior{0, PriorTarget::geomean});
    EXPECT_FLOAT_EQ(geo[4], (float) std::sqrt(c0 * c1));
    EXPECT_EQ(mean[0], 2.0f);  // seen experts keep their data at W = 0
}

TEST(QuantWeights, HierLeansExpertsOnTheirTensorAndTheTensorOnOne) {
    const double W = 2;
    const double t0 = (38 + W) / (14 + W), t1 = (8 + W) / (14 + W);
    const std::vector<float> w = quant_weights(three_experts(), Prior{W, PriorTarget::hier});
    EXPECT_FLOAT_EQ(w[4], (float) t0);  // unseen: the tensor-level target, per column
    EXPECT_FLOAT_EQ(w[5], (float) t1);
    EXPECT_FLOAT_EQ(w[0], (float) ((8 + W * t0) / (4 + W)));
    // a single matrix has nothing to pool with: hier is `one`
    TensorStats dense{{8, 2}, {4}};
    EXPECT_EQ(quant_weights(dense, Prior{W, PriorTarget::hier}), quant_weights(dense, Prior{W, PriorTarget::one}));
}

TEST(QuantWeights, LegacyDataTakesAllZeroExpertsAsUnseen) {
    Imatrix im;
    im.counts_per_expert_known = false;
    TensorStats t;
    t.sums = {8, 2, 0, 0, 6, 6};
    t.counts = {4};  // the tensor's one count, given to every expert
    im.tensors["blk.0.ffn_up_exps.weight"] = t;
    const QuantWeights q = quant_weights(im, Prior{}, {{"blk.0.ffn_up_exps.weight", {2, 8, 3}}});
    EXPECT_EQ(q.n_matrices, 3);
    EXPECT_EQ(q.n_unseen, 1);
    const auto & w = q.tensors.at("blk.0.ffn_up_exps.weight");
    EXPECT_EQ(w[0], 2.0f);
    EXPECT_EQ(w[2], 1.0f);  // not 0: upstream would quantize this expert against zero weights
    EXPECT_EQ(w[4], 1.5f);
    // without the model's shapes the experts cannot be told apart: the data is used as it is
    EXPECT_EQ(quant_weights(im, Prior{}).n_unseen, 0);
}

TEST(QuantWeights, SharedCountOfDense3dTensorsBroadcasts) {
    TensorStats t;  // 2 heads × 2 columns, one count for both heads (MLA attn_k_b)
    t.sums = {4, 8, 0, 0};
    t.counts = {4};
    const std::vector<float> w = quant_weights(t, Prior{});
    EXPECT_EQ(w, (std::vector<float>{1, 2, 0, 0}));  // known counts: a zero column is a real zero
}

TEST(QuantWeights, MlaSubstitutesGoBothWays) {
    QuantWeights q;
    q.tensors["blk.1.attn_kv_b.weight"] = {1, 2, 3};
    q.tensors["blk.2.attn_v_b.weight"] = {1, 2, 3, 3, 4, 5};  // 2 heads × 3
    const std::map<std::string, std::array<int64_t, 3>> shapes = {
        {"blk.1.attn_v_b.weight", {3, 4, 2}},
        {"blk.2.attn_kv_b.weight", {3, 16, 1}},
        {"blk.3.attn_v_b.weight", {3, 4, 2}},  // no data for either: left alone
    };
    add_mla_substitutes(q, shapes);
    EXPECT_EQ(q.tensors.at("blk.1.attn_v_b.weight"), (std::vector<float>{1, 2, 3, 1, 2, 3}));
    EXPECT_EQ(q.tensors.at("blk.2.attn_kv_b.weight"), (std::vector<float>{2, 3, 4}));
    EXPECT_EQ(q.tensors.count("blk.3.attn_v_b.weight"), 0u);
    EXPECT_EQ(q.notes.size(), 2u);
}

TEST(QuantWeights, MlaSubstituteNeedsMatchingShapes) {
    QuantWeights q;
    q.tensors["blk.1.attn_kv_b.weight"] = {1, 2, 3, 4};
    add_mla_substitutes(q, {{"blk.1.attn_v_b.weight", {3, 4, 2}}});
    EXPECT_EQ(q.tensors.count("blk.1.attn_v_b.weight"), 0u);
}

TEST(QuantWeights, UnknownPriorTargetIsAnError) {
    EXPECT_THROW(parse_prior_target("median"), Error);
    EXPECT_EQ(parse_prior_target("geomean"), PriorTarget::geomean);
}

// Dead features: an all-zero group of 16 columns in a seen matrix gets a floor; a lone zero column, an unseen
// matrix and groups with any signal stay as they are.
TEST(QuantWeights, AllZeroGroupsOfSeenMatricesGetAFloor) {
    Imatrix im;
    im.meta = {{"t.txt"}, 1, 512};
    TensorStats t;
    t.sums.assign(3 * 64, 2.0);       // 3 experts × 64 columns
    for (int j = 16; j < 32; ++j) {
        t.sums[0 * 64 + j] = 0;       // expert 0: a dead group
    }
    t.sums[1 * 64 + 5] = 0;           // expert 1: one dead column
    for (int j = 0; j < 64; ++j) {
        t.sums[2 * 64 + j] = 0;       // expert 2: never routed
    }
    t.counts = {4, 4, 0};
    im.tensors["blk.0.ffn_down_exps.weight"] = t;
    const QuantWeights q = quant_weights(im, Prior{});
    const std::vector<float> & w = q.tensors.at("blk.0.ffn_down_exps.weight");
    EXPECT_EQ(q.n_zero_groups, 1);
    ASSERT_EQ(q.notes.size(), 1u);
    EXPECT_NE(q.notes[0].find("1 groups of 16 columns"), std::string::npos);
    const float mean0 = (48 * 0.5f) / 64;  // expert 0's mean weight before the floor
    for (int j = 16; j < 32; ++j) {
        EXPECT_FLOAT_EQ(w[j], 1e-4f * mean0) << j;
    }
    EXPECT_EQ(w[15], 0.5f);
    EXPECT_EQ(w[64 + 5], 0.0f) << "a lone zero column stays (upstream's weights)";
    EXPECT_EQ(w[2 * 64], 1.0f) << "the unseen expert has the prior's target";
}

// collect --all-experts: each expert leans on its own input over every token; gate/up's one row serves all.
TEST(QuantWeights, AllExpertsTargetIsEachExpertsOwnInputOverEveryToken) {
    const AllExpertStats down{{40, 20, 60, 30, 80, 10}, 3, 20};  // per expert: means (2, 1), (3, 1.5), (4, 0.5)
    const std::vector<float> w = quant_weights(three_experts(), Prior{5, PriorTarget::all_experts}, &down);
    EXPECT_FLOAT_EQ(w[4], 4.0f) << "unseen expert 2 gets its own all-token mean";
    EXPECT_FLOAT_EQ(w[5], 0.5f);
    EXPECT_FLOAT_EQ(w[0], (8.0f + 5 * 2.0f) / (4 + 5));
    EXPECT_FLOAT_EQ(w[3], (6.0f + 5 * 1.5f) / (10 + 5));
    const AllExpertStats shared{{40, 20}, 1, 20};
    const std::vector<float> s = quant_weights(three_experts(), Prior{5, PriorTarget::all_experts}, &shared);
    EXPECT_FLOAT_EQ(s[4], 2.0f);
    EXPECT_FLOAT_EQ(s[5], 1.0f);
    // without those statistics (attention, dense FFN) the target is the tensor's mean, as --prior mean
    const std::vector<float> none = quant_weights(three_experts(), Prior{5, PriorTarget::all_experts});
    EXPECT_EQ(none, quant_weights(three_experts(), Prior{5, PriorTarget::mean}));
    // and through the whole-imatrix entry point, by tensor name
    Imatrix im;
    im.tensors["blk.0.ffn_down_exps.weight"] = three_experts();
    im.all_experts["blk.0.ffn_down_exps.weight"] = down;
    EXPECT_EQ(quant_weights(im, Prior{5, PriorTarget::all_experts}).tensors.at("blk.0.ffn_down_exps.weight"), w);
    EXPECT_EQ(parse_prior_target("all-experts"), PriorTarget::all_experts);
}
