// Beyond the diagonal, on the shared models: collect --covariance (its diagonal is the imatrix, its blocks are
// the whole matrix's, upstream reads the file, resume is exact) and quantize --method hessian (same types and
// size as llama-quantize, loads in llama-perplexity, lower output error and KL-divergence).
#include "core/format/imatrix_file.h"
#include "engine/encode/fixed_scale_rounding.h"
#include "engine/encode/lattice_rounding.h"
#include "helpers.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <functional>
#include <random>
#include <regex>

using namespace imx;
using namespace imx::test;
namespace fs = std::filesystem;

namespace {


std::string collect_cmd(const std::string & model, const std::string & out, const std::string & extra) {
    return imx_bin() + " collect -m " + shared("models/" + model) + " -f " + shared("data/calibration.txt") +
           " -o " + out + " -c 512 -t 2 " + extra;
}

// Collected once per imx binary and argument set: cached under a folder named after the binary's time and size,
// so a rebuilt imx never meets files of an older one.
std::string collected(const std::string & model, const std::string & name, const std::string & extra) {
    static const std::string dir = [] {
        const auto stamp = std::to_string(fs::last_write_time(imx_bin()).time_since_epoch().count()) + "-" +
                           std::to_string(fs::file_size(imx_bin()));
        for (const auto & e : fs::directory_iterator(work_dir("hessian"))) {
            if (e.path().filename() != stamp) {
                fs::remove_all(e.path());  // an older binary's
            }
        }
        return work_dir("hessian/" + stamp);
    }();
    const std::string out = dir + "/" + name;
    if (!file_exists(out)) {
        const RunResult r = run(collect_cmd(model, out, extra));
        EXPECT_EQ(r.exit_code, 0) << tail(r.output);
    }
    return out;
}

}  // namespace

TEST(CollectCovariance, DiagonalIsTheImatrixAndReadersShareOneInput) {
    for (const std::string model : {"qwen3moe-tiny.gguf", "deepseek3-tiny.gguf"}) {
        // experts' tokens unweighted (the default): the diagonal is Σx² everywhere (--gate-weights: the next test)
        const Imatrix im = load_imatrix(collected(model, model + "-cov3.gguf", "--chunks 3 --covariance"));
        EXPECT_FALSE(im.meta.experts_gate_weighted);
        const Imatrix plain = load_imatrix(collected(model, model + "-plain3.gguf", "--chunks 3"));
        ASSERT_FALSE(im.covariances.empty()) << model;
        // the sums and counts are those of a run without covariance
        ASSERT_EQ(im.tensors.size(), plain.tensors.size());
        for (const auto & [name, ts] : plain.tensors) {
            EXPECT_EQ(im.tensors.at(name).sums, ts.sums) << name;
            EXPECT_EQ(im.tensors.at(name).counts, ts.counts) << name;
        }
        size_t shared_inputs = 0, readers = 0;
        for (const Covariance & c : im.covariances) {
            shared_inputs += c.readers.size() > 1;
            readers += c.readers.size();
            for (const std::string & r : c.readers) {
                const TensorStats & ts = im.tensors.at(r);
                for (int64_t m = 0; m < c.n_mat; ++m) {
                    ASSERT_EQ(c.counts[m], ts.counts[ts.n_mat() == 1 ? 0 : m]) << r;  // per-head: one count
                    for (int64_t j = 0; j < c.n_cols; ++j) {
                        const double d = c.values[(m * c.n_cols + j) * c.block + (j - c.block_start(j))];
                        const double s = ts.sums[m * c.n_cols + j];
                        ASSERT_NEAR(d, s, 1e-5 * s + 1e-6) << r << " matrix " << m << " column " << j;
                    }
                }
            }
        }
        EXPECT_GT(shared_inputs, 0u) << model << ": q/k/v (or q_a/kv_a) and gate/up read one input each";
        // every weight has one: 2-D, experts, and per-head 3-D weights (MLA attn_k_b/attn_v_b, one per head)
        size_t per_head = 0;
        for (const auto & [name, ts] : im.tensors) {
            const Covariance * c = im.covariance_of(name);
            EXPECT_NE(c, nullptr) << name;
            per_head += c && ts.n_mat() == 1 && c->n_mat > 1;
        }
        EXPECT_EQ(per_head > 0, model.starts_with("deepseek")) << model;
        RecordProperty(model + "_inputs", std::to_string(im.covariances.size()) + " for " + std::to_string(readers));
    }
}

