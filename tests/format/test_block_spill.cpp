// Blocks' statistics kept on disk within a run (core/format/block_spill.h): read back exactly, block by block,
// and gone with the spill.
#include "core/format/block_spill.h"
#include "helpers.h"

#include <gtest/gtest.h>

#include <random>

using namespace imx;

namespace {

Imatrix block_stats(int b, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> x(0.0, 1.0);
    Imatrix im;
    const std::string p = "blk." + std::to_string(b) + ".";
    for (const char * t : {"attn_q.weight", "ffn_down_exps.weight"}) {
        TensorStats ts;
        ts.counts = {17, 0, 5};
        ts.sums.resize(3 * 8);
        for (double & v : ts.sums) {
            v = x(rng) * x(rng);
        }
        im.tensors[p + t] = ts;
    }
    Covariance whole(8, 8, 1), per_expert(8, 8, 3);
    whole.readers = {p + "attn_q.weight"};
    whole.counts = {17};
    per_expert.readers = {p + "ffn_down_exps.weight"};
    per_expert.counts = {17, 0, 5};
    for (Covariance * c : {&whole, &per_expert}) {
        for (double & v : c->values) {
            v = x(rng);
        }
    }
    whole.cross.resize(64);
    for (double & v : whole.cross) {
        v = x(rng);
    }
    im.covariances = {whole, per_expert};
    return im;
}

void expect_same(const Imatrix & a, const Imatrix & b) {
    ASSERT_EQ(a.tensors.size(), b.tensors.size());
    for (const auto & [name, ts] : a.tensors) {
        ASSERT_TRUE(b.tensors.count(name)) << name;
        EXPECT_EQ(ts.counts, b.tensors.at(name).counts) << name;
        EXPECT_EQ(ts.sums, b.tensors.at(name).sums) << name;
    }
    ASSERT_EQ(a.covariances.size(), b.covariances.size());
    for (size_t i = 0; i < a.covariances.size(); ++i) {
        EXPECT_EQ(a.covariances[i].readers, b.covariances[i].readers);
        EXPECT_EQ(a.covariances[i].n_mat, b.covariances[i].n_mat);
        EXPECT_EQ(a.covariances[i].counts, b.covariances[i].counts);
        EXPECT_EQ(a.covariances[i].values, b.covariances[i].values);  // exact doubles
        EXPECT_EQ(a.covariances[i].cross, b.covariances[i].cross);
    }
}

}  // namespace

TEST(BlockSpill, GivesBackEachBlockExactlyAndLeavesNothing) {
    const std::string path = test::fresh_dir("block-spill") + "/out.gguf.tmp-1.covariances";
    const Imatrix b0 = block_stats(0, 1), b1 = block_stats(1, 2);
    {
        BlockSpill spill(path);
        EXPECT_FALSE(spill.holds(1));
        ASSERT_TRUE(spill.put(0, b0));
        ASSERT_TRUE(spill.put(1, b1));
        EXPECT_TRUE(spill.why().empty()) << spill.why();
        EXPECT_TRUE(spill.holds(2));
        EXPECT_FALSE(spill.holds(3));
        EXPECT_TRUE(test::file_exists(path));
        expect_same(spill.get(1), b1);  // in any order, as often as asked
        expect_same(spill.get(0), b0);
        expect_same(spill.get(1), b1);
        EXPECT_THROW(spill.get(2), Error);
    }
    EXPECT_FALSE(test::file_exists(path));
}

TEST(BlockSpill, AFolderThatCannotBeWrittenDropsItWithAReason) {
    BlockSpill spill("/proc/imx-no-such-folder/spill");
    EXPECT_FALSE(spill.put(0, block_stats(0, 3)));
    EXPECT_FALSE(spill.holds(1));
    EXPECT_NE(spill.why().find("/proc/imx-no-such-folder/spill"), std::string::npos) << spill.why();
}

TEST(BlockSpill, AModelWhoseBlocksWouldNotFitIsDroppedAfterItsFirst) {
    const std::string path = test::fresh_dir("block-spill-room") + "/spill";
    BlockSpill spill(path);
    ASSERT_TRUE(spill.put(0, block_stats(0, 4)));
    EXPECT_TRUE(spill.room_for(3));  // a few KB more
    EXPECT_TRUE(spill.holds(1));
    EXPECT_FALSE(spill.room_for(2000000000));  // ~10 TB at this block's size
    EXPECT_FALSE(spill.holds(1));
    EXPECT_NE(spill.why().find("GiB free"), std::string::npos) << spill.why();
    EXPECT_FALSE(test::file_exists(path));
    EXPECT_FALSE(spill.put(1, block_stats(1, 5)));
}
