// imx quantize --target-size / --target-bpw on qwen3moe-tiny: the file fits the target, the printed recipe
// makes the same file with llama-quantize, llama-perplexity loads it, a second target reuses the measurements,
// and an impossible target fails at once.
#include "helpers.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <regex>
#include <set>

using namespace imx::test;
namespace fs = std::filesystem;

namespace {

const std::string kModel = "qwen3moe-tiny.gguf";


// few candidates and chunks: the mechanics, not the quality (bench/target_size.sh measures that);
// sensitivity_chunks 0: the flag not given
std::string target_cmd(const std::string & dir, const std::string & target, const std::string & extra = "",
                       int sensitivity_chunks = 2) {
    const std::string chunks =
        sensitivity_chunks > 0 ? " --sensitivity-chunks " + std::to_string(sensitivity_chunks) : "";
    return "cd " + dir + " && " + imx_bin() + " quantize -m " + shared("models/" + kModel) +
           " --imatrix im.gguf -f " + shared("data/calibration.txt") +
           " --candidates q2_K,q3_K,q4_K,q6_K" + chunks + " -t 2 --cache-dir cache --json " + target + " " + extra;
}

nlohmann::json json_of(const RunResult & r) {
    const size_t at = r.output.find("{\n");
    return at == std::string::npos ? nlohmann::json{} : nlohmann::json::parse(r.output.substr(at), nullptr, false);
}

}  // namespace

TEST(TargetSize, FitsAndUpstreamMakesTheSameFileFromTheRecipe) {
    const std::string dir = fresh_dir("target-size");
    fs::copy_file(upstream_imatrix(kModel, "--chunks 6", ".gguf"), dir + "/im.gguf");
    const double target_mib = 16.0;
    const RunResult r = run(target_cmd(dir, "--target-size 16 -o mix.gguf --recipe mix.txt --html mix.html"));
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    const nlohmann::json j = json_of(r);
    const auto size = fs::file_size(dir + "/mix.gguf");
    EXPECT_LE(size, target_mib * 1048576.0);
    EXPECT_GE(size, 0.97 * target_mib * 1048576.0);  // the budget is used
    EXPECT_EQ(j["output_bytes"].get<uint64_t>(), size);
    EXPECT_EQ(j["predicted_bytes"].get<uint64_t>(), size);
    EXPECT_GT(j["measured_kld"].get<double>(), 0.0);
    EXPECT_GE(j["predicted_kld"].get<double>(), j["lower_bound_kld"].get<double>());
    std::set<std::string> types;
    for (const auto & [name, t] : j["tensor_types"].items()) {
        types.insert(t["type"].get<std::string>());
    }
    EXPECT_GE(types.size(), 2u) << "a mix, not one type";
    EXPECT_NE(bytes_of(dir + "/mix.html").size(), 0u);

    // llama-quantize with the recipe (--tensor-type-file) writes the very same bytes
    const RunResult up = run("cd " + dir + " && " + upstream("llama-quantize") +
                             " --imatrix im.gguf --tensor-type-file mix.txt " + shared("models/" + kModel) +
                             " up.gguf " + j["base_type"].get<std::string>() + " 2");
    ASSERT_EQ(up.exit_code, 0) << tail(up.output);
    EXPECT_TRUE(bytes_of(dir + "/up.gguf") == bytes_of(dir + "/mix.gguf"));

    const RunResult ppl = run_perplexity("-m " + dir + "/mix.gguf -f " +
                              shared("data/wiki.test.raw") + " -c 128 --chunks 2 -t 2");
    EXPECT_EQ(ppl.exit_code, 0) << tail(ppl.output);
    EXPECT_NE(ppl.output.find("Final estimate"), std::string::npos);

    // a second target: every measurement from the cache, only the output is made
    const RunResult again = run(target_cmd(dir, "--target-bpw 4.5 -o bpw.gguf"));
    ASSERT_EQ(again.exit_code, 0) << tail(again.output);
    const nlohmann::json k = json_of(again);
    EXPECT_EQ(k["error_types"].get<int>(), 0);
    EXPECT_EQ(k["probes"].get<int>(), 0);
    EXPECT_LE(k["bpw"].get<double>(), 4.5);
    EXPECT_GT(k["bpw"].get<double>(), 4.3);
    // probes by role: one per role over all layers (8 in qwen3moe-tiny), the errors from the cache
    const RunResult roles = run(target_cmd(dir, "--target-size 16 --probe-groups role -o role.gguf"));
    ASSERT_EQ(roles.exit_code, 0) << tail(roles.output);
    const nlohmann::json r8 = json_of(roles);
    EXPECT_EQ(r8["error_types"].get<int>(), 0);
    EXPECT_EQ(r8["probes"].get<int>(), 7) << "8 roles, token_embd's probe already measured";
    EXPECT_LE(fs::file_size(dir + "/role.gguf"), target_mib * 1048576.0);
    EXPECT_EQ(r8["measured_chunks"].get<int>(), 2) << "--sensitivity-chunks as given";
    // not given: probes by role run 4 chunks each, and the output is measured on the same 4
    const RunResult role4 = run(target_cmd(dir, "--target-size 16 --probe-groups role -o role4.gguf", "", 0));
    ASSERT_EQ(role4.exit_code, 0) << tail(role4.output);
    const nlohmann::json r4 = json_of(role4);
    EXPECT_EQ(r4["measured_chunks"].get<int>(), 4);
    EXPECT_EQ(r4["probes"].get<int>(), 8) << "measured again: each probe's entry names its chunks";
    EXPECT_EQ(r4["error_types"].get<int>(), 0) << "the errors do not depend on the probes' chunks: from the cache";
    // no scratch file is left beside the outputs
    for (const auto & e : fs::directory_iterator(dir)) {
        EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
    }
}