// --gate-weights: an expert's XᵀX weights each token by its gate weight squared (its output enters the layer's as g·E(x)).
// qwen3moe-tiny routes each token to 2 experts with weights normalised to sum to 1, so g₁² + g₂² ∈ [½, 1]: summed
// over the experts, the gate/up input's weighted diagonal is between a quarter and a half of the sums (which count
// the token once per expert), below a half unless every token went to one expert alone — and g, not g², would
// give exactly a half. Dense inputs are untouched; the file says which it holds, and the two kinds do not merge.
TEST(CollectCovariance, ExpertTokensAreWeightedByTheirGatesSquared) {
    const std::string model = "qwen3moe-tiny.gguf";
    const std::string weighted_file = collected(model, model + "-cov3-gates.gguf", "--chunks 3 --covariance --gate-weights");
    const std::string plain_file = collected(model, model + "-cov3.gguf", "--chunks 3 --covariance");
    const Imatrix weighted = load_imatrix(weighted_file), plain = load_imatrix(plain_file);
    EXPECT_TRUE(weighted.meta.experts_gate_weighted);
    ASSERT_EQ(weighted.covariances.size(), plain.covariances.size());
    int experts_inputs = 0;
    for (const Covariance & c : weighted.covariances) {
        const Covariance * p = plain.covariance_of(c.readers[0]);
        ASSERT_NE(p, nullptr);
        EXPECT_EQ(c.counts, p->counts) << c.readers[0];
        if (c.n_mat == 1) {
            EXPECT_EQ(c.values, p->values) << c.readers[0] << ": a dense input is not weighted";
            continue;
        }
        if (c.readers[0].find("ffn_down_exps") != std::string::npos) {
            continue;  // down reads each expert's own activations: no bound across experts
        }
        ++experts_inputs;
        const TensorStats & ts = weighted.tensors.at(c.readers[0]);
        double mean_ratio = 0;
        for (int64_t j = 0; j < c.n_cols; ++j) {
            double diag = 0, sums = 0;
            for (int64_t m = 0; m < c.n_mat; ++m) {
                diag += c.values[(m * c.n_cols + j) * c.block + (j - c.block_start(j))];
                sums += ts.sums[m * c.n_cols + j];
            }
            ASSERT_GE(diag, 0.25 * sums * (1 - 1e-5)) << c.readers[0] << " column " << j;
            ASSERT_LE(diag, 0.5 * sums * (1 + 1e-5)) << c.readers[0] << " column " << j;
            mean_ratio += diag / sums / (double) c.n_cols;
        }
        EXPECT_LT(mean_ratio, 0.49) << c.readers[0] << ": weighted by g², not by g";
        RecordProperty(c.readers[0] + "_ratio", std::to_string(mean_ratio));
    }
    EXPECT_EQ(experts_inputs, 4) << "the gate/up input of 4 MoE layers";

    const std::string d = work_dir("hessian-gate-merge");
    const RunResult r = run(imx_bin() + " merge " + weighted_file + " " + plain_file + " -o " + d + "/m.gguf");
    EXPECT_EQ(r.exit_code, 2) << tail(r.output);
    EXPECT_NE(r.output.find("weighted by the router's gates"), std::string::npos) << tail(r.output);
    EXPECT_FALSE(fs::exists(d + "/m.gguf"));
    const RunResult flag = run(collect_cmd(model, d + "/x.gguf", "--chunks 1 --gate-weights"));
    EXPECT_EQ(flag.exit_code, 2) << tail(flag.output);
    EXPECT_NE(flag.output.find("--gate-weights goes with --covariance"), std::string::npos) << tail(flag.output);
}

