// Imatrix files on synthetic data: GGUF round trip, and the legacy format's means, ncall and unseen experts.
#include "core/format/checkpoint.h"
#include "core/error.h"
#include "core/format/imatrix_file.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

using namespace imx;

namespace {

// A MoE tensor with 3 experts of 4 columns (expert 1 never routed), a dense tensor and a per-head 3-D one.
Imatrix sample() {
    Imatrix im;
    im.meta = {{"calib.txt"}, 2, 512};
    im.tensors["blk.0.ffn_up_exps.weight"] = {{1, 2, 3, 4, 0, 0, 0, 0, 9, 10, 11, 12}, {300, 0, 724}};
    im.tensors["blk.0.attn_q.weight"] = {{5, 6, 7, 8}, {1024}};
    im.tensors["blk.0.attn_k_b.weight"] = {{1, 1, 2, 2, 3, 3}, {1024}};
    return im;
}

float legacy_value(const std::vector<uint8_t> & b, size_t offset) {
    float v;
    std::memcpy(&v, b.data() + offset, 4);
    return v;
}

}  // namespace

TEST(ImatrixFile, GgufRoundTripIsExact) {
    const Imatrix im = sample();
    const auto bytes = encode_gguf(im);
    const Imatrix back = decode_imatrix(bytes, "mem.gguf");
    EXPECT_EQ(back.meta.datasets, im.meta.datasets);
    EXPECT_EQ(back.meta.chunk_count, 2u);
    EXPECT_EQ(back.meta.chunk_size, 512u);
    ASSERT_EQ(back.tensors.size(), 3u);
    for (const auto & [name, ts] : im.tensors) {
        EXPECT_EQ(back.tensors.at(name).sums, ts.sums) << name;
        EXPECT_EQ(back.tensors.at(name).counts, ts.counts) << name;
    }
    EXPECT_EQ(back.tensors.at("blk.0.ffn_up_exps.weight").n_cols(), 4);
    EXPECT_EQ(back.tensors.at("blk.0.ffn_up_exps.weight").n_unseen(), 1);
    EXPECT_EQ(encode_gguf(back), bytes);
}

TEST(ImatrixFile, LegacyStoresMeansTimesChunksAndOnesForUnseenExperts) {
    const auto b = encode_legacy(sample());
    const Imatrix back = decode_imatrix(b, "mem.dat");
    EXPECT_FALSE(back.counts_per_expert_known);
    EXPECT_EQ(back.meta.chunk_count, 2u);
    EXPECT_EQ(back.meta.datasets, std::vector<std::string>{"calib.txt"});
    const TensorStats & up = back.tensors.at("blk.0.ffn_up_exps.weight");
    // ncall = ceil(724 / 512) = 2; one count for the tensor: 2 chunks × 512 tokens
    ASSERT_EQ(up.counts, std::vector<int64_t>{1024});
    ASSERT_EQ(up.sums.size(), 12u);
    // mean of expert 0 column 0 is 1/300; stored × 2 chunks, read back × 512 tokens
    EXPECT_FLOAT_EQ((float) up.sums[0], (1.0f / 300.0f) * 2.0f * 512.0f);
    // the unseen expert is stored with mean 1
    EXPECT_FLOAT_EQ((float) up.sums[4], 1.0f * 2.0f * 512.0f);
    // first entry in name order is attn_k_b: n_entries, len, name, ncall, nval, values...
    const size_t name_len = std::strlen("blk.0.attn_k_b.weight");
    EXPECT_FLOAT_EQ(legacy_value(b, 4 + 4 + name_len + 8), (1.0f / 1024.0f) * 2.0f);
}

TEST(ImatrixFile, LegacyLeavesOutTensorsWithoutAnyData) {
    Imatrix im = sample();
    im.tensors["blk.1.ffn_up_exps.weight"] = {{0, 0, 0, 0}, {0, 0}};
    const Imatrix back = decode_imatrix(encode_legacy(im), "mem.dat");
    EXPECT_EQ(back.tensors.count("blk.1.ffn_up_exps.weight"), 0u);
    EXPECT_EQ(back.tensors.size(), 3u);
    // GGUF keeps it: "no data" is representable there
    EXPECT_EQ(decode_imatrix(encode_gguf(im), "mem.gguf").tensors.count("blk.1.ffn_up_exps.weight"), 1u);
}

TEST(ImatrixFile, LegacyTruncationAtEveryByteIsACleanErrorOrAValidPrefix) {
    const auto b = encode_legacy(sample());
    const size_t trailer = 4 + 4 + std::strlen("calib.txt");
    for (size_t n = 0; n < b.size(); ++n) {
        const std::span<const uint8_t> cut(b.data(), n);
        if (n == b.size() - trailer) {
            EXPECT_NO_THROW(decode_imatrix(cut, "cut.dat")) << "the trailer is optional";
        } else {
            EXPECT_THROW(decode_imatrix(cut, "cut.dat"), Error) << "prefix of " << n << " bytes";
        }
    }
}

