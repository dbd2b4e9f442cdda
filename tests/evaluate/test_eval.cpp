// imx eval: the same perplexity as llama-perplexity, KLD 0 against itself, a cache that is reused and
// survives corruption, and a sweep table.
#include "helpers.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>

using namespace imx::test;
namespace fs = std::filesystem;

namespace {

const std::string kModel = "qwen3moe-tiny.gguf";


double number_after(const std::string & text, const std::string & key) {
    const size_t at = text.find(key);
    return at == std::string::npos ? NAN : std::stod(text.substr(at + key.size()));
}

// a Q2_K quant made once per build tree
std::string q2k() {
    const std::string out = work_dir("eval") + "/q2k.gguf";
    if (!file_exists(out)) {
        const RunResult r = run(imx_bin() + " quantize -m " + shared("models/" + kModel) + " -o " + out + " Q2_K -t 2");
        EXPECT_EQ(r.exit_code, 0) << tail(r.output);
    }
    return out;
}

}  // namespace

TEST(Eval, PerplexityMatchesLlamaPerplexity) {
    const std::string q = q2k();
    const RunResult up = run_perplexity("-m " + q + " -f " + shared("data/wiki.test.raw") +
                             " -c 512 --chunks 4 -t 2");
    ASSERT_EQ(up.exit_code, 0) << tail(up.output);
    const double up_ppl = number_after(up.output, "Final estimate: PPL = ");
    const RunResult r = run(imx_bin() + " eval --base " + shared("models/" + kModel) + " " + q + " -f " +
                            shared("data/wiki.test.raw") + " -c 512 --chunks 4 -t 2 --no-cache --json");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    // the second model's PPL: after the base's
    const size_t quant = r.output.find("\"label\": \"" + q + "\"");
    ASSERT_NE(quant, std::string::npos) << r.output;
    const double ppl = number_after(r.output.substr(quant), "\"ppl\": {\n        \"value\": ");
    EXPECT_NEAR(ppl / up_ppl, 1.0, 1e-3) << "imx " << ppl << " vs llama-perplexity " << up_ppl;
}

TEST(Eval, BaseAgainstItselfHasZeroKldAndTheCacheIsReused) {
    const std::string cache = work_dir("eval-cache");
    fs::remove_all(cache);
    const std::string cmd = imx_bin() + " eval --base " + shared("models/" + kModel) + " " + shared("models/" + kModel) +
                            " -f " + shared("data/wiki.test.raw") + " -c 128 --chunks 3 -t 2 --cache-dir " + cache + " --json";
    const RunResult first = run(cmd);
    ASSERT_EQ(first.exit_code, 0) << tail(first.output);
    EXPECT_EQ(first.output.find("from " + cache), std::string::npos);
    // the base's log-probs are kept at 16 bits an entry: against itself the KLD is that rounding's, not 0
    const auto j = nlohmann::json::parse(first.output.substr(first.output.find('{')));
    EXPECT_LT(j["models"][1]["kld_mean"]["value"].get<double>(), 1e-6) << first.output;
    EXPECT_NE(first.output.find("\"top1\": {\n        \"value\": 1.0,"), std::string::npos);

    const RunResult second = run(cmd);
    ASSERT_EQ(second.exit_code, 0) << tail(second.output);
    EXPECT_NE(second.output.find("base log-probabilities from " + cache), std::string::npos) << second.output;
    const auto json = [](const std::string & s) { return s.substr(s.find('{')); };
    EXPECT_EQ(json(first.output), json(second.output));

    // a damaged cache is recomputed, not trusted
    for (const auto & e : fs::directory_iterator(cache)) {
        fs::resize_file(e.path(), fs::file_size(e.path()) / 2);
    }
    const RunResult third = run(cmd);
    ASSERT_EQ(third.exit_code, 0) << tail(third.output);
    EXPECT_EQ(third.output.find("base log-probabilities from"), std::string::npos);
    EXPECT_EQ(json(first.output), json(third.output));
}