TEST(CollectCovariance, BudgetKeepsDiagonalBlocksOfTheWholeMatrix) {
    const std::string model = "qwen3moe-tiny.gguf";
    const Imatrix whole = load_imatrix(collected(model, "qwen-cov3.gguf", "--chunks 3 --covariance"));
    // 24 MiB: the first dense inputs whole (2 MiB each), the 16-expert gate/up input (32 MiB whole) in
    // 256-blocks (16 MiB), then what still fits, expert inputs pooled over their experts
    const Imatrix part = load_imatrix(collected(model, "qwen-cov3-24m.gguf", "--chunks 3 --covariance --covariance-budget 24"));
    size_t blocked = 0, pooled = 0;
    for (const Covariance & c : part.covariances) {
        const Covariance * w = whole.covariance_of(c.readers[0]);
        ASSERT_NE(w, nullptr);
        ASSERT_TRUE(w->full());
        blocked += !c.full();
        if (c.n_mat == 1 && w->n_mat > 1) {  // then: one matrix pooled over the experts (see PooledExperts…)
            ++pooled;
            continue;
        }
        for (int64_t m = 0; m < c.n_mat; ++m) {
            const auto a = w->dense(m), b = c.dense(m);
            for (int64_t i = 0; i < c.n_cols; ++i) {
                for (int64_t j = 0; j < c.n_cols; ++j) {
                    const bool kept = c.block_start(i) == c.block_start(j);
                    // the same sums, though BLAS may add a block's panels in another order than the whole's
                    const double scale = std::sqrt(std::fabs(a[i * c.n_cols + i] * a[j * c.n_cols + j]));
                    if (kept) {
                        ASSERT_NEAR(b[i * c.n_cols + j], a[i * c.n_cols + j], 1e-5 * scale) << c.readers[0] << " " << i << "," << j;
                    } else {
                        ASSERT_EQ(b[i * c.n_cols + j], 0.0) << c.readers[0] << " " << i << "," << j;
                    }
                }
            }
        }
    }
    EXPECT_GT(blocked, 0u);
    EXPECT_GT(pooled, 0u) << "where per-expert blocks no longer fit, expert inputs are pooled";
    // --covariance-blocks: 256-column blocks wherever the width allows, whatever the budget
    const Imatrix blocks = load_imatrix(collected(model, "qwen-cov1-blocks.gguf", "--chunks 1 --covariance --covariance-blocks"));
    ASSERT_EQ(blocks.covariances.size(), whole.covariances.size());
    for (const Covariance & c : blocks.covariances) {
        EXPECT_EQ(c.block, 256) << c.readers[0];
    }
    // legacy files cannot hold covariances: a clear error, not a silent drop
    const RunResult dat = run(collect_cmd(model, work_dir("hessian-errors") + "/x.dat", "--chunks 1 --covariance"));
    EXPECT_EQ(dat.exit_code, 2);
    EXPECT_NE(dat.output.find("--covariance needs the GGUF format"), std::string::npos) << tail(dat.output);
}

TEST(CollectCovariance, UpstreamQuantizeReadsTheFileAsWithoutCovariance) {
    const std::string model = "qwen3moe-tiny.gguf";
    const std::string a = work_dir("hessian-up-a"), b = work_dir("hessian-up-b");
    fs::copy_file(collected(model, "qwen-cov3.gguf", "--chunks 3 --covariance"), a + "/im.gguf",
                  fs::copy_options::overwrite_existing);
    fs::copy_file(collected(model, "qwen-plain3.gguf", "--chunks 3"), b + "/im.gguf",
                  fs::copy_options::overwrite_existing);
    for (const std::string & d : {a, b}) {
        const RunResult r = run("cd " + d + " && " + upstream("llama-quantize") + " --imatrix im.gguf " +
                                shared("models/" + model) + " out.gguf Q2_K 2");
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    }
    EXPECT_TRUE(bytes_of(a + "/out.gguf") == bytes_of(b + "/out.gguf"));
}

TEST(CollectCovariance, ResumeAfterKill9GivesTheSameBytes) {
    const std::string model = "qwen3moe-tiny.gguf";
    const std::string whole = collected(model, "qwen-cov6.gguf", "--chunks 6 --covariance");
    const std::string out = work_dir("hessian-resume") + "/qwen-cov6-killed.gguf", ckpt = out + ".ckpt";
    fs::remove(out);
    fs::remove(ckpt);
    const std::string cmd = collect_cmd(model, out, "--chunks 6 --covariance --save-every 2");
    ASSERT_TRUE(kill_after_checkpoint(cmd, ckpt)) << "no checkpoint appeared";
    const RunResult resumed = run(cmd + " --resume");
    ASSERT_EQ(resumed.exit_code, 0) << tail(resumed.output);
    EXPECT_NE(resumed.output.find("resumed after chunk"), std::string::npos) << tail(resumed.output);
    EXPECT_TRUE(bytes_of(out) == bytes_of(whole));
}

// --output-scales -v prints each re-encoded tensor's output scale wᵀHq/qᵀHq, for the diagonal and the final encoding: near 1
// for any reasonable encoding (a sign or factor slip in wᵀHq = (wᵀHw + qᵀHq − dᵀHd)/2 lands far from it).
TEST(QuantizeHessian, VerboseOutputScalesAreNearOne) {
    const std::string model = "qwen3moe-tiny.gguf";
    const std::string dir = work_dir("hessian-scales");
    const std::string im = collected(model, "qwen-cov6.gguf", "--chunks 6 --covariance");
    const RunResult h = run(imx_bin() + " quantize -m " + shared("models/" + model) + " --imatrix " + im + " -o " +
                            dir + "/hess.gguf Q2_K -t 2 --method hessian --hessian-tensors 'ffn_(gate|down)_exps' --output-scales -v");
    ASSERT_EQ(h.exit_code, 0) << tail(h.output);
    const std::regex line(R"(output scale wHq/qHq ([0-9.]+) -> ([0-9.]+)  signal scale wHq/wHw ([0-9.]+) -> ([0-9.]+))");
    int n = 0;
    for (auto it = std::sregex_iterator(h.output.begin(), h.output.end(), line); it != std::sregex_iterator(); ++it) {
        for (int k = 1; k <= 4; ++k) {
            const double v = std::stod((*it)[k].str());
            EXPECT_GT(v, 0.9) << (*it)[0].str();
            EXPECT_LT(v, 1.1) << (*it)[0].str();
        }
        ++n;
    }
    EXPECT_EQ(n, 8) << "gate and down of 4 MoE layers\n" << tail(h.output);
}

