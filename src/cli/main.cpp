// imx: importance matrices for quantizing GGUF models. This file only dispatches to the subcommands.
//
// Exit codes: 0 success, 1 usage error, 2 bad input or failed I/O (one line on stderr names the file),
// 128 + N ended by signal N (130 Ctrl-C, 143 SIGTERM), temporary files removed.
#include "commands.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/math/linear_algebra.h"

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

// OpenBLAS reads two settings once, as it loads, from the environment; imx starts itself again with them set
// where the user has not set them (the new process finds them set: this happens at most once):
// - OPENBLAS_CORETYPE: it chooses its kernels by the CPU's model number, and on a CPU newer than it knows takes
//   SSE3 kernels (core/math/linear_algebra.h); better ones named here halved a 2-block Qwen3-1.7B-shape Hessian
//   quant on Emerald Rapids (91.9 → 46.5 s).
// - OPENBLAS_THREAD_TIMEOUT=4: after a threaded product its idle workers spin in sched_yield for 2^28 cycles
//   (~0.1 s) before they sleep — between the covariance products an eval callback makes and ggml's graph, they
//   take the cores from ggml's threads. 2^4 cycles instead: a --sequential Q2_K quant of the 4-block
//   Qwen3-1.7B shape (16 chunks, 2 cores, AMD EPYC) 129.0 → 124.4 s and 129.3 → 123.6 s (pairs; docs/scale.md).
static void restart_with_blas_settings(char ** argv) {
    std::vector<std::pair<const char *, std::string>> settings;
    if (!std::getenv("OPENBLAS_CORETYPE")) {
        if (const std::string better = imx::better_blas_kernels(); !better.empty()) {
            settings.emplace_back("OPENBLAS_CORETYPE", better);
        }
    }
    if (!std::getenv("OPENBLAS_THREAD_TIMEOUT")) {
        settings.emplace_back("OPENBLAS_THREAD_TIMEOUT", "4");
    }
    if (settings.empty()) {
        return;
    }
    char self[PATH_MAX];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);  // the file itself: `ps` then says imx
    if (n <= 0) {
        return;
    }
    self[n] = '\0';
    for (const auto & [name, value] : settings) {
        setenv(name, value.c_str(), 1);
    }
    execv(self, argv);  // returns only if it failed: go on with the settings loaded
    for (const auto & [name, value] : settings) {
        unsetenv(name);
    }
}

int main(int argc, char ** argv) {
    restart_with_blas_settings(argv);
    CLI::App app{"imx: importance matrices (imatrix) for quantizing GGUF models"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "imx " IMX_VERSION " (llama.cpp " IMX_LLAMA_COMMIT ", backends: " IMX_BACKENDS
                                      ", OpenBLAS kernels: " + imx::blas_kernels() + ")");

    std::map<CLI::App *, imx::cli::Run> runs;
    auto add = [&](const char * name, const char * help, imx::cli::Run (*reg)(CLI::App &)) {
        CLI::App * sub = app.add_subcommand(name, help);
        runs[sub] = reg(*sub);
    };
    add("collect", "run a model over calibration text and write its importance matrix", imx::cli::add_collect);
    add("quantize", "quantize a GGUF model with imatrix weights and a neutral prior (llama-quantize's types)",
        imx::cli::add_quantize);
    add("eval", "perplexity and KL-divergence of quantized models against their base", imx::cli::add_eval);
    add("sweep", "quantize a grid of types x prior settings, evaluate each, print one table", imx::cli::add_sweep);
    add("stats", "per-tensor statistics (as llama-imatrix --show-statistics), expert coverage, HTML report",
        imx::cli::add_stats);
    add("coverage", "compare calibration texts by how many of a MoE model's experts they reach",
        imx::cli::add_coverage);
    add("diff", "compare two imatrix files: counts exactly, sums within a tolerance (exit 3 if they differ)",
        imx::cli::add_diff);
    add("generate", "sample calibration text from the model itself (sequences from BOS, seeded)",
        imx::cli::add_generate);
    add("synth", "write a random-weight GGUF model of a chosen shape (speed and shape tests)", imx::cli::add_synth);
    add("inspect", "show what an imatrix file holds (GGUF or legacy .dat)", imx::cli::add_inspect);
    add("convert", "convert between GGUF and legacy .dat imatrix files", imx::cli::add_convert);
    add("merge", "add imatrix files together: exact sums and per-expert counts", imx::cli::add_merge);

    // llama.cpp's multi-letter short flags, which CLI11 does not allow as names: spell them out.
    static const std::map<std::string, std::string> long_form = {{"-ub", "--ubatch-size"},
                                                                  {"-ngl", "--n-gpu-layers"},
                                                                  {"-fa", "--flash-attn"},
                                                                  {"-ofreq", "--output-frequency"}};
    std::vector<std::string> args;
    for (int i = argc - 1; i >= 1; --i) {  // CLI11 takes the arguments in reverse order
        const auto it = long_form.find(argv[i]);
        args.push_back(it != long_form.end() ? it->second : argv[i]);
    }
    try {
        app.parse(args);
    } catch (const CLI::ParseError & e) {
        const int rc = app.exit(e);
        return rc == 0 ? 0 : 1;
    }
    imx::install_interrupt_handlers();
    try {
        for (CLI::App * sub : app.get_subcommands()) {
            runs.at(sub)();
        }
    } catch (const imx::Interrupted & e) {
        std::fprintf(stderr, "imx: %s\n", e.what());
        return 128 + e.signal();
    } catch (const imx::Error & e) {
        std::fprintf(stderr, "imx: error: %s\n", e.what());
        return 2;
    } catch (const std::exception & e) {
        std::fprintf(stderr, "imx: error: %s\n", e.what());
        return 2;
    }
    return 0;
}
