// Sequential quantization on the shared MLA model: collect --target-model (the cross term X̃ᵀX of the quantized
// model's inputs against the unquantized model's) and quantize --method hessian --sequential (layer by layer
// through the quantized file).
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

using namespace imx;
using namespace imx::test;
namespace fs = std::filesystem;

namespace {


const std::string kModel = "deepseek3-tiny.gguf";

std::string collect(const std::string & out, const std::string & extra) {
    return imx_bin() + " collect -m " + shared("models/" + kModel) + " -f " + shared("data/calibration.txt") +
           " -o " + out + " -c 512 -t 2 --chunks 2 " + extra;
}

}  // namespace

// Run against itself, the target model feeds every matmul exactly the inputs the model does: the cross term is
// the covariance (dense inputs, experts and per-head weights alike), and the sums stay a plain run's.
TEST(CollectCross, AgainstItselfTheCrossTermIsTheCovariance) {
    const std::string d = fresh_dir("cross-self");
    const RunResult self = run(collect(d + "/self.gguf", "--covariance --target-model " + shared("models/" + kModel)));
    ASSERT_EQ(self.exit_code, 0) << tail(self.output);
    EXPECT_NE(self.output.find("cross terms against the target model"), std::string::npos) << tail(self.output);
    const RunResult plain = run(collect(d + "/plain.gguf", "--covariance"));
    ASSERT_EQ(plain.exit_code, 0) << tail(plain.output);
    const Imatrix a = load_imatrix(d + "/self.gguf"), b = load_imatrix(d + "/plain.gguf");
    for (const auto & [name, ts] : b.tensors) {
        EXPECT_EQ(a.tensors.at(name).sums, ts.sums) << name;
    }
    ASSERT_EQ(a.covariances.size(), b.covariances.size());
    size_t with_cross = 0, experts = 0, heads = 0;
    for (const Covariance & c : a.covariances) {
        ASSERT_TRUE(c.full()) << c.readers[0];
        ASSERT_EQ(c.cross.size(), c.values.size()) << c.readers[0];
        with_cross += 1;
        experts += c.n_mat > 1 && a.tensors.at(c.readers[0]).n_mat() > 1;
        heads += c.n_mat > 1 && a.tensors.at(c.readers[0]).n_mat() == 1;
        for (int64_t m = 0; m < c.n_mat; ++m) {
            const int64_t n = c.n_cols;
            const double * v = c.values.data() + m * n * n;
            const double * x = c.cross.data() + m * n * n;
            for (int64_t i = 0; i < n; ++i) {
                const double scale = std::sqrt(v[i * n + i]);
                for (int64_t j = 0; j < n; ++j) {
                    ASSERT_NEAR(x[i * n + j], v[i * n + j], 1e-4 * scale * std::sqrt(v[j * n + j]) + 1e-9)
                        << c.readers[0] << " matrix " << m << " (" << i << ", " << j << ")";
                }
            }
        }
    }
    EXPECT_GT(experts, 0u);
    EXPECT_GT(heads, 0u);
    EXPECT_EQ(with_cross, a.covariances.size());
}

TEST(CollectCross, BadTargetsAreRefusedBeforeAnyWork) {
    const std::string d = fresh_dir("cross-bad");
    const RunResult no_cov = run(collect(d + "/x.gguf", "--target-model " + shared("models/" + kModel)));
    EXPECT_EQ(no_cov.exit_code, 2);
    EXPECT_NE(no_cov.output.find("goes with --covariance"), std::string::npos) << tail(no_cov.output);
    const RunResult missing = run(collect(d + "/x.gguf", "--covariance --target-model " + d + "/none.gguf"));
    EXPECT_EQ(missing.exit_code, 2);
    EXPECT_NE(missing.output.find(d + "/none.gguf: no such model file"), std::string::npos) << tail(missing.output);
    const RunResult other = run(collect(d + "/x.gguf", "--covariance --target-model " + shared("models/qwen3moe-tiny.gguf")));
    EXPECT_EQ(other.exit_code, 2);
    EXPECT_NE(other.output.find("qwen3moe-tiny.gguf: not the model"), std::string::npos) << tail(other.output);
    EXPECT_FALSE(fs::exists(d + "/x.gguf"));
}