// Same recipe, same size, a file llama.cpp loads; the output error falls and so does KL-divergence.
TEST(QuantizeHessian, SameSizeLoadsUpstreamAndLowersKld) {
    const std::string model = "qwen3moe-tiny.gguf";
    const std::string dir = work_dir("hessian-quantize");
    const std::string im = collected(model, "qwen-cov6.gguf", "--chunks 6 --covariance");
    const std::string m = shared("models/" + model);
    const RunResult d = run(imx_bin() + " quantize -m " + m + " --imatrix " + im + " -o " + dir + "/diag.gguf Q2_K -t 2");
    ASSERT_EQ(d.exit_code, 0) << tail(d.output);
    const RunResult h = run(imx_bin() + " quantize -m " + m + " --imatrix " + im + " -o " + dir +
                            "/hess.gguf Q2_K -t 2 --method hessian --json");
    ASSERT_EQ(h.exit_code, 0) << tail(h.output);
    const auto j = nlohmann::json::parse(h.output.substr(h.output.find("\n{") + 1));
    EXPECT_GT(j["hessian_tensors"].get<int>(), 20);
    EXPECT_LT(j["hessian_error"].get<double>(), 0.8 * j["hessian_error_diagonal"].get<double>());
    EXPECT_EQ(fs::file_size(dir + "/diag.gguf"), fs::file_size(dir + "/hess.gguf"));
    EXPECT_FALSE(bytes_of(dir + "/diag.gguf") == bytes_of(dir + "/hess.gguf"));

    // llama.cpp decodes it: llama-perplexity runs, and its PPL is imx eval's
    const RunResult ppl = run_perplexity("-m " + dir + "/hess.gguf -f " +
                              shared("data/wiki.test.raw") + " -c 512 --chunks 4 -t 2 -b 512");
    ASSERT_EQ(ppl.exit_code, 0) << tail(ppl.output);
    const size_t at = ppl.output.find("Final estimate: PPL = ");
    ASSERT_NE(at, std::string::npos) << tail(ppl.output);
    const double upstream_ppl = std::stod(ppl.output.substr(at + 22));

    const RunResult e = run(imx_bin() + " eval --base " + m + " -f " + shared("data/wiki.test.raw") +
                            " --chunks 20 -t 2 --json --cache-dir " + dir + "/cache " + dir + "/diag.gguf " + dir +
                            "/hess.gguf");
    ASSERT_EQ(e.exit_code, 0) << tail(e.output);
    const auto ev = nlohmann::json::parse(e.output.substr(e.output.find('{')));
    double kld_diag = -1, kld_hess = -1;
    for (const auto & row : ev["models"]) {
        const std::string path = row["path"];
        if (path.ends_with("diag.gguf")) kld_diag = row["kld_mean"]["value"];
        if (path.ends_with("hess.gguf")) kld_hess = row["kld_mean"]["value"];
    }
    ASSERT_GT(kld_diag, 0);
    ASSERT_GT(kld_hess, 0);
    EXPECT_LT(kld_hess, 0.95 * kld_diag) << "diagonal " << kld_diag << ", hessian " << kld_hess;
    RecordProperty("kld_diag", std::to_string(kld_diag));
    RecordProperty("kld_hessian", std::to_string(kld_hess));

    const RunResult e4 = run(imx_bin() + " eval --base " + m + " -f " + shared("data/wiki.test.raw") +
                             " --chunks 4 -t 2 --json --cache-dir " + dir + "/cache " + dir + "/hess.gguf");
    ASSERT_EQ(e4.exit_code, 0) << tail(e4.output);
    const auto ev4 = nlohmann::json::parse(e4.output.substr(e4.output.find('{')));
    double ppl4 = -1;
    for (const auto & row : ev4["models"]) {
        if (row["path"].get<std::string>().ends_with("hess.gguf")) ppl4 = row["ppl"]["value"];
    }
    EXPECT_NEAR(ppl4, upstream_ppl, 1e-3 * upstream_ppl);
}

