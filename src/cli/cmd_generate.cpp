// imx generate -m MODEL -o TEXT: calibration text sampled from the model itself (engine/collect/self_samples.h).
#include "commands.h"
#include "progress.h"
#include "engine/collect/self_samples.h"
#include "engine/model/llama_model.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>

namespace imx::cli {

Run add_generate(CLI::App & app) {
    auto o = std::make_shared<engine::SelfSampleOptions>();
    auto json = std::make_shared<bool>(false);
    auto verbose = std::make_shared<bool>(false);
    app.add_option("-m,--model", o->model, "model to sample from (GGUF; the unquantized one)")->required();
    app.add_option("-o,--output", o->output, "text file to write (documents separated by blank lines)")->required();
    app.add_option("--sequences", o->sequences, "sequences to sample")->capture_default_str()->check(CLI::PositiveNumber);
    app.add_option("-n,--n-predict", o->tokens, "tokens per sequence (end-of-text sampled on the way starts a new document in it)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app.add_option("--temp", o->temperature, "sampling temperature")->capture_default_str()->check(CLI::Range(0.01, 10.0));
    app.add_option("--top-p", o->top_p, "nucleus sampling: the smallest set of tokens with this much probability (1: all)")
        ->capture_default_str()
        ->check(CLI::Range(0.01, 1.0));
    app.add_option("--seed", o->seed, "random seed (sequence s samples with seed + s)")->capture_default_str();
    app.add_option("--parallel", o->parallel, "sequences decoded together")->capture_default_str()->check(CLI::PositiveNumber);
    app.add_option("-t,--threads", o->threads, "CPU threads (default: all cores)");
    app.add_option("--n-gpu-layers", o->n_gpu_layers, "layers to offload to the GPU")->capture_default_str();
    app.add_flag("--json", *json, "print a JSON summary on stdout");
    app.add_flag("-v,--verbose", *verbose, "show llama.cpp's log");
    return [o, json, verbose] {
        prepare_outputs({o->output});
        engine::init_llama(*verbose);
        Progress bar("imx generate");
        const engine::SelfSampleResult r = engine::write_self_samples(
            *o, [&](uint64_t done, uint64_t total) { bar.update(done, total, "tokens"); });
        if (*json) {
            nlohmann::json j;
            j["model"] = o->model;
            j["output"] = o->output;
            j["sequences"] = r.sequences;
            j["tokens"] = r.tokens;
            j["documents"] = r.documents;
            j["bytes"] = r.bytes;
            j["sampling"] = {{"temp", o->temperature}, {"top_p", o->top_p}, {"seed", o->seed}, {"n_predict", o->tokens}};
            j["seconds"] = bar.seconds();
            std::printf("%s\n", j.dump(2).c_str());
        }
        std::fprintf(stderr, "imx generate: %d sequences, %llu tokens, %d documents, %llu bytes to %s in %s\n",
                     r.sequences, (unsigned long long) r.tokens, r.documents, (unsigned long long) r.bytes,
                     o->output.c_str(), clock_str(bar.seconds()).c_str());
    };
}

}  // namespace imx::cli