TEST(TargetSize, ImpossibleTargetsAndBadInputsFailBeforeAnyWork) {
    const std::string dir = fresh_dir("target-size-bad");
    fs::copy_file(upstream_imatrix(kModel, "--chunks 6", ".gguf"), dir + "/im.gguf");
    for (const std::string target : {"--target-size 5", "--target-size 40", "--target-bpw 1"}) {
        const RunResult r = run(target_cmd(dir, target + " -o out.gguf"));
        EXPECT_EQ(r.exit_code, 2) << target << tail(r.output);
        EXPECT_NE(r.output.find("is outside what the candidate types can make"), std::string::npos) << r.output;
        EXPECT_FALSE(file_exists(dir + "/out.gguf"));
        EXPECT_FALSE(file_exists(dir + "/cache")) << "no measurement was started";
    }
    const std::pair<std::string, std::string> bad[] = {
        {"--target-size 16 --candidates q2_K,q9_X -o out.gguf", "unknown ggml type 'q9_X'"},
        {"--target-size 16 -o out.gguf Q4_K_M", "or a target size, not both"},
        {"--target-size 16 --target-bpw 4 -o out.gguf", "not both"},
    };
    for (const auto & [args, message] : bad) {
        const RunResult r = run(target_cmd(dir, args));
        EXPECT_EQ(r.exit_code, 2) << args << tail(r.output);
        EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
    }
    // the search's own options without a target are refused, not dropped
    const RunResult no_target = run("cd " + dir + " && " + imx_bin() + " quantize -m " + shared("models/" + kModel) +
                                    " --imatrix im.gguf -o out.gguf --error-rows 64 Q4_K_M 2>&1");
    EXPECT_EQ(no_target.exit_code, 2);
    EXPECT_NE(no_target.output.find("--error-rows goes with --target-size or --target-bpw"), std::string::npos)
        << no_target.output;
    EXPECT_FALSE(file_exists(dir + "/out.gguf"));
    const RunResult no_text = run("cd " + dir + " && " + imx_bin() + " quantize -m " + shared("models/" + kModel) +
                                  " --imatrix im.gguf --target-size 16 -o out.gguf");
    EXPECT_EQ(no_text.exit_code, 2);
    EXPECT_NE(no_text.output.find("need -f TEXT"), std::string::npos) << no_text.output;
    // an imatrix file's covariances were weighted (or not) when collected: nothing here to turn off
    for (const std::string args : {"--method hessian --gate-weights Q2_K", "--gate-weights -f x.txt Q2_K",
                                   "--method hessian --gate-weights --target-size 16 -f x.txt"}) {
        const RunResult gates = run("cd " + dir + " && " + imx_bin() + " quantize -m " + shared("models/" + kModel) +
                                    " --imatrix im.gguf -o out.gguf " + args);
        EXPECT_EQ(gates.exit_code, 2) << args << tail(gates.output);
        EXPECT_NE(gates.output.find("--gate-weights goes with --method hessian and -f TEXT"), std::string::npos)
            << gates.output;
        EXPECT_FALSE(file_exists(dir + "/out.gguf"));
    }
}