TEST(QuantizeHessian, ClearErrorsWithoutCovariance) {
    const std::string dir = work_dir("hessian-errors");
    const std::string m = shared("models/qwen3moe-tiny.gguf");
    const RunResult none = run(imx_bin() + " quantize -m " + m + " -o " + dir + "/x.gguf Q2_K --method hessian");
    EXPECT_EQ(none.exit_code, 2);
    EXPECT_NE(none.output.find("--method hessian needs an --imatrix"), std::string::npos) << tail(none.output);
    const std::string plain = collected("qwen3moe-tiny.gguf", "qwen-plain3.gguf", "--chunks 3");
    const RunResult diag = run(imx_bin() + " quantize -m " + m + " --imatrix " + plain + " -o " + dir +
                               "/x.gguf Q2_K --method hessian");
    EXPECT_EQ(diag.exit_code, 2);
    EXPECT_NE(diag.output.find("holds no covariance"), std::string::npos) << tail(diag.output);
    EXPECT_FALSE(fs::exists(dir + "/x.gguf"));
}

// Pooled over experts: one XᵀX per expert input that is the sum of the per-expert ones, counted per routing
// slot; quantize builds each expert's H from it and the expert's imatrix, and writes the same-size file.
TEST(CollectCovariance, PooledExpertsAreTheSumOfTheExperts) {
    const std::string model = "qwen3moe-tiny.gguf";
    const Imatrix full = load_imatrix(collected(model, model + "-cov3.gguf", "--chunks 3 --covariance"));
    const std::string pooled_file = collected(model, model + "-pooled3.gguf", "--chunks 3 --covariance --covariance-pooled-experts");
    const Imatrix pooled = load_imatrix(pooled_file);
    ASSERT_EQ(pooled.covariances.size(), full.covariances.size());
    int n_pooled = 0;
    for (const Covariance & p : pooled.covariances) {
        const Covariance * f = full.covariance_of(p.readers[0]);
        ASSERT_NE(f, nullptr);
        EXPECT_EQ(p.readers, f->readers);
        if (f->n_mat == 1) {
            EXPECT_EQ(p.values, f->values) << "dense inputs are kept as they were";
            continue;
        }
        ++n_pooled;
        ASSERT_EQ(p.n_mat, 1) << p.readers[0];
        ASSERT_EQ(p.block, f->block);
        int64_t total = 0;
        for (int64_t x : f->counts) total += x;
        EXPECT_EQ(p.counts[0], total) << p.readers[0];
        const size_t size = (size_t) (p.n_cols * p.block);
        for (size_t i = 0; i < size; i += 97) {
            double sum = 0, scale = 0;
            for (int64_t m = 0; m < f->n_mat; ++m) {
                sum += f->values[m * size + i];
                scale += std::fabs(f->values[m * size + i]);
            }
            ASSERT_NEAR(p.values[i], sum, 1e-5 * scale + 1e-6) << p.readers[0] << " value " << i;
        }
    }
    EXPECT_EQ(n_pooled, 8) << "gate/up and down inputs of 4 MoE layers";

    const std::string d = work_dir("hessian-pooled");
    const RunResult diag = run(imx_bin() + " quantize -m " + shared("models/" + model) + " --imatrix " + pooled_file +
                               " -o " + d + "/diag.gguf Q2_K -t 2");
    ASSERT_EQ(diag.exit_code, 0) << tail(diag.output);
    const RunResult r = run(imx_bin() + " quantize -m " + shared("models/" + model) + " --imatrix " + pooled_file +
                            " -o " + d + "/pooled.gguf Q2_K -t 2 --method hessian --hessian-tensors exps");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    EXPECT_NE(r.output.find("hessian: 12 tensors re-encoded"), std::string::npos) << tail(r.output);
    EXPECT_EQ(fs::file_size(d + "/pooled.gguf"), fs::file_size(d + "/diag.gguf"));
    EXPECT_NE(bytes_of(d + "/pooled.gguf"), bytes_of(d + "/diag.gguf"));
}

// The MLA per-head weights (attn_k_b/attn_v_b: one covariance per head) are re-encoded by default;
// --no-hessian-per-head leaves them with llama-quantize's encoding.
TEST(QuantizeHessian, PerHeadWeightsAreReencodedUnlessTurnedOff) {
    const std::string model = "deepseek3-tiny.gguf";
    const std::string im = collected(model, model + "-cov3.gguf", "--chunks 3 --covariance");
    const std::string d = work_dir("hessian-per-head");
    const std::string base = imx_bin() + " quantize -m " + shared("models/" + model) + " --imatrix " + im +
                             " Q2_K -t 2 --method hessian --hessian-tensors 'attn_(q|k|v)_b' -o " + d;
    const RunResult on = run(base + "/on.gguf");
    ASSERT_EQ(on.exit_code, 0) << tail(on.output);
    EXPECT_NE(on.output.find("hessian: 12 tensors re-encoded"), std::string::npos) << "q_b, k_b, v_b of 4 layers\n" << tail(on.output);
    const RunResult off = run(base + "/off.gguf --no-hessian-per-head");
    ASSERT_EQ(off.exit_code, 0) << tail(off.output);
    EXPECT_NE(off.output.find("hessian: 4 tensors re-encoded"), std::string::npos) << "q_b only\n" << tail(off.output);
    EXPECT_NE(bytes_of(d + "/on.gguf"), bytes_of(d + "/off.gguf"));
}