TEST(Eval, SweepPrintsOneTableAndMarksTheBest) {
    const std::string dir = work_dir("sweep");
    const std::string im = upstream_imatrix(kModel, "--chunks 6", ".gguf");
    const RunResult r = run(imx_bin() + " sweep -m " + shared("models/" + kModel) + " --imatrix " + im + " -f " +
                            shared("data/wiki.test.raw") + " -c 128 --chunks 2 -t 2 --no-cache --types Q2_K,IQ1_S " +
                            "--weights 0,64 --priors one,mean --row other:Q2_K=" + q2k() + " --work-dir " + dir +
                            " --json " + dir + "/sweep.json");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    // Q2_K: other + no imatrix + 4 imx rows; IQ1_S: a note + 4 imx rows
    const std::regex row(R"(\n\| (Q2_K|IQ1_S) \|)");
    EXPECT_EQ(std::distance(std::sregex_iterator(r.output.begin(), r.output.end(), row), std::sregex_iterator()), 11);
    EXPECT_NE(r.output.find("| IQ1_S | no imatrix | | needs an imatrix |"), std::string::npos) << r.output;
    const std::regex best(R"(\| (Q2_K|IQ1_S) \| \*\*[^|]*\*\* \(best\) \|)");
    EXPECT_EQ(std::distance(std::sregex_iterator(r.output.begin(), r.output.end(), best), std::sregex_iterator()), 2);
    // the setting picked on chunk 1 and measured on chunk 2, for the type with a reference row
    EXPECT_NE(r.output.find("imx setting chosen on chunks 1-1, measured on chunks 2-2"), std::string::npos);
    EXPECT_TRUE(std::regex_search(r.output, std::regex(R"(\n- Q2_K: imx W=\d+ \w+, [+-]0\.\d{5} \[)")));
    EXPECT_TRUE(file_exists(dir + "/sweep.json"));
    EXPECT_FALSE(file_exists(dir + "/Q2_K-w0-one.gguf")) << "quants are removed without --keep";
}

// The paired PPL ratio against the first quant: exp of the mean nll difference over the same tokens, so its
// value is exactly the ratio of the two PPLs, with an interval around it (narrower than the two PPL intervals).
TEST(Eval, PairedPplRatioIsTheRatioOfThePerplexities) {
    const std::string q = q2k(), base = shared("models/" + kModel);
    const RunResult r = run(imx_bin() + " eval --base " + base + " " + base + " " + q + " -f " +
                            shared("data/wiki.test.raw") + " -c 256 --chunks 4 -t 2 --json");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    const auto j = nlohmann::json::parse(r.output.substr(r.output.find("\n{") + 1));
    const auto & models = j["models"];
    ASSERT_EQ(models.size(), 3u);
    const double ppl_ref = models[1]["ppl"]["value"], ppl_q = models[2]["ppl"]["value"];
    ASSERT_TRUE(models[2].contains("ppl_ratio_to_reference")) << r.output;
    const auto & ratio = models[2]["ppl_ratio_to_reference"];
    EXPECT_NEAR(ratio["value"].get<double>(), ppl_q / ppl_ref, 1e-6 * ppl_q / ppl_ref);
    EXPECT_LT(ratio["lo"].get<double>(), ratio["value"].get<double>());
    EXPECT_GT(ratio["hi"].get<double>(), ratio["value"].get<double>());
    const double width = ratio["hi"].get<double>() / ratio["lo"].get<double>();
    const double unpaired = models[2]["ppl"]["hi"].get<double>() / models[2]["ppl"]["lo"].get<double>();
    EXPECT_LT(width, unpaired) << "pairing over the same tokens narrows the interval";
    EXPECT_FALSE(models[1].contains("ppl_ratio_to_reference")) << "the reference itself has none";
}