// The levers compose, in one command: no --imatrix, so the statistics and covariances are collected from -f's
// text first, block by block — each block's candidate errors measured with its whole covariances as the
// collection finishes it, then freed — the type search measures with the Hessian encoder, and the chosen mix is
// written block by block with the sequential passes and the norms re-fitted; the recipe says it makes the
// types, not the bytes.
TEST(TargetSize, OneCommandWithSequentialPasses) {
    const std::string dir = fresh_dir("target-size-sequential");
    const std::string base = "cd " + dir + " && " + imx_bin() + " quantize -m " + shared("models/" + kModel) + " -f " +
                             shared("data/calibration.txt") +
                             " --chunks 4 --candidates q2_K,q3_K,q4_K,q6_K --sensitivity-chunks 2 -t 2 --cache-dir cache "
                             "--json --target-size 16 --method hessian ";
    const RunResult r = run(base + "-o seq.gguf --sequential --refit-norms --save-imatrix im.gguf");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    // one block's covariances at a time (qwen3moe-tiny: 4 blocks of 46 MiB), every one whole
    const std::smatch m = [&] {
        std::smatch found;
        std::regex_search(r.output, found, std::regex(R"(\((\d+) whole, 0 in blocks of 256; 0 pooled over experts\), (\d+) MiB over all blocks; at most (\d+) MiB held at once)"));
        return found;
    }();
    ASSERT_EQ(m.size(), 4u) << tail(r.output);
    EXPECT_GT(std::stoi(m[1]), 0);
    EXPECT_LT(std::stoi(m[3]) * 3, std::stoi(m[2])) << "held: one block's, not all of them";
    const nlohmann::json j = json_of(r);
    EXPECT_TRUE(j["by_blocks"].get<bool>());
    EXPECT_EQ(j["sequential_layers"].get<int>(), 4);
    EXPECT_GT(j["norms_refit"].get<int>(), 0);
    EXPECT_EQ(j["recipe_reproduces"], "types");  // the Hessian bytes are imx's own
    EXPECT_LE(fs::file_size(dir + "/seq.gguf"), 16.0 * 1048576.0);
    EXPECT_TRUE(fs::exists(dir + "/im.gguf"));
    // every block tensor's errors were measured with its covariance (the Hessian metric), during the collection
    nlohmann::json cache;
    for (const auto & e : fs::directory_iterator(dir + "/cache")) {
        if (e.path().filename().string().rfind("types-", 0) == 0) {
            cache = nlohmann::json::parse(bytes_of(e.path().string()));
        }
    }
    int with_hessian = 0;
    for (const auto & [name, t] : cache["tensors"].items()) {
        if (name.rfind("blk.", 0) == 0) {
            EXPECT_TRUE(t["errors"]["q3_K"].contains("hessian")) << name;
            with_hessian += 1;
        }
    }
    EXPECT_EQ(with_hessian, 28);
    // what cannot go together is refused with one line
    const std::vector<std::pair<std::string, std::string>> refused = {
        {"-o bad.gguf --prior-weight auto", "--prior-weight auto cross-fits parts of an imatrix"},
        {"-o bad.gguf --save-every 1", "--save-every does not go with --target-size"},
        {"-o bad.gguf --sequential --sequential-chunks 2", "--sequential-chunks goes with --imatrix"},
        {"-o bad.gguf --keep-split", "--keep-split is not written for a block-by-block quantization"},
        {"-o bad.gguf --refit-norms", "--refit-norms goes with a block-by-block run"},  // with the diagonal method
    };
    for (const auto & [args, message] : refused) {
        const std::string cmd = args.find("--refit-norms") != std::string::npos
                                    ? std::regex_replace(base, std::regex("--method hessian"), "--method diagonal")
                                    : base;
        const RunResult bad = run(cmd + args + " 2>&1");
        EXPECT_EQ(bad.exit_code, 2) << args;
        EXPECT_NE(bad.output.find(message), std::string::npos) << bad.output;
        EXPECT_FALSE(fs::exists(dir + "/bad.gguf")) << args;
    }
}