// Layer by layer through the quantized file: every layer is encoded again, and the file keeps llama-quantize's
// types and size and loads. (Two chunks are too few to move KLD; the quality is measured in docs/hessian.md.)
TEST(QuantizeSequential, EveryLayerIsEncodedAgainAndTheFileStaysLlamaQuantizes) {
    const std::string d = fresh_dir("sequential");
    const RunResult col = run(collect(d + "/cov.gguf", "--covariance"));
    ASSERT_EQ(col.exit_code, 0) << tail(col.output);
    const std::string m = shared("models/" + kModel);
    const std::string base = imx_bin() + " quantize -m " + m + " --imatrix " + d + "/cov.gguf Q2_K -t 2 --method hessian";
    const RunResult first = run(base + " -o " + d + "/first.gguf");
    ASSERT_EQ(first.exit_code, 0) << tail(first.output);
    const RunResult seq = run(base + " -o " + d + "/seq.gguf --sequential -f " + shared("data/calibration.txt") +
                              " --sequential-chunks 2 --json");
    ASSERT_EQ(seq.exit_code, 0) << tail(seq.output);
    for (int l = 0; l < 4; ++l) {
        EXPECT_NE(seq.output.find("sequential: layer " + std::to_string(l) + ": "), std::string::npos) << tail(seq.output);
    }
    const auto json = nlohmann::json::parse(seq.output.substr(seq.output.rfind("\n{") + 1));
    EXPECT_EQ(json["sequential_layers"], 4);
    EXPECT_GE(json["sequential_tensors"].get<int>(), 40);
    EXPECT_EQ(fs::file_size(d + "/seq.gguf"), fs::file_size(d + "/first.gguf"));
    EXPECT_NE(bytes_of(d + "/seq.gguf"), bytes_of(d + "/first.gguf"));
    // held out: the last third of the calibration text (the runs above read its first chunks)
    const std::vector<uint8_t> text = bytes_of(shared("data/calibration.txt"));
    {
        std::ofstream held(d + "/held.txt", std::ios::binary);
        held.write(reinterpret_cast<const char *>(text.data() + text.size() * 2 / 3),
                   (std::streamsize) (text.size() - text.size() * 2 / 3));
    }
    const RunResult eval = run(imx_bin() + " eval --base " + m + " " + d + "/first.gguf " + d + "/seq.gguf -f " + d +
                               "/held.txt --chunks 8 -c 512 -t 2 --no-cache --json");
    ASSERT_EQ(eval.exit_code, 0) << tail(eval.output);
    const auto quality = nlohmann::json::parse(eval.output.substr(eval.output.find('{')));
    ASSERT_EQ(quality["models"].size(), 3u);  // the base, then the two quants
    const double kld_first = quality["models"][1]["kld_mean"]["value"], kld_seq = quality["models"][2]["kld_mean"]["value"];
    EXPECT_GT(kld_seq, 0.0);
    EXPECT_LT(kld_seq, 2 * kld_first);

    const RunResult no_text = run(base + " -o " + d + "/x.gguf --sequential");
    EXPECT_EQ(no_text.exit_code, 2);
    EXPECT_NE(no_text.output.find("--sequential goes with --method hessian and -f TEXT"), std::string::npos)
        << tail(no_text.output);
    const RunResult bad_step = run(base + " -o " + d + "/x.gguf --sequential -f " + shared("data/calibration.txt") +
                                   " --sequential-step 1.5");
    EXPECT_EQ(bad_step.exit_code, 1) << tail(bad_step.output);  // a usage error, as every flag's
    EXPECT_NE(bad_step.output.find("--sequential-step"), std::string::npos) << tail(bad_step.output);
    for (const std::string flag : {"--sequential-chunks 0", "--sequential-budget -5"}) {
        const RunResult bad = run(base + " -o " + d + "/x.gguf --sequential -f " + shared("data/calibration.txt") + " " + flag);
        EXPECT_EQ(bad.exit_code, 1) << flag << "\n" << tail(bad.output);
        EXPECT_NE(bad.output.find(flag.substr(0, flag.find(' '))), std::string::npos) << tail(bad.output);
    }
    EXPECT_FALSE(fs::exists(d + "/x.gguf"));
}
