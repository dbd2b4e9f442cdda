// Split models (llama-gguf-split's parts, as ~30B+ models are published): every command that reads a model's
// tensors itself takes the set through its first part, and quantize --keep-split writes the same parts
// llama-quantize writes. Split copies of the shared models, made by upstream's llama-gguf-split.
#include "helpers.h"

#include "gguf.h"

#include <nlohmann/json.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

using namespace imx::test;
namespace fs = std::filesystem;

namespace {


// The model split in parts of at most 20 MB (4 parts for qwen3moe-tiny, 5 for deepseek3-tiny), made once.
std::string split_model(const std::string & model) {
    const std::string dir = work_dir("split-" + model);
    const std::string first = dir + "/m-00001-of-0000";
    for (int n = 2; n <= 9; ++n) {
        if (file_exists(first + std::to_string(n) + ".gguf")) {
            return first + std::to_string(n) + ".gguf";
        }
    }
    const RunResult r = run(upstream("llama-gguf-split") + " --split --split-max-size 20M " + shared("models/" + model) +
                            " " + dir + "/m 2>&1");
    EXPECT_EQ(r.exit_code, 0) << tail(r.output);
    for (int n = 2; n <= 9; ++n) {
        if (file_exists(first + std::to_string(n) + ".gguf")) {
            return first + std::to_string(n) + ".gguf";
        }
    }
    ADD_FAILURE() << "llama-gguf-split made no parts in " << dir;
    return "";
}

// "DIR/m-00001-of-00004.gguf" → "DIR/m"
std::string prefix_of(const std::string & first_part) { return first_part.substr(0, first_part.size() - 20); }

std::vector<std::string> parts_of(const std::string & prefix, int n) {
    std::vector<std::string> p;
    for (int i = 1; i <= n; ++i) {
        char suffix[32];
        std::snprintf(suffix, sizeof suffix, "-%05d-of-%05d.gguf", i, n);
        p.push_back(prefix + suffix);
    }
    return p;
}

// Merged back with llama-gguf-split --merge, the parts must be `unsplit` but for two things upstream's own
// --keep-split parts differ in too: the three split.* keys --merge keeps (split.count = 0), and the order of the
// tensors (by part, not by name). So: the merged file's keys without those, with its tensors listed in the unsplit
// file's order, must make the unsplit file's header byte for byte, and every tensor's bytes must be the same.
void expect_merged_equals(const std::string & first_part, const std::string & unsplit, const std::string & dir) {
    const std::string merged = dir + "/merged.gguf";
    const RunResult r = run(upstream("llama-gguf-split") + " --merge " + first_part + " " + merged + " 2>&1");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    ggml_context * meta_m = nullptr, * meta_u = nullptr;
    gguf_context * m = gguf_init_from_file(merged.c_str(), {true, &meta_m});
    gguf_context * u = gguf_init_from_file(unsplit.c_str(), {true, &meta_u});
    ASSERT_TRUE(m && u);
    gguf_context * header = gguf_init_empty();
    gguf_set_kv(header, m);
    for (const char * key : {"split.no", "split.count", "split.tensors.count"}) {
        EXPECT_GE(gguf_find_key(header, key), 0) << key;
        gguf_remove_key(header, key);
    }
    ASSERT_EQ(gguf_get_n_tensors(m), gguf_get_n_tensors(u));
    const std::vector<uint8_t> mb = bytes_of(merged), ub = bytes_of(unsplit);
    for (int64_t i = 0; i < gguf_get_n_tensors(u); ++i) {
        const char * name = gguf_get_tensor_name(u, i);
        const int64_t j = gguf_find_tensor(m, name);
        ASSERT_GE(j, 0) << name;
        gguf_add_tensor(header, ggml_get_tensor(meta_m, name));
        const size_t n = gguf_get_tensor_size(u, i);
        ASSERT_EQ(n, gguf_get_tensor_size(m, j)) << name;
        const auto * a = mb.data() + gguf_get_data_offset(m) + gguf_get_tensor_offset(m, j);
        const auto * b = ub.data() + gguf_get_data_offset(u) + gguf_get_tensor_offset(u, i);
        EXPECT_TRUE(std::equal(a, a + n, b)) << name;
    }
    std::vector<uint8_t> h(gguf_get_meta_size(header));
    gguf_get_meta_data(header, h.data());
    EXPECT_TRUE(h.size() == gguf_get_data_offset(u) && std::equal(h.begin(), h.end(), ub.begin()));
    gguf_free(header);
    gguf_free(m);
    gguf_free(u);
    ggml_free(meta_m);
    ggml_free(meta_u);
}

const std::string kText = " -f " + shared("data/calibration.txt");

}  // namespace

