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


// few candidates and chunks: the mechanics, not the quality (bench/target_size.sh measures that)
std::string target_cmd(const std::string & dir, const std::string & target, const std::string & extra = "") {
    return "cd " + dir + " && " + imx_bin() + " quantize -m " + shared("models/" + kModel) +
           " --imatrix im.gguf -f " + shared("data/calibration.txt") +
           " --candidates q2_K,q3_K,q4_K,q6_K --sensitivity-chunks 2 -t 2 --cache-dir cache --json " + target +
           " " + extra;
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
}

// The levers compose, in one command: no --imatrix, so the statistics and covariances are collected from -f's
// text first; the type search measures with the Hessian encoder, the chosen mix is encoded again layer by layer
// (--sequential); the recipe says it makes the types, not the bytes.
TEST(TargetSize, OneCommandWithSequentialPasses) {
    const std::string dir = fresh_dir("target-size-sequential");
    const std::string base = "cd " + dir + " && " + imx_bin() + " quantize -m " + shared("models/" + kModel) + " -f " +
                             shared("data/calibration.txt") +
                             " --chunks 4 --candidates q2_K,q3_K,q4_K,q6_K --sensitivity-chunks 2 -t 2 --cache-dir cache "
                             "--json --target-size 16 --method hessian ";
    const RunResult r = run(base + "-o seq.gguf --sequential --sequential-chunks 2 --save-imatrix im.gguf");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    // the search holds every covariance at once: by default the budget is the free memory's, all whole here
    EXPECT_NE(r.output.find(" whole, 0 in blocks of 256; 0 pooled over experts), "), std::string::npos) << tail(r.output);
    const nlohmann::json j = json_of(r);
    EXPECT_EQ(j["sequential_layers"].get<int>(), 4);
    EXPECT_EQ(j["recipe_reproduces"], "types");  // the Hessian bytes are imx's own
    EXPECT_LE(fs::file_size(dir + "/seq.gguf"), 16.0 * 1048576.0);
    EXPECT_TRUE(fs::exists(dir + "/im.gguf"));
    // what cannot go together is refused with one line
    const std::vector<std::pair<std::string, std::string>> refused = {
        {"-o bad.gguf --prior-weight auto", "--prior-weight auto cross-fits parts of an imatrix"},
        {"-o bad.gguf --save-every 1", "--save-every goes with a block-by-block run"},
    };
    for (const auto & [args, message] : refused) {
        const RunResult bad = run(base + args + " 2>&1");
        EXPECT_EQ(bad.exit_code, 2) << args;
        EXPECT_NE(bad.output.find(message), std::string::npos) << bad.output;
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
