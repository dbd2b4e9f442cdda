// Bad input through the CLI: one line on stderr naming the file and the problem, exit code 2, no output file
// and no temporary file left behind.
#include "core/format/atomic_file.h"
#include "core/format/gguf_file.h"
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <limits>

using namespace imx;
using namespace imx::test;
namespace fs = std::filesystem;

namespace {

gguf::File valid_imatrix_gguf() {
    gguf::File f;
    f.kvs.push_back({"general.type", gguf::make_string("imatrix")});
    f.kvs.push_back({"imatrix.datasets", gguf::make_string_array({"calib.txt"})});
    f.kvs.push_back({"imatrix.chunk_count", gguf::make_u32(1)});
    f.kvs.push_back({"imatrix.chunk_size", gguf::make_u32(512)});
    f.tensors.push_back({"blk.0.ffn_up_exps.weight.in_sum2", {4, 2}, {1, 2, 3, 4, 5, 6, 7, 8}});
    f.tensors.push_back({"blk.0.ffn_up_exps.weight.counts", {1, 2}, {3, 5}});
    return f;
}

void write(const std::string & path, const std::vector<uint8_t> & bytes) { imx::write_file_atomic(path, bytes); }

struct Case {
    std::string name;      // file name of the bad input
    std::string expected;  // part of the one-line message
};

class MalformedInput : public ::testing::TestWithParam<Case> {
protected:
    static void SetUpTestSuite() {
        const std::string d = work_dir("malformed");
        const gguf::File good = valid_imatrix_gguf();
        const auto good_bytes = gguf::serialize(good);
        write(d + "/good.gguf", good_bytes);
        write(d + "/truncated.gguf", {good_bytes.begin(), good_bytes.begin() + good_bytes.size() / 2});

        gguf::File wrong_type = good;
        wrong_type.kvs[0].value = gguf::make_string("model");
        write(d + "/wrong-type.gguf", gguf::serialize(wrong_type));

        gguf::File mismatch = good;
        mismatch.tensors[1] = {"blk.0.ffn_up_exps.weight.counts", {1, 3}, {3, 5, 1}};
        write(d + "/shape-mismatch.gguf", gguf::serialize(mismatch));

        gguf::File dup = good;
        dup.tensors.push_back(dup.tensors[0]);
        write(d + "/duplicate.gguf", gguf::serialize(dup));

        gguf::File nan = good;
        nan.tensors[0].data[5] = std::numeric_limits<float>::quiet_NaN();
        write(d + "/nan.gguf", gguf::serialize(nan));

        gguf::File no_counts = good;
        no_counts.tensors.pop_back();
        write(d + "/no-counts.gguf", gguf::serialize(no_counts));

        const std::string text = "This is plain text, not an importance matrix at all.\n";
        write(d + "/not-gguf.dat", {text.begin(), text.end()});

        Imatrix im = decode_imatrix(good_bytes, "good");
        const auto dat = encode_legacy(im);
        write(d + "/truncated.dat", {dat.begin(), dat.begin() + 30});
    }
};

}  // namespace

TEST_P(MalformedInput, OneLineErrorExit2NoOutput) {
    const std::string d = work_dir("malformed");
    const std::string in = d + "/" + GetParam().name;
    // outputs in a folder of this case's own: ctest runs the cases as parallel processes, and one case's
    // temporary output must not be taken for another's left-behind file
    const std::string o = fresh_dir("malformed/out-" + fs::path(GetParam().name).filename().string());
    for (const char * out_name : {"out.gguf", "out.dat"}) {
        const std::string out = o + "/" + out_name;
        fs::remove(out);
        const RunResult r = run(imx_bin() + " convert " + in + " -o " + out);
        EXPECT_EQ(r.exit_code, 2) << r.output;
        EXPECT_EQ(r.output.rfind("imx: error: " + in + ": ", 0), 0u) << "names the file first: " << r.output;
        EXPECT_NE(r.output.find(GetParam().expected), std::string::npos) << r.output;
        EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
        EXPECT_FALSE(fs::exists(out));
    }
    // inspect and merge fail the same way
    EXPECT_EQ(run(imx_bin() + " inspect " + in).exit_code, 2);
    EXPECT_EQ(run(imx_bin() + " merge " + d + "/good.gguf " + in + " -o " + o + "/m.gguf").exit_code, 2);
    EXPECT_FALSE(fs::exists(o + "/m.gguf"));
    for (const auto & e : fs::directory_iterator(o)) {
        EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << "left behind: " << e.path();
    }
}

INSTANTIATE_TEST_SUITE_P(
    Files, MalformedInput,
    ::testing::Values(Case{"truncated.gguf", "truncated"}, Case{"wrong-type.gguf", "general.type is 'model'"},
                      Case{"shape-mismatch.gguf", "shape mismatch between sums [4, 2] and counts [1, 3]"},
                      Case{"duplicate.gguf", "duplicate tensor blk.0.ffn_up_exps.weight.in_sum2"},
                      Case{"nan.gguf", "tensor blk.0.ffn_up_exps.weight: value 5 is nan"},
                      Case{"no-counts.gguf", "has sums but no counts"},
                      Case{"not-gguf.dat", "not an imatrix file"}, Case{"truncated.dat", "truncated"}),
    [](const auto & info) {
        std::string n = info.param.name;
        for (char & c : n) {
            c = std::isalnum((unsigned char) c) ? c : '_';
        }
        return n;
    });

TEST(MalformedInputModel, AModelFileIsNotAnImatrix) {
    const std::string model = shared("models/qwen3moe-tiny.gguf");
    const RunResult r = run(imx_bin() + " inspect " + model);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find(model + ": not an imatrix file"), std::string::npos) << r.output;
}

TEST(MalformedInputModel, UnwritableOutputIsAnErrorNamingIt) {
    const std::string good = work_dir("malformed") + "/good.gguf";
    write(good, gguf::serialize(valid_imatrix_gguf()));
    const RunResult r = run(imx_bin() + " convert " + good + " -o /nonexistent-dir/x.gguf");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("/nonexistent-dir/x.gguf: cannot create"), std::string::npos) << r.output;
}
