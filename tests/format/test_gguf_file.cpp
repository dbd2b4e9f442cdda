// The GGUF container: exact layout, and a strict reader that fails cleanly on every damaged byte stream.
#include "core/error.h"
#include "core/format/gguf_file.h"

#include <gtest/gtest.h>

#include <cstring>

using namespace imx;

namespace {

gguf::File sample() {
    gguf::File f;
    f.kvs.push_back({"general.type", gguf::make_string("imatrix")});
    f.kvs.push_back({"imatrix.datasets", gguf::make_string_array({"a.txt", "b.txt"})});
    f.kvs.push_back({"imatrix.chunk_count", gguf::make_u32(7)});
    f.tensors.push_back({"x.in_sum2", {3, 2}, {1, 2, 3, 4, 5, 6}});
    f.tensors.push_back({"x.counts", {1, 2}, {10, 0}});
    f.tensors.push_back({"y.in_sum2", {5, 1}, {1, 1, 1, 1, 1}});
    return f;
}

}  // namespace

TEST(GgufFile, RoundTripKeepsKeysTensorsAndOrder) {
    const auto bytes = gguf::serialize(sample());
    const gguf::File g = gguf::parse(bytes, "mem");
    ASSERT_EQ(g.kvs.size(), 3u);
    EXPECT_EQ(g.kvs[1].key, "imatrix.datasets");
    EXPECT_EQ(g.kvs[1].value.strings, (std::vector<std::string>{"a.txt", "b.txt"}));
    ASSERT_EQ(g.tensors.size(), 3u);
    EXPECT_EQ(g.tensors[0].name, "x.in_sum2");
    EXPECT_EQ(g.tensors[1].data, (std::vector<float>{10, 0}));
    // ggml_n_dims: trailing dimensions of 1 are not written
    EXPECT_EQ(g.tensors[2].ne, (std::vector<int64_t>{5}));
    EXPECT_EQ(gguf::serialize(g), bytes);
}

TEST(GgufFile, LayoutMatchesTheSpecByteForByte) {
    gguf::File f;
    f.kvs.push_back({"k", gguf::make_u32(0x01020304)});
    f.tensors.push_back({"t", {1}, {1.0f}});
    const auto b = gguf::serialize(f);
    // header 24 + kv (8+1+4+4) + tensor info (8+1+4+8+4+8) = 74, padded to 96, + 4 data bytes padded to 32
    ASSERT_EQ(b.size(), 96u + 32u);
    EXPECT_EQ(std::memcmp(b.data(), "GGUF\x03\0\0\0", 8), 0);
    float v;
    std::memcpy(&v, b.data() + 96, 4);
    EXPECT_EQ(v, 1.0f);
    for (size_t i = 74; i < 96; ++i) {
        EXPECT_EQ(b[i], 0) << "padding byte " << i;
    }
}

TEST(GgufFile, EveryTruncationIsACleanError) {
    const auto bytes = gguf::serialize(sample());
    const size_t padding = 32 - 5 * 4;  // after the last tensor (5 floats); a reader does not need it
    for (size_t n = 0; n < bytes.size(); ++n) {
        const std::span<const uint8_t> cut(bytes.data(), n);
        if (n < bytes.size() - padding) {
            try {
                gguf::parse(cut, "cut.gguf");
                ADD_FAILURE() << "prefix of " << n << " bytes parsed";
            } catch (const Error & e) {
                EXPECT_EQ(std::string(e.what()).rfind("cut.gguf: ", 0), 0u) << e.what();
            }
        } else {
            EXPECT_NO_THROW(gguf::parse(cut, "cut.gguf"));
        }
    }
}

TEST(GgufFile, RejectsDuplicateTensorsAndKeys) {
    gguf::File f = sample();
    f.tensors.push_back(f.tensors[0]);
    const auto dup_tensor = gguf::serialize(f);
    EXPECT_THROW(
        {
            try {
                gguf::parse(dup_tensor, "d.gguf");
            } catch (const Error & e) {
                EXPECT_STREQ(e.what(), "d.gguf: duplicate tensor x.in_sum2");
                throw;
            }
        },
        Error);
    gguf::File g = sample();
    g.kvs.push_back(g.kvs[0]);
    EXPECT_THROW(gguf::parse(gguf::serialize(g), "k.gguf"), Error);
}

TEST(GgufFile, RejectsBadMagicAndVersion) {
    auto bytes = gguf::serialize(sample());
    bytes[0] = 'X';
    EXPECT_THROW(gguf::parse(bytes, "m.gguf"), Error);
    bytes[0] = 'G';
    bytes[4] = 1;
    EXPECT_THROW(gguf::parse(bytes, "v.gguf"), Error);
}

// Large tensors are written from doubles without a float copy (rounded_from), in pieces: the same bytes.
TEST(GgufFile, PiecewiseWritingFromDoublesGivesTheSameBytes) {
    std::vector<double> values(200000);
    for (size_t i = 0; i < values.size(); ++i) {
        values[i] = 1.0 / (double) (i + 3);
    }
    gguf::File copied, pointed;
    copied.tensors.push_back({"a.in_cov", {500, 400}, std::vector<float>(values.begin(), values.end()), {}});
    copied.tensors.push_back({"b.counts", {3}, {1, 2, 3}, {}});
    pointed = copied;
    pointed.tensors[0].data.clear();
    pointed.tensors[0].rounded_from = &values;
    std::vector<uint8_t> pieces;
    size_t n_pieces = 0;
    gguf::serialize(pointed, [&](std::span<const uint8_t> p) {
        pieces.insert(pieces.end(), p.begin(), p.end());
        ++n_pieces;
    });
    EXPECT_EQ(pieces, gguf::serialize(copied));
    EXPECT_GT(n_pieces, 3u);
}