TEST(ImatrixFile, FormatFromPath) {
    EXPECT_EQ(format_from_path("x/imatrix.dat"), ImatrixFormat::legacy);
    EXPECT_EQ(format_from_path("imatrix.gguf"), ImatrixFormat::gguf);
    EXPECT_EQ(format_from_path("imatrix"), ImatrixFormat::gguf);
}

// collect --all-experts' statistics: kept beside upstream's tensors (F32, in double in a shard), back as they
// were; a sums tensor
// without its token count, or of a shape its tensor cannot have, is a clean error.
TEST(ImatrixFile, AllExpertsStatisticsRoundTripAndBadOnesAreRefused) {
    Imatrix im = sample();
    im.all_experts["blk.0.ffn_up_exps.weight"] = {{0.5, 0.25, 3, 1024}, 1, 1024};
    const Imatrix back = decode_imatrix(encode_gguf(im), "mem.gguf");
    ASSERT_EQ(back.all_experts.size(), 1u);
    const AllExpertStats & a = back.all_experts.at("blk.0.ffn_up_exps.weight");
    EXPECT_EQ(a.sums, im.all_experts.at("blk.0.ffn_up_exps.weight").sums);
    EXPECT_EQ(a.n_rows, 1);
    EXPECT_EQ(a.tokens, 1024);
    Imatrix part = sample();
    part.meta.shard_count = 2;
    part.meta.shards = {1};
    part.all_experts["blk.0.ffn_up_exps.weight"] = {{0.1, 1e-300, 3, 1e12}, 1, 1024};
    EXPECT_EQ(decode_imatrix(encode_gguf(part), "part.gguf").all_experts.at("blk.0.ffn_up_exps.weight").sums,
              part.all_experts.at("blk.0.ffn_up_exps.weight").sums);
    // upstream's part of the file is what it was without them
    Imatrix plain = sample();
    const auto with = encode_gguf(im), without = encode_gguf(plain);
    EXPECT_EQ(decode_imatrix(with, "a").tensors.at("blk.0.attn_q.weight").sums,
              decode_imatrix(without, "b").tensors.at("blk.0.attn_q.weight").sums);

    im.all_experts["blk.0.ffn_up_exps.weight"] = {{1, 2, 3}, 1, 10};  // 3 columns for a 4-column tensor
    try {
        decode_imatrix(encode_gguf(im), "bad.gguf");
        FAIL() << "a wrong shape must be refused";
    } catch (const Error & e) {
        EXPECT_NE(std::string(e.what()).find("bad.gguf: tensor blk.0.ffn_up_exps.weight.in_sum2_all"), std::string::npos)
            << e.what();
    }
}

TEST(ImatrixFile, CrossCovarianceRoundTripsThroughFilesAndCheckpoints) {
    Imatrix im = sample();
    Covariance c(4, 4, 3);
    c.readers = {"blk.0.ffn_up_exps.weight"};
    c.counts = {300, 0, 724};
    for (size_t i = 0; i < c.values.size(); ++i) {
        c.values[i] = (double) (i % 5 == 0 ? 4 : 1);
    }
    c.cross.resize(c.values.size());
    for (size_t i = 0; i < c.cross.size(); ++i) {
        c.cross[i] = 0.5 * (double) i - 3;  // not symmetric
    }
    im.covariances.push_back(c);
    const Imatrix back = decode_imatrix(encode_gguf(im), "mem.gguf");
    ASSERT_EQ(back.covariances.size(), 1u);
    EXPECT_EQ(back.covariances[0].cross, c.cross);  // small whole numbers: exact in F32
    const std::string ckpt = (std::filesystem::temp_directory_path() / "imx-cross-test.ckpt").string();
    save_checkpoint({"fp", 2, im}, ckpt);
    EXPECT_EQ(load_checkpoint(ckpt).data.covariances.at(0).cross, c.cross);
    std::filesystem::remove(ckpt);
    // without a cross term nothing is written for it
    im.covariances[0].cross.clear();
    EXPECT_TRUE(decode_imatrix(encode_gguf(im), "mem.gguf").covariances[0].cross.empty());
    // a cross term beside blocks (or of another shape) is refused, naming the file and tensor
    Imatrix bad = sample();
    Covariance b(4, 2, 3);
    b.readers = {"blk.0.ffn_up_exps.weight"};
    b.counts = {300, 0, 724};
    b.values.assign(b.values.size(), 1.0);
    b.cross.assign(c.cross.size(), 1.0);
    bad.covariances.push_back(b);
    try {
        decode_imatrix(encode_gguf(bad), "bad.gguf");
        FAIL() << "a cross term beside blocks must be refused";
    } catch (const Error & e) {
        EXPECT_NE(std::string(e.what()).find("bad.gguf: tensor blk.0.ffn_up_exps.weight.in_cross"), std::string::npos)
            << e.what();
    }
}
