// imx quantize on the shared models: upstream's bytes at W = 0, the prior changing them, very low-bit types
// with unseen experts, clear errors and no partial files, legacy input, and MLA substitutes.
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include "ggml.h"
#include "gguf.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

using namespace imx;
using namespace imx::test;
namespace fs = std::filesystem;

namespace {

const std::string kQwen = "qwen3moe-tiny.gguf";

RunResult imx_quantize(const std::string & dir, const std::string & args) {
    return run("cd " + dir + " && " + imx_bin() + " quantize " + args);
}


size_t files_in(const std::string & dir) {
    size_t n = 0;
    for ([[maybe_unused]] const auto & e : fs::directory_iterator(dir)) ++n;
    return n;
}

}  // namespace

// Same imatrix, same type, W = 0: the very bytes llama-quantize writes (metadata included).
TEST(Quantize, WeightZeroIsLlamaQuantizeByteForByte) {
    const std::string dir = fresh_dir("quantize-w0");
    fs::copy_file(upstream_imatrix(kQwen, "--chunks 6", ".gguf"), dir + "/im.gguf");
    const RunResult up = run("cd " + dir + " && " + upstream("llama-quantize") + " --imatrix im.gguf " +
                             shared("models/" + kQwen) + " up.gguf Q2_K 2");
    ASSERT_EQ(up.exit_code, 0) << tail(up.output);
    const RunResult r = imx_quantize(dir, "-m " + shared("models/" + kQwen) + " --imatrix im.gguf -o imx.gguf Q2_K -t 2");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    EXPECT_NE(r.output.find("saw no token"), std::string::npos) << "6 chunks should leave rare experts unseen";
    EXPECT_TRUE(bytes_of(dir + "/up.gguf") == bytes_of(dir + "/imx.gguf"));

    // a tensor-type override, as llama-quantize's --tensor-type
    const RunResult up_tt = run("cd " + dir + " && " + upstream("llama-quantize") +
                                " --tensor-type ffn_down_exps=q8_0 --imatrix im.gguf " + shared("models/" + kQwen) +
                                " up-tt.gguf Q3_K_S 2");
    ASSERT_EQ(up_tt.exit_code, 0) << tail(up_tt.output);
    const RunResult tt = imx_quantize(dir, "-m " + shared("models/" + kQwen) +
                                               " --imatrix im.gguf -o imx-tt.gguf Q3_K_S -t 2 --tensor-type ffn_down_exps=q8_0");
    ASSERT_EQ(tt.exit_code, 0) << tail(tt.output);
    EXPECT_TRUE(bytes_of(dir + "/up-tt.gguf") == bytes_of(dir + "/imx-tt.gguf"));
    EXPECT_GT(fs::file_size(dir + "/imx-tt.gguf"), fs::file_size(dir + "/imx.gguf"));

    const RunResult w = imx_quantize(dir, "-m " + shared("models/" + kQwen) +
                                              " --imatrix im.gguf -o w16.gguf Q2_K -t 2 --prior-weight 16 --prior hier");
    ASSERT_EQ(w.exit_code, 0) << tail(w.output);
    EXPECT_EQ(fs::file_size(dir + "/w16.gguf"), fs::file_size(dir + "/up.gguf"));
    EXPECT_FALSE(bytes_of(dir + "/w16.gguf") == bytes_of(dir + "/up.gguf"));
}

// IQ1_S and IQ2_XXS need data for every tensor; experts that saw no token get neutral weights instead.
TEST(Quantize, VeryLowBitTypesSucceedWithUnseenExperts) {
    const std::string dir = fresh_dir("quantize-iq");
    const std::string im = upstream_imatrix(kQwen, "--chunks 6", ".gguf");
    for (const std::string type : {"IQ1_S", "IQ2_XXS"}) {
        const RunResult r = imx_quantize(dir, "-m " + shared("models/" + kQwen) + " --imatrix " + im + " -o " +
                                                  type + ".gguf " + type + " -t 2 --json");
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
        EXPECT_NE(r.output.find("\"matrices_unseen\": "), std::string::npos);
        EXPECT_EQ(r.output.find("\"matrices_unseen\": 0,"), std::string::npos);
        // the file loads and runs in upstream's own tool
        const RunResult ppl = run_perplexity("-m " + dir + "/" + type + ".gguf -f " +
                                  shared("data/wiki.test.raw") + " -c 128 --chunks 2 -t 2");
        EXPECT_EQ(ppl.exit_code, 0) << tail(ppl.output);
        EXPECT_NE(ppl.output.find("Final estimate: PPL"), std::string::npos);
    }
}