// Refinement rounds re-round blocks under the scales they have: every value is the nearest level of its
// sub-block (brute force: the levels read back from blocks holding one q everywhere, under the same scales),
// and the scale bytes stay as they were (re-rounding the block's own decoding gives its bytes back).
class FixedScaleRounding : public ::testing::TestWithParam<ggml_type> {};

TEST_P(FixedScaleRounding, ValuesAreTheNearestLevelsUnderTheBlocksScales) {
    const ggml_type type = GetParam();
    const auto reround = engine::fixed_scale_reround(type);
    const engine::FixedScaleLayout * layout = engine::fixed_scale_layout(type);
    ASSERT_TRUE(reround);
    ASSERT_NE(layout, nullptr);
    const int64_t block = ggml_blck_size(type);
    const auto to_float = ggml_get_type_traits(type)->to_float;
    std::mt19937 rng(7);
    std::normal_distribution<float> g(0, 1);
    std::vector<float> w((size_t) block), target((size_t) block), decoded((size_t) block), check((size_t) block);
    for (auto & x : w) {
        x = g(rng);
    }
    std::vector<uint8_t> prev(ggml_type_size(type)), bytes(prev.size());
    ggml_quantize_chunk(type, w.data(), prev.data(), 0, 1, block, nullptr);

    to_float(prev.data(), check.data(), block);
    reround(prev.data(), check.data(), nullptr, bytes.data(), decoded.data());
    EXPECT_EQ(bytes, prev) << "a block's own decoding re-rounds to its bytes";

    for (int64_t i = 0; i < block; ++i) {
        target[i] = w[i] + 0.3f * g(rng);
    }
    reround(prev.data(), target.data(), nullptr, bytes.data(), decoded.data());
    to_float(bytes.data(), check.data(), block);
    EXPECT_EQ(check, decoded);
    const int n_levels = layout->q_max - layout->q_min + 1;
    std::vector<float> levels((size_t) (n_levels * block));
    for (int q = layout->q_min; q <= layout->q_max; ++q) {
        std::vector<uint8_t> b = prev;
        layout->clear(b.data());
        for (int e = 0; e < block; ++e) {
            layout->put(b.data(), e, q);
        }
        to_float(b.data(), levels.data() + (q - layout->q_min) * block, block);
    }
    for (int64_t i = 0; i < block; ++i) {
        float best = levels[i];
        for (int q = 1; q < n_levels; ++q) {
            if (std::fabs(levels[q * block + i] - target[i]) < std::fabs(best - target[i])) {
                best = levels[q * block + i];
            }
        }
        EXPECT_FLOAT_EQ(std::fabs(decoded[i] - target[i]), std::fabs(best - target[i])) << "value " << i;
    }
    std::vector<float> before((size_t) block);
    to_float(prev.data(), before.data(), block);
    EXPECT_NE(before, decoded) << "the shifted target moves some values";
}

INSTANTIATE_TEST_SUITE_P(Types, FixedScaleRounding,
                         ::testing::Values(GGML_TYPE_Q2_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K,
                                           GGML_TYPE_Q6_K, GGML_TYPE_Q4_0, GGML_TYPE_Q8_0),
                         [](const auto & info) { return std::string(ggml_type_name(info.param)); });

TEST(FixedScaleRoundingTypes, Q3KAndLatticeTypesKeepCallingTheQuantizer) {
    EXPECT_FALSE(engine::fixed_scale_reround(GGML_TYPE_IQ2_XXS));
    EXPECT_FALSE(engine::fixed_scale_reround(GGML_TYPE_Q3_K));
    EXPECT_EQ(engine::fixed_scale_layout(GGML_TYPE_IQ3_XXS), nullptr);
    EXPECT_FALSE(engine::lattice_reround(GGML_TYPE_Q3_K));
    EXPECT_FALSE(engine::lattice_reround(GGML_TYPE_IQ1_S));
    EXPECT_FALSE(engine::fixed_scale_reround(GGML_TYPE_IQ2_S));
}