// collect reads the set through libllama: the same file as from the unsplit model.
TEST(SplitModels, CollectGivesTheUnsplitModelsBytes) {
    const std::string first = split_model("qwen3moe-tiny.gguf");
    const std::string dir = fresh_dir("split-collect");
    for (const auto & [model, out] : {std::pair{first, "split.gguf"}, std::pair{shared("models/qwen3moe-tiny.gguf"), "whole.gguf"}}) {
        const RunResult r = run(imx_bin() + " collect -m " + model + kText + " --chunks 3 -t 2 --covariance -o " + dir +
                                "/" + out + " 2>&1");
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    }
    EXPECT_TRUE(bytes_of(dir + "/split.gguf") == bytes_of(dir + "/whole.gguf"));
}

// Diagonal: --keep-split writes llama-quantize --keep-split's parts byte for byte; without it, the unsplit bytes;
// the summary counts every part.
TEST(SplitModels, QuantizeKeepSplitIsLlamaQuantizesParts) {
    const std::string first = split_model("qwen3moe-tiny.gguf");
    const std::string dir = fresh_dir("split-quantize");
    const std::string im = upstream_imatrix("qwen3moe-tiny.gguf", "--chunks 6", ".gguf");
    const RunResult up = run("cd " + dir + " && " + upstream("llama-quantize") + " --keep-split --imatrix " + im + " " +
                             first + " up.gguf Q3_K_S 2 2>&1");
    ASSERT_EQ(up.exit_code, 0) << tail(up.output);
    const RunResult r = run("(cd " + dir + " && " + imx_bin() + " quantize -m " + first + " --imatrix " + im +
                            " -o imx.gguf Q3_K_S --keep-split -t 2 --json 2>/dev/null)");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    const auto up_parts = parts_of(dir + "/up", 4), imx_parts = parts_of(dir + "/imx", 4);
    for (size_t i = 0; i < 4; ++i) {
        ASSERT_TRUE(file_exists(imx_parts[i])) << imx_parts[i];
        EXPECT_TRUE(bytes_of(up_parts[i]) == bytes_of(imx_parts[i])) << imx_parts[i];
    }
    EXPECT_FALSE(file_exists(dir + "/imx.gguf"));
    const auto j = nlohmann::json::parse(r.output);
    uint64_t in_parts = 0, out_parts = 0;
    for (const auto & p : parts_of(prefix_of(first), 4)) {
        in_parts += fs::file_size(p);
    }
    for (const auto & p : imx_parts) {
        out_parts += fs::file_size(p);
    }
    EXPECT_EQ(j["input_bytes"].get<uint64_t>(), in_parts);
    EXPECT_EQ(j["output_bytes"].get<uint64_t>(), out_parts);
    EXPECT_EQ(j["outputs"].size(), 4u);

    const RunResult one = run("cd " + dir + " && " + imx_bin() + " quantize -m " + first + " --imatrix " + im +
                              " -o one.gguf Q3_K_S -t 2 2>&1");
    ASSERT_EQ(one.exit_code, 0) << tail(one.output);
    const RunResult whole = run("cd " + dir + " && " + imx_bin() + " quantize -m " + shared("models/qwen3moe-tiny.gguf") +
                                " --imatrix " + im + " -o whole.gguf Q3_K_S -t 2 2>&1");
    ASSERT_EQ(whole.exit_code, 0) << tail(whole.output);
    EXPECT_TRUE(bytes_of(dir + "/one.gguf") == bytes_of(dir + "/whole.gguf"));
    expect_merged_equals(imx_parts[0], dir + "/whole.gguf", dir);
}