TEST(Quantize, TypeThatNeedsAnImatrixFailsCleanly) {
    const std::string dir = fresh_dir("quantize-needs");
    const RunResult r = imx_quantize(dir, "-m " + shared("models/" + kQwen) + " -o out.gguf IQ2_XXS -t 2");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("IQ2_XXS needs an importance matrix for tensor blk."), std::string::npos) << r.output;
    EXPECT_EQ(files_in(dir), 0u) << "no output and no temporary file";
}

TEST(Quantize, ImatrixWithoutATensorNamesIt) {
    const std::string dir = fresh_dir("quantize-missing");
    Imatrix im = load_imatrix(upstream_imatrix(kQwen, "--chunks 6", ".gguf"));
    ASSERT_EQ(im.tensors.erase("blk.1.ffn_down_exps.weight"), 1u);
    save_imatrix(im, dir + "/partial.gguf", ImatrixFormat::gguf);
    const RunResult r = imx_quantize(dir, "-m " + shared("models/" + kQwen) + " --imatrix partial.gguf -o out.gguf IQ2_XXS -t 2");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("tensor blk.1.ffn_down_exps.weight, and partial.gguf has no data for it"),
              std::string::npos) << tail(r.output);
    EXPECT_FALSE(file_exists(dir + "/out.gguf"));
    EXPECT_EQ(files_in(dir), 1u) << "only the imatrix: no partial model, no temporary file";
}

// Older llama.cpp (and ik_llama.cpp before #202) wrote zeros for experts that saw no token in imatrix.dat
// (today's upstream writes ones). Such a file, written here by hand from a GGUF imatrix.
void write_old_style_dat(const Imatrix & im, const std::string & path) {
    std::ofstream f(path, std::ios::binary);
    auto i32 = [&](int32_t v) { f.write((const char *) &v, 4); };
    i32((int32_t) im.tensors.size());
    const int32_t ncall = (int32_t) im.meta.chunk_count;
    for (const auto & [name, t] : im.tensors) {
        i32((int32_t) name.size());
        f.write(name.data(), (std::streamsize) name.size());
        i32(ncall);
        i32((int32_t) t.sums.size());
        const int64_t cols = t.n_cols();
        for (size_t i = 0; i < t.sums.size(); ++i) {
            const int64_t count = t.counts[i / cols];
            const float v = count ? (float) (t.sums[i] / count * ncall) : 0.0f;
            f.write((const char *) &v, 4);
        }
    }
    i32(ncall);
    i32(4);
    f.write("text", 4);
}

TEST(Quantize, LegacyDatWarnsAboutExpertsWithoutData) {
    const std::string dir = fresh_dir("quantize-legacy");
    const Imatrix im = load_imatrix(upstream_imatrix(kQwen, "--chunks 6", ".gguf"));
    const std::string dat = dir + "/old.dat";
    write_old_style_dat(im, dat);
    const RunResult r = imx_quantize(dir, "-m " + shared("models/" + kQwen) + " --imatrix " + dat + " -o out.gguf IQ2_XXS -t 2");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    EXPECT_NE(r.output.find("legacy .dat without per-expert counts"), std::string::npos) << tail(r.output);
    EXPECT_NE(r.output.find("%) have all-zero data"), std::string::npos);
}

// deepseek3-tiny has attn_v_b; an imatrix from a model with attn_kv_b instead still serves it.
TEST(Quantize, MlaKvbDataServesVb) {
    const std::string dir = fresh_dir("quantize-mla");
    Imatrix im = load_imatrix(upstream_imatrix("deepseek3-tiny.gguf", "--chunks 4", ".gguf"));
    int moved = 0;
    for (auto it = im.tensors.begin(); it != im.tensors.end();) {
        const std::string name = it->first;
        const size_t at = name.find("attn_v_b");
        if (at == std::string::npos) {
            ++it;
            continue;
        }
        // the heads pooled: what a model with one attn_kv_b matrix would have collected
        TensorStats vb = it->second, kvb;
        const int64_t cols = 256, heads = (int64_t) vb.sums.size() / cols;
        kvb.sums.assign(cols, 0.0);
        for (int64_t h = 0; h < heads; ++h)
            for (int64_t j = 0; j < cols; ++j) kvb.sums[j] += vb.sums[h * cols + j];
        kvb.counts = {vb.counts[0] * (vb.n_mat() == 1 ? heads : 1)};
        it = im.tensors.erase(it);
        im.tensors[name.substr(0, at) + "attn_kv_b.weight"] = kvb;
        ++moved;
    }
    ASSERT_EQ(moved, 4);
    save_imatrix(im, dir + "/kvb.gguf", ImatrixFormat::gguf);
    const RunResult r = imx_quantize(dir, "-m " + shared("models/deepseek3-tiny.gguf") + " --imatrix kvb.gguf -o out.gguf IQ2_XXS -t 2");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    EXPECT_NE(r.output.find("blk.0.attn_v_b.weight has no data: using blk.0.attn_kv_b.weight's"), std::string::npos)
        << tail(r.output);
}