// The search's errors are measured in memory (engine/encode/candidate_errors.h), not read from candidate files:
// with every row they are the errors the Hessian encoder reports when it writes the file at that type, and the
// default sample of rows lands near them.
TEST(TargetSize, InMemoryErrorsAreTheEncodersOwn) {
    const std::string dir = fresh_dir("target-size-errors");
    const std::string model = shared("models/" + kModel), text = shared("data/calibration.txt");
    const RunResult cov = run("cd " + dir + " && " + imx_bin() + " collect -m " + model + " -f " + text +
                              " --chunks 4 --covariance -o cov.gguf -t 2 2>&1");
    ASSERT_EQ(cov.exit_code, 0) << tail(cov.output);
    // the encoder's own report, every tensor at q3_K
    const RunResult written = run("cd " + dir + " && " + imx_bin() + " quantize -m " + model +
                                  " --imatrix cov.gguf --method hessian --tensor-type '.*=q3_K' -o q3.gguf Q8_0 -t 2 -v 2>&1");
    ASSERT_EQ(written.exit_code, 0) << tail(written.output);
    std::map<std::string, double> reported, reported_diag;
    const std::regex line(R"(\s+(blk\.\S+)\s+q3_K\s+\d+/\d+\s+rows\s+error\s+(\S+)\s+->\s+(\S+))");
    for (auto it = std::sregex_iterator(written.output.begin(), written.output.end(), line); it != std::sregex_iterator(); ++it) {
        reported_diag[(*it)[1]] = std::stod((*it)[2]);
        reported[(*it)[1]] = std::stod((*it)[3]);
    }
    ASSERT_GE(reported.size(), 20u) << tail(written.output);
    auto search = [&](const std::string & rows) {
        const std::string cache = "cache-" + rows;
        const RunResult r = run("cd " + dir + " && " + imx_bin() + " quantize -m " + model +
                                " --imatrix cov.gguf --method hessian -f " + text +
                                " --candidates q3_K,q4_K --probe-groups role --sensitivity-chunks 1 -c 128 -t 2 --target-bpw 4"
                                " -o mix-" + rows + ".gguf --cache-dir " + cache + " --error-rows " + rows + " 2>&1");
        EXPECT_EQ(r.exit_code, 0) << tail(r.output);
        for (const auto & e : fs::directory_iterator(dir + "/" + cache)) {
            if (e.path().filename().string().rfind("types-", 0) == 0) {
                return nlohmann::json::parse(bytes_of(e.path().string()));
            }
        }
        return nlohmann::json{};
    };
    const nlohmann::json all = search("0"), sampled = search("32");
    double sum_all = 0, sum_sampled = 0;
    for (const auto & [name, loss] : reported) {
        const double e = all["tensors"][name]["errors"]["q3_K"]["hessian"].get<double>();
        EXPECT_NEAR(e, loss, 1e-3 * loss) << name;  // the report prints 4 digits
        // what the probes are measured against: the same loss of llama-quantize's encoding
        const double d = all["tensors"][name]["errors"]["q3_K"]["hessian_of_diag"].get<double>();
        EXPECT_NEAR(d, reported_diag[name], 1e-3 * reported_diag[name]) << name;
        EXPECT_GE(d, e) << name;  // the encoder keeps the better of the two per row
        sum_all += e;
        sum_sampled += sampled["tensors"][name]["errors"]["q3_K"]["hessian"].get<double>();
    }
    EXPECT_NEAR(sum_sampled, sum_all, 0.15 * sum_all) << "32 rows a matrix, scaled to all rows";
    EXPECT_NE(sum_sampled, sum_all) << "fewer rows were encoded";
}

