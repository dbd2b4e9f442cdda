// Options that eval and sweep share: the text, chunking, threads and the base-logits cache.
#pragma once

#include "engine/evaluate/evaluate.h"

#include <CLI/CLI.hpp>

#include <cstdlib>
#include <string>

namespace imx::cli {

inline std::string default_cache_dir() {
    const char * xdg = std::getenv("XDG_CACHE_HOME");
    const char * home = std::getenv("HOME");
    return xdg && *xdg ? std::string(xdg) + "/imx/eval" : std::string(home ? home : ".") + "/.cache/imx/eval";
}

inline void add_eval_options(CLI::App & app, engine::EvalOptions & e, bool & no_cache) {
    app.add_option("-f,--file", e.text_file, "evaluation text (held out from calibration)")->required();
    app.add_option("-c,--ctx-size", e.ctx, "tokens per chunk; the second half of each is scored")->capture_default_str();
    app.add_option("--chunks", e.max_chunks, "use the first N chunks (default: all of the text)");
    app.add_option("-t,--threads", e.threads, "CPU threads (default: all cores)");
    app.add_option("--n-gpu-layers", e.n_gpu_layers, "layers to offload to the GPU")->capture_default_str();
    e.cache_dir = default_cache_dir();
    app.add_option("--cache-dir", e.cache_dir, "where the base model's log-probabilities are cached")
        ->capture_default_str();
    app.add_flag("--no-cache", no_cache, "compute the base's log-probabilities again and do not store them");
    app.add_option_function<double>(
           "--cache-limit", [&e](double gib) { e.cache_limit = (uint64_t) (gib * 1073741824.0); },
           "GiB the cache folder may hold; the least recently used files go first (default 16)")
        ->check(CLI::PositiveNumber);
    app.add_flag("-v,--verbose", e.verbose, "show llama.cpp's log");
}

}  // namespace imx::cli