TEST(Quantize, UnknownTypeIsAUsageError) {
    const std::string dir = fresh_dir("quantize-type");
    const RunResult r = imx_quantize(dir, "-m " + shared("models/" + kQwen) + " -o out.gguf Q9_K");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("unknown quantization type 'Q9_K'"), std::string::npos);
    EXPECT_EQ(files_in(dir), 0u);
}

namespace {

// Expert `m` of a 3-D tensor of a quantized GGUF, decoded to floats (ggml's own to_float).
std::vector<float> decoded_matrix(const std::string & path, const std::string & name, int64_t m) {
    ggml_context * meta = nullptr;
    gguf_context * ctx = gguf_init_from_file(path.c_str(), {false, &meta});
    EXPECT_NE(ctx, nullptr) << path;
    std::vector<float> out;
    if (!ctx) {
        return out;
    }
    const ggml_tensor * t = ggml_get_tensor(meta, name.c_str());
    const int64_t n = t->ne[0], rows = t->ne[1];
    out.resize((size_t) (n * rows));
    const auto * base = static_cast<const uint8_t *>(t->data) + m * t->nb[2];
    for (int64_t r = 0; r < rows; ++r) {
        ggml_get_type_traits(t->type)->to_float(base + r * t->nb[1], out.data() + r * n, n);
    }
    gguf_free(ctx);
    ggml_free(meta);
    return out;
}

}  // namespace

// Dead features: an expert that saw tokens but whose first 32 columns never activated. llama-quantize writes
// those weights as zeros (Q4_0 here); imx floors the weights and encodes them — finite and not zero.
TEST(Quantize, AllZeroImportanceGroupsAreNotWrittenAsZeros) {
    const std::string dir = fresh_dir("quantize-zero-groups");
    Imatrix im = load_imatrix(upstream_imatrix(kQwen, "--chunks 6", ".gguf"));
    const std::string name = "blk.0.ffn_down_exps.weight";
    TensorStats & t = im.tensors.at(name);
    int64_t e = 0;
    while (t.counts[e] == 0) ++e;
    for (int64_t j = 0; j < 32; ++j) {
        t.sums[e * t.n_cols() + j] = 0;
    }
    save_imatrix(im, dir + "/dead.gguf", ImatrixFormat::gguf);
    const RunResult up = run("cd " + dir + " && " + upstream("llama-quantize") + " --pure --imatrix dead.gguf " +
                             shared("models/" + kQwen) + " up.gguf Q4_0 2");
    ASSERT_EQ(up.exit_code, 0) << tail(up.output);
    const RunResult r = imx_quantize(dir, "-m " + shared("models/" + kQwen) + " --imatrix dead.gguf -o imx.gguf Q4_0 --pure -t 2");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    EXPECT_NE(r.output.find("2 groups of 16 columns had all-zero weights"), std::string::npos) << tail(r.output);
    const std::vector<float> a = decoded_matrix(dir + "/up.gguf", name, e), b = decoded_matrix(dir + "/imx.gguf", name, e);
    ASSERT_EQ(a.size(), b.size());
    const int64_t n = t.n_cols(), rows = (int64_t) b.size() / n;
    int64_t up_zero_rows = 0, imx_zero_rows = 0;
    for (int64_t row = 0; row < rows; ++row) {
        bool up_zero = true, imx_zero = true;
        for (int64_t j = 0; j < 32; ++j) {
            ASSERT_TRUE(std::isfinite(b[row * n + j]));
            up_zero = up_zero && a[row * n + j] == 0;
            imx_zero = imx_zero && b[row * n + j] == 0;
        }
        up_zero_rows += up_zero;
        imx_zero_rows += imx_zero;
    }
    EXPECT_EQ(up_zero_rows, rows) << "the fault this guards against: upstream zeroes the dead group";
    EXPECT_EQ(imx_zero_rows, 0);
}