// The lattice types under their blocks' scales: each group of 8 takes the codeword (grid points and signs — of
// even parity where the type stores a parity index) nearest the target under the importances — checked against
// every codeword, written into the block from the formats (ggml-common.h) and decoded by ggml (per sign
// pattern, each grid point's part of the group on its own) — for a target near the block's decoding; scale bytes
// stay. Every group for the 256-point grids, every fourth or eighth for the larger ones (brute force over 128-256 sign
// patterns × 512-1024 points).
struct LatticeFormat {
    int dim, grid, sign_codes;
    std::function<void(uint8_t *, int, int, int)> set_index;  // block, group, part, index
    std::function<int(const uint8_t *, int, int)> index;
    std::function<void(uint8_t *, int, int)> set_signs;       // block, group, code
    std::vector<std::pair<int, uint8_t>> scale_bits;          // byte, mask: d and the scales
};

// d's two bytes, then `n` scale bytes from `at`, `stride` apart, under `mask`
std::vector<std::pair<int, uint8_t>> scales_at(int at, int stride, uint8_t mask, int n = 8) {
    std::vector<std::pair<int, uint8_t>> v = {{0, 0xFF}, {1, 0xFF}};
    for (int i = 0; i < n; ++i) {
        v.emplace_back(at + i * stride, mask);
    }
    return v;
}

LatticeFormat lattice_format(ggml_type type) {
    const auto u16 = [](const uint8_t * b, int at) { return b[at] | (b[at + 1] << 8); };
    const auto put16 = [](uint8_t * b, int at, int v) { b[at] = (uint8_t) v; b[at + 1] = (uint8_t) (v >> 8); };
    const auto word_code = [](uint8_t * b, int at, int g, int code) {
        uint32_t w;
        std::memcpy(&w, b + at, 4);
        w = (w & ~(0x7Fu << (7 * (g % 4)))) | ((uint32_t) code << (7 * (g % 4)));
        std::memcpy(b + at, &w, 4);
    };
    switch (type) {
        case GGML_TYPE_IQ2_XXS:
            return {8, 256, 128, [](uint8_t * b, int g, int, int i) { b[2 + 8 * (g / 4) + g % 4] = (uint8_t) i; },
                    [](const uint8_t * b, int g, int) { return (int) b[2 + 8 * (g / 4) + g % 4]; },
                    [=](uint8_t * b, int g, int c) { word_code(b, 2 + 8 * (g / 4) + 4, g, c); },
                    scales_at(9, 8, 0xF0)};
        case GGML_TYPE_IQ3_XXS:
            return {4, 256, 128, [](uint8_t * b, int g, int p, int i) { b[2 + 2 * g + p] = (uint8_t) i; },
                    [](const uint8_t * b, int g, int p) { return (int) b[2 + 2 * g + p]; },
                    [=](uint8_t * b, int g, int c) { word_code(b, 66 + 4 * (g / 4), g, c); },
                    scales_at(69, 4, 0xF0)};
        case GGML_TYPE_IQ2_XS:
            return {8, 512, 128, [=](uint8_t * b, int g, int, int i) { put16(b, 2 + 2 * g, (u16(b, 2 + 2 * g) & ~511) | i); },
                    [=](const uint8_t * b, int g, int) { return u16(b, 2 + 2 * g) & 511; },
                    [=](uint8_t * b, int g, int c) { put16(b, 2 + 2 * g, (u16(b, 2 + 2 * g) & 511) | (c << 9)); },
                    scales_at(66, 1, 0xFF, 8)};
        case GGML_TYPE_IQ2_S:
            return {8, 1024, 256,
                    [](uint8_t * b, int g, int, int i) {
                        b[2 + g] = (uint8_t) i;
                        b[66 + g / 4] = (uint8_t) ((b[66 + g / 4] & ~(3 << (2 * (g % 4)))) | ((i >> 8) << (2 * (g % 4))));
                    },
                    [](const uint8_t * b, int g, int) { return b[2 + g] | (((b[66 + g / 4] >> (2 * (g % 4))) & 3) << 8); },
                    [](uint8_t * b, int g, int c) { b[34 + g] = (uint8_t) c; },
                    scales_at(74, 1, 0xFF, 8)};
        default:  // IQ3_S
            return {4, 512, 256,
                    [](uint8_t * b, int g, int p, int i) {
                        const int bit = 2 * (g % 4) + p;
                        b[2 + 2 * g + p] = (uint8_t) i;
                        b[66 + g / 4] = (uint8_t) ((b[66 + g / 4] & ~(1 << bit)) | ((i >> 8) << bit));
                    },
                    [](const uint8_t * b, int g, int p) { return b[2 + 2 * g + p] | (((b[66 + g / 4] >> (2 * (g % 4) + p)) & 1) << 8); },
                    [](uint8_t * b, int g, int c) { b[74 + g] = (uint8_t) c; },
                    scales_at(106, 1, 0xFF, 4)};
    }
}