// A real vocabulary (Qwen3's 151,936 tokens, on a small synthetic model): the base's cache takes no more than
// llama-perplexity's KL-divergence base file of the same chunks, and KLD/PPL come out finite and sane.
TEST(Eval, RealVocabularyCacheIsNoLargerThanLlamaPerplexitys) {
    const std::string dir = fresh_dir("eval-vocab");
    const std::string base = dir + "/base.gguf", quant = dir + "/q.gguf";
    const RunResult synth = run(imx_bin() + " synth --arch qwen3 --layers 2 --embd 64 --ff 128 --heads 2 --kv-heads 1 "
                                "--head-dim 32 --vocab-from " + shared("models/" + kModel) + " --vocab-size 151936 -o " + base);
    ASSERT_EQ(synth.exit_code, 0) << tail(synth.output);
    const RunResult q = run(imx_bin() + " quantize -m " + base + " -o " + quant + " Q4_0 -t 2");
    ASSERT_EQ(q.exit_code, 0) << tail(q.output);
    const std::string text = " -f " + shared("data/wiki.test.raw") + " -c 128 --chunks 3 -t 2";
    const RunResult e = run("(" + imx_bin() + " eval --base " + base + " " + quant + text + " --cache-dir " + dir +
                            "/cache --json 2>/dev/null)");
    ASSERT_EQ(e.exit_code, 0) << tail(e.output);
    const auto j = nlohmann::json::parse(e.output);
    const double kld = j["models"][1]["kld_mean"]["value"].get<double>();
    EXPECT_TRUE(std::isfinite(kld) && kld > 0) << kld;
    EXPECT_TRUE(std::isfinite(j["models"][1]["ppl"]["value"].get<double>()));
    uint64_t ours = 0;
    for (const auto & f : fs::directory_iterator(dir + "/cache")) {
        ours += fs::file_size(f.path());
    }
    const RunResult up = run_perplexity("-m " + base + text + " --kl-divergence-base " + dir + "/up.kld");
    ASSERT_EQ(up.exit_code, 0) << tail(up.output);
    EXPECT_GT(ours, 3u * 63 * 151936 * 2);  // three chunks of 63 scored tokens, 2 bytes an entry
    EXPECT_LE(ours, fs::file_size(dir + "/up.kld"));
    // the same numbers from the cache
    const RunResult again = run("(" + imx_bin() + " eval --base " + base + " " + quant + text + " --cache-dir " + dir +
                                "/cache --json 2>/dev/null)");
    ASSERT_EQ(again.exit_code, 0) << tail(again.output);
    EXPECT_EQ(nlohmann::json::parse(again.output)["models"][1]["kld_mean"]["value"].get<double>(), kld);
}

// The cache folder stays under --cache-limit (least recently used first out); a base too large for it is kept in
// a temporary file that is gone after the run.
TEST(Eval, CacheStaysWithinItsLimit) {
    const std::string cache = fresh_dir("eval-limit"), tmp = fresh_dir("eval-limit-tmp");
    const std::string cmd = "TMPDIR=" + tmp + " " + imx_bin() + " eval --base " + shared("models/" + kModel) + " " + q2k() + " -f " +
                            shared("data/wiki.test.raw") + " -c 128 -t 2 --cache-dir " + cache + " --cache-limit 0.004";
    auto logp_files = [&] {
        std::vector<std::string> names;
        for (const auto & f : fs::directory_iterator(cache)) {
            names.push_back(f.path().filename().string());
        }
        return names;
    };
    ASSERT_EQ(run(cmd + " --chunks 2").exit_code, 0);  // 2 × 63 tokens × 16 KiB: 2.1 MB
    const auto first = logp_files();
    ASSERT_EQ(first.size(), 1u);
    const RunResult second = run(cmd + " --chunks 3");  // 3.1 MB more: over 4.3 MB, the first goes
    ASSERT_EQ(second.exit_code, 0) << tail(second.output);
    EXPECT_NE(second.output.find("removed " + cache + "/" + first[0]), std::string::npos) << tail(second.output);
    const auto now = logp_files();
    ASSERT_EQ(now.size(), 1u);
    EXPECT_NE(now[0], first[0]);
    const RunResult big = run(cmd + " --chunks 5");  // 5.2 MB: more than the limit on its own
    ASSERT_EQ(big.exit_code, 0) << tail(big.output);
    EXPECT_NE(big.output.find("temporary file for this run only"), std::string::npos) << tail(big.output);
    EXPECT_EQ(logp_files(), now);
    EXPECT_TRUE(fs::is_empty(tmp));
}
