// Interchange with upstream llama.cpp, both ways, on the shared models:
// imx reads upstream's GGUF and .dat files, re-writes them byte-identically, and upstream llama-quantize
// makes the same quantized model from imx's files as from its own.
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include <gtest/gtest.h>

#include <filesystem>

using namespace imx;
using namespace imx::test;
namespace fs = std::filesystem;

namespace {

const char * const kRun = "--chunks 6";  // 6 chunks of 512 tokens: enough to leave rare experts unseen

struct ModelCase {
    std::string model;
    int         n_expert;
};

// names the case in test listings (ctest shows it)
void PrintTo(const ModelCase & c, std::ostream * os) { *os << c.model; }

class UpstreamFiles : public ::testing::TestWithParam<ModelCase> {};

// Runs upstream llama-quantize in `dir` with the imatrix given by its bare file name, so the path recorded in
// the quantized model's metadata is the same for every run.
std::string quantize_in(const std::string & dir, const std::string & imatrix_name, const std::string & type) {
    const std::string out = "model-" + type + ".gguf";
    const RunResult r = run("cd " + dir + " && " + upstream("llama-quantize") + " --imatrix " + imatrix_name + " " +
                            shared("models/qwen3moe-tiny.gguf") + " " + out + " " + type + " 2");
    EXPECT_EQ(r.exit_code, 0) << r.output.substr(r.output.size() > 2000 ? r.output.size() - 2000 : 0);
    return dir + "/" + out;
}

}  // namespace

TEST_P(UpstreamFiles, ReadsUpstreamGguf) {
    const auto & c = GetParam();
    const std::string path = upstream_imatrix(c.model, kRun, ".gguf");
    const Imatrix im = load_imatrix(path);
    EXPECT_EQ(im.meta.chunk_count, 6u);
    EXPECT_EQ(im.meta.chunk_size, 512u);
    ASSERT_EQ(im.meta.datasets.size(), 1u);
    EXPECT_NE(im.meta.datasets[0].find("calibration.txt"), std::string::npos);
    int n_expert_tensors = 0;
    for (const auto & [name, ts] : im.tensors) {
        if (name.find("_exps") != std::string::npos) {
            ++n_expert_tensors;
            EXPECT_EQ(ts.n_mat(), c.n_expert) << name;
        } else if (ts.n_mat() == 1) {
            EXPECT_EQ(ts.counts[0], 6 * 512) << name << ": every token reaches a dense weight";
        }
    }
    EXPECT_GT(n_expert_tensors, 0);
}

TEST_P(UpstreamFiles, RewritesUpstreamGgufByteIdentically) {
    const std::string path = upstream_imatrix(GetParam().model, kRun, ".gguf");
    const auto original = bytes_of(path);
    EXPECT_EQ(encode_gguf(decode_imatrix(original, path)), original);
    // and through the CLI, which writes atomically
    const std::string out = work_dir("rewrite") + "/" + GetParam().model + ".imx.gguf";
    const RunResult r = run(imx_bin() + " convert " + path + " -o " + out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(bytes_of(out), original);
}

TEST_P(UpstreamFiles, WritesTheSameDatAsUpstream) {
    const auto & c = GetParam();
    const std::string gguf_path = upstream_imatrix(c.model, kRun, ".gguf");
    const std::string dat_path = upstream_imatrix(c.model, std::string(kRun) + " --output-format dat", ".dat");
    const Imatrix from_gguf = load_imatrix(gguf_path);
    EXPECT_EQ(encode_legacy(from_gguf), bytes_of(dat_path))
        << "imx's .dat from upstream's GGUF must equal upstream's .dat from the same run";
    // reading upstream's .dat: one count per tensor, means × chunks
    const Imatrix dat = load_imatrix(dat_path);
    EXPECT_FALSE(dat.counts_per_expert_known);
    EXPECT_EQ(dat.meta.chunk_count, 6u);
    for (const auto & [name, ts] : dat.tensors) {
        const TensorStats & g = from_gguf.tensors.at(name);
        ASSERT_EQ(ts.sums.size(), g.sums.size()) << name;
        ASSERT_EQ(ts.n_mat(), 1);
        for (int64_t m = 0; m < g.n_mat(); ++m) {
            if (g.counts[m] == 0) {
                continue;
            }
            const size_t i = m * g.n_cols();
            EXPECT_NEAR(ts.sums[i] / ts.counts[0], g.sums[i] / g.counts[m], 1e-6 * g.sums[i] / g.counts[m] + 1e-12)
                << name << " matrix " << m;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(SharedModels, UpstreamFiles,
                         ::testing::Values(ModelCase{"qwen3moe-tiny.gguf", 16}, ModelCase{"deepseek3-tiny.gguf", 16}),
                         [](const auto & info) { return info.param.model.substr(0, info.param.model.find('-')); });

// llama-quantize gives bit-identical models from imx's files and from upstream's, for GGUF and .dat.
class QuantizeSameBytes : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantizeSameBytes, ImxFilesQuantizeLikeUpstreamFiles) {
    const std::string type = GetParam();
    const std::string model = "qwen3moe-tiny.gguf";
    const std::string up_gguf = upstream_imatrix(model, kRun, ".gguf");
    const std::string up_dat = upstream_imatrix(model, std::string(kRun) + " --output-format dat", ".dat");

    // GGUF: imx's re-write of upstream's file. .dat: imx's legacy file written from upstream's GGUF.
    const std::string d_up = fresh_dir("quantize-upstream-" + type);
    const std::string d_imx = fresh_dir("quantize-imx-" + type);
    fs::copy_file(up_gguf, d_up + "/imatrix.gguf");
    fs::copy_file(up_dat, d_up + "/imatrix.dat");
    ASSERT_EQ(run(imx_bin() + " convert " + up_gguf + " -o " + d_imx + "/imatrix.gguf").exit_code, 0);
    ASSERT_EQ(run(imx_bin() + " convert " + up_gguf + " -o " + d_imx + "/imatrix.dat").exit_code, 0);

    for (const char * name : {"imatrix.gguf", "imatrix.dat"}) {
        const std::string a = quantize_in(d_up, name, type);
        const auto a_bytes = bytes_of(a);
        const std::string b = quantize_in(d_imx, name, type);
        EXPECT_EQ(bytes_of(b), a_bytes) << type << " from " << name;
        fs::remove(a);
        fs::remove(b);
    }

    // upstream's own conversion of its .dat to GGUF vs imx's: the same quantized model
    const std::string d_conv_up = fresh_dir("quantize-conv-upstream-" + type);
    const std::string d_conv_imx = fresh_dir("quantize-conv-imx-" + type);
    const RunResult conv = run(upstream("llama-imatrix") + " -m " + shared("models/" + model) + " --in-file " + up_dat +
                               " -o " + d_conv_up + "/imatrix.gguf");
    ASSERT_EQ(conv.exit_code, 0) << conv.output;
    ASSERT_EQ(run(imx_bin() + " convert " + up_dat + " -o " + d_conv_imx + "/imatrix.gguf").exit_code, 0);
    EXPECT_EQ(bytes_of(quantize_in(d_conv_imx, "imatrix.gguf", type)),
              bytes_of(quantize_in(d_conv_up, "imatrix.gguf", type)));
}

INSTANTIATE_TEST_SUITE_P(Types, QuantizeSameBytes, ::testing::Values("Q2_K", "IQ2_XS"));