class LatticeRounding : public ::testing::TestWithParam<ggml_type> {};

TEST_P(LatticeRounding, GroupsTakeTheNearestCodewordUnderTheBlocksScales) {
    const ggml_type type = GetParam();
    const LatticeFormat f = lattice_format(type);
    const auto reround = engine::lattice_reround(type);
    ASSERT_TRUE(reround);
    const int64_t block = ggml_blck_size(type);
    const auto to_float = ggml_get_type_traits(type)->to_float;
    std::mt19937 rng(9);
    std::normal_distribution<float> g(0, 1);
    std::uniform_real_distribution<float> u(0.2f, 2.0f);
    std::vector<float> w((size_t) block), imp((size_t) block), target((size_t) block), decoded((size_t) block),
        check((size_t) block), cand((size_t) block);
    for (int64_t i = 0; i < block; ++i) {
        w[i] = g(rng);
        imp[i] = u(rng);
    }
    ggml_quantize_init(type);
    std::vector<uint8_t> prev(ggml_type_size(type)), bytes(prev.size());
    ggml_quantize_chunk(type, w.data(), prev.data(), 0, 1, block, imp.data());

    to_float(prev.data(), check.data(), block);
    reround(prev.data(), check.data(), imp.data(), bytes.data(), decoded.data());
    EXPECT_EQ(bytes, prev) << "a block's own decoding re-rounds to its bytes";

    for (int64_t i = 0; i < block; ++i) {
        target[i] = check[i] + 0.15f * std::fabs(check[i]) * g(rng);
    }
    reround(prev.data(), target.data(), imp.data(), bytes.data(), decoded.data());
    to_float(bytes.data(), check.data(), block);
    EXPECT_EQ(check, decoded);
    for (const auto & [at, mask] : f.scale_bits) {
        EXPECT_EQ(bytes[at] & mask, prev[at] & mask) << "scale byte " << at;
    }
    const auto cost = [&](const float * x, int64_t e, int n) {
        double c = 0;
        for (int j = 0; j < n; ++j) {
            c += imp[e + j] * (x[e + j] - target[e + j]) * (x[e + j] - target[e + j]);
        }
        return c;
    };
    for (int group = 0; group < 32; group += f.grid > 512 ? 8 : f.grid > 256 ? 4 : 1) {
        const int64_t e = 8 * group;
        double best = std::numeric_limits<double>::infinity();
        std::vector<uint8_t> b = bytes;
        for (int code = 0; code < f.sign_codes; ++code) {
            f.set_signs(b.data(), group, code);
            double total = 0;
            for (int part = 0; part < 8 / f.dim; ++part) {
                double part_best = std::numeric_limits<double>::infinity();
                for (int index = 0; index < f.grid; ++index) {
                    f.set_index(b.data(), group, part, index);
                    to_float(b.data(), cand.data(), block);
                    part_best = std::min(part_best, cost(cand.data(), e + part * f.dim, f.dim));
                }
                total += part_best;
            }
            best = std::min(best, total);
        }
        EXPECT_NEAR(cost(decoded.data(), e, 8), best, 1e-6 * best) << "group " << group;
    }

    // a larger move: the nearest codeword may lie beyond the current point's neighbours, but no group is worse
    // than its current codeword, and some codewords move
    std::vector<float> before((size_t) block);
    to_float(prev.data(), before.data(), block);
    for (int64_t i = 0; i < block; ++i) {
        target[i] = before[i] + 0.5f * std::fabs(before[i]) * g(rng);
    }
    reround(prev.data(), target.data(), imp.data(), bytes.data(), decoded.data());
    int moved = 0;
    for (int group = 0; group < 32; ++group) {
        EXPECT_LE(cost(decoded.data(), 8 * group, 8), cost(before.data(), 8 * group, 8) * (1 + 1e-6)) << "group " << group;
        for (int part = 0; part < 8 / f.dim; ++part) {
            moved += f.index(bytes.data(), group, part) != f.index(prev.data(), group, part);
        }
    }
    EXPECT_GT(moved, 0) << "the shifted target moves some codewords";
}

INSTANTIATE_TEST_SUITE_P(Types, LatticeRounding,
                         ::testing::Values(GGML_TYPE_IQ2_XXS, GGML_TYPE_IQ2_XS, GGML_TYPE_IQ2_S, GGML_TYPE_IQ3_XXS,
                                           GGML_TYPE_IQ3_S),
                         [](const auto & info) { return std::string(ggml_type_name(info.param)); });