// Block by block (-f without --imatrix), each block's errors are measured during the collection with that
// block's covariances: with every row they are what the block-by-block Hessian encoder reports when it writes
// the file at that type from the same text — and so are the output head's, measured after the blocks with its
// input's covariance (qwen3moe-tiny's head is its token embedding: under the lookup's term too).
TEST(TargetSize, ByBlocksErrorsAreTheBlockEncodersOwn) {
    const std::string dir = fresh_dir("target-size-by-blocks");
    const std::string model = shared("models/" + kModel), text = shared("data/calibration.txt");
    const std::string same_text = " -f " + text + " --chunks 6 -c 128 -t 2 --method hessian ";
    const RunResult written = run("cd " + dir + " && " + imx_bin() + " quantize -m " + model + same_text +
                                  "--tensor-type '.*=q3_K' -o q3.gguf Q8_0 -v 2>&1");
    ASSERT_EQ(written.exit_code, 0) << tail(written.output);
    std::map<std::string, double> reported;
    const std::regex line(R"(\s+(blk\.\S+|token_embd\.weight)\s+q3_K\s+\d+/\d+\s+rows\s+error\s+(\S+)\s+->\s+(\S+))");
    for (auto it = std::sregex_iterator(written.output.begin(), written.output.end(), line); it != std::sregex_iterator(); ++it) {
        reported[(*it)[1]] = std::stod((*it)[3]);
    }
    ASSERT_GE(reported.size(), 20u) << tail(written.output);
    ASSERT_TRUE(reported.count("token_embd.weight")) << tail(written.output);
    const RunResult r = run("cd " + dir + " && " + imx_bin() + " quantize -m " + model + same_text +
                            "--candidates q3_K,q4_K --probe-groups role --sensitivity-chunks 1 --target-bpw 4 "
                            "--error-rows 0 -o mix.gguf --cache-dir cache 2>&1");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    EXPECT_NE(r.output.find("each block's candidate errors measured as it was done"), std::string::npos) << tail(r.output);
    nlohmann::json cache;
    for (const auto & e : fs::directory_iterator(dir + "/cache")) {
        if (e.path().filename().string().rfind("types-", 0) == 0) {
            cache = nlohmann::json::parse(bytes_of(e.path().string()));
        }
    }
    for (const auto & [name, loss] : reported) {
        EXPECT_NEAR(cache["tensors"][name]["errors"]["q3_K"]["hessian"].get<double>(), loss, 1e-3 * loss) << name;
    }
}

// Without --sequential the search keeps every block's statistics on disk while it measures and encodes the
// output from them instead of collecting them again: the same file, byte for byte, as the block-by-block
// quantization given the recipe's types, which collects them on its own pass; the kept file is gone after.
TEST(TargetSize, ByBlocksOutputFromKeptStatisticsIsTheBlockQuantizationsOwn) {
    // qwen3moe-tiny's head is its token embedding, deepseek3-tiny's a tensor of its own (output.weight): either way
    // the search keeps the head's statistics after the blocks' for the output's Hessian encoding of it
    for (const std::string & name : {kModel, std::string("deepseek3-tiny.gguf")}) {
        const std::string dir = fresh_dir("target-size-kept-" + name.substr(0, name.find('-')));
        const std::string model = shared("models/" + name);
        const std::string same_text = " -f " + shared("data/calibration.txt") + " --chunks 4 -c 128 -t 2 --method hessian ";
        // (deepseek3-tiny's attn_k_b rows of 64 take no k-quant)
        const std::string candidates = name == kModel ? "q2_K,q3_K,q4_K" : "q2_K,q3_K,q4_K,q8_0";
        const RunResult r = run("cd " + dir + " && " + imx_bin() + " quantize -m " + model + same_text +
                                "--candidates " + candidates + " --probe-groups role --sensitivity-chunks 1 --target-bpw 3.5 "
                                "-o mix.gguf --json 2>&1");
        ASSERT_EQ(r.exit_code, 0) << tail(r.output);
        EXPECT_NE(r.output.find("kept for the output on disk"), std::string::npos) << tail(r.output);
        EXPECT_NE(r.output.find("encode: blocks 4/4"), std::string::npos) << tail(r.output);  // no pass over the text
        const nlohmann::json j = json_of(r);
        ASSERT_TRUE(j.contains("recipe")) << tail(r.output);
        std::set<std::string> types;
        std::string overrides;
        for (const auto & a : j["recipe"]) {
            overrides += " --tensor-type '" + a.get<std::string>() + "'";
            types.insert(a.get<std::string>().substr(a.get<std::string>().rfind('=') + 1));
        }
        EXPECT_GE(types.size(), 2u) << "a mix, not one type: " << j["recipe"].dump();
        const RunResult q = run("cd " + dir + " && " + imx_bin() + " quantize -m " + model + same_text + overrides +
                                " -o blocks.gguf " + j["base_type"].get<std::string>() + " --json");
        ASSERT_EQ(q.exit_code, 0) << tail(q.output);
        // the block quantization computes the head's statistics from the last block's output itself
        EXPECT_TRUE(json_of(q).contains("output_head")) << name;
        EXPECT_TRUE(bytes_of(dir + "/mix.gguf") == bytes_of(dir + "/blocks.gguf")) << name;
        EXPECT_EQ(file_names(dir), (std::vector<std::string>{"blocks.gguf", "mix.gguf"})) << name;
    }
}