// The Hessian encoder reads the split model's tensors itself and patches the split output in place; merged back,
// the parts are the unsplit model's Hessian quant. Then sequential passes and the type search on the set.
TEST(SplitModels, HessianSequentialAndTargetSizeOnParts) {
    const std::string first = split_model("deepseek3-tiny.gguf");
    const std::string dir = fresh_dir("split-hessian");
    const std::string cov = dir + "/cov.gguf";
    const RunResult c = run(imx_bin() + " collect -m " + first + kText + " --chunks 3 -t 2 --covariance -o " + cov + " 2>&1");
    ASSERT_EQ(c.exit_code, 0) << tail(c.output);
    const RunResult h = run("cd " + dir + " && " + imx_bin() + " quantize -m " + first + " --imatrix " + cov +
                            " -o h.gguf Q2_K --method hessian --keep-split -t 2 2>&1");
    ASSERT_EQ(h.exit_code, 0) << tail(h.output);
    const int n = std::stoi(first.substr(first.size() - 6, 1));  // m-00001-of-0000N.gguf
    EXPECT_NE(h.output.find("(" + std::to_string(n) + " parts)"), std::string::npos) << tail(h.output);
    const RunResult w = run("cd " + dir + " && " + imx_bin() + " quantize -m " + shared("models/deepseek3-tiny.gguf") +
                            " --imatrix " + cov + " -o whole.gguf Q2_K --method hessian -t 2 2>&1");
    ASSERT_EQ(w.exit_code, 0) << tail(w.output);
    expect_merged_equals(parts_of(dir + "/h", n)[0], dir + "/whole.gguf", dir);

    const RunResult s = run("cd " + dir + " && " + imx_bin() + " quantize -m " + first + " --imatrix " + cov +
                            " -o s.gguf Q2_K --method hessian --sequential" + kText + " --sequential-chunks 1 -t 2 2>&1");
    ASSERT_EQ(s.exit_code, 0) << tail(s.output);
    EXPECT_NE(s.output.find("sequential: layer 3"), std::string::npos) << tail(s.output);

    const RunResult t = run("cd " + dir + " && " + imx_bin() + " quantize -m " + first + " --imatrix " + cov +
                            " -o t.gguf --target-size 15" + kText + " --candidates q2_K,q4_K,q8_0 --sensitivity-chunks 1 "
                            "--probe-groups role --cache-dir " + dir + "/cache --keep-split -t 2 2>&1");
    ASSERT_EQ(t.exit_code, 0) << tail(t.output);
    EXPECT_NE(t.output.find("llama-quantize --keep-split"), std::string::npos) << tail(t.output);
    EXPECT_TRUE(file_exists(parts_of(dir + "/t", n).back()));

    // eval takes split models as base and as quant: the same numbers as the unsplit files
    const RunResult e = run("(" + imx_bin() + " eval --base " + first + " " + parts_of(dir + "/h", n)[0] + " -f " +
                            shared("data/wiki.test.raw") + " --chunks 2 -t 2 --no-cache --json 2>/dev/null)");
    const RunResult ew = run("(" + imx_bin() + " eval --base " + shared("models/deepseek3-tiny.gguf") + " " + dir +
                             "/whole.gguf -f " + shared("data/wiki.test.raw") + " --chunks 2 -t 2 --no-cache --json 2>/dev/null)");
    ASSERT_EQ(e.exit_code, 0) << tail(e.output);
    ASSERT_EQ(ew.exit_code, 0) << tail(ew.output);
    const auto js = nlohmann::json::parse(e.output), jw = nlohmann::json::parse(ew.output);
    EXPECT_EQ(js["models"][1]["kld_mean"], jw["models"][1]["kld_mean"]);
    EXPECT_EQ(js["models"][0]["ppl"], jw["models"][0]["ppl"]);
    EXPECT_EQ(js["models"][1]["ppl"], jw["models"][1]["ppl"]);
}

// collect --target-model takes a split target and compares its tensor table across the parts.
TEST(SplitModels, TargetModelMayBeSplit) {
    const std::string first = split_model("qwen3moe-tiny.gguf");
    const std::string dir = fresh_dir("split-target");
    const RunResult q = run("cd " + dir + " && " + imx_bin() + " quantize -m " + first + " -o q.gguf Q8_0 -t 2 2>&1");
    ASSERT_EQ(q.exit_code, 0) << tail(q.output);
    const RunResult c = run(imx_bin() + " collect -m " + dir + "/q.gguf --target-model " + first + kText +
                            " --chunks 1 -t 2 --covariance -o " + dir + "/x.gguf 2>&1");
    ASSERT_EQ(c.exit_code, 0) << tail(c.output);
}

// A later part, a missing part: one line naming the file, exit 2, before any work.
TEST(SplitModels, LaterOrMissingPartsAreNamed) {
    const std::string first = split_model("qwen3moe-tiny.gguf");
    const std::string dir = fresh_dir("split-bad");
    const std::string second = prefix_of(first) + "-00002-of-00004.gguf";
    const RunResult r = run(imx_bin() + " quantize -m " + second + " -o " + dir + "/x.gguf Q8_0 2>&1");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("part 2 of 4"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("-00001-of-00004.gguf"), std::string::npos) << r.output;

    for (int i = 1; i <= 4; ++i) {
        if (i != 3) {
            char n[32];
            std::snprintf(n, sizeof n, "/m-%05d-of-00004.gguf", i);
            fs::copy_file(fs::path(first).parent_path().string() + n, dir + n);
        }
    }
    const RunResult m = run(imx_bin() + " quantize -m " + dir + "/m-00001-of-00004.gguf -o " + dir +
                            "/x.gguf Q8_0 2>&1");
    EXPECT_EQ(m.exit_code, 2) << m.output;
    EXPECT_NE(m.output.find("m-00003-of-00004.gguf"), std::string::npos) << m.output;
    EXPECT_FALSE(file_exists(dir + "/x.gguf"));
}
