// imx collect -m MODEL -f TEXT -o OUT: the importance matrix of a model over calibration text.
#include "commands.h"
#include "coverage_output.h"
#include "format_option.h"
#include "progress.h"
#include "core/report/coverage.h"
#include "core/error.h"
#include "core/format/imatrix_file.h"
#include "engine/collect/collect.h"
#include "engine/model/tensor_file.h"
#include "engine/collect/stream_collect.h"
#include "engine/collect/rpc_servers.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <regex>

namespace imx::cli {

namespace {

struct Options {
    engine::CollectOptions c;
    // llama-imatrix's own flags, so that its command lines run unchanged (docs/collect.md)
    std::vector<std::string> in_files;
    bool                     show_statistics = false, ppl = false, no_ppl = false;
    int                      output_frequency = 0, save_frequency = 0;
    std::string              flash_attn;
    int                    batch = 0;
    int                    ubatch = 0;
    bool                   json = false;
    std::string            format;
    std::string            shard;
    std::string            rpc;
    bool                   covariance = false;
    double                 covariance_mib = 4096;
    int                    stream = -1;  // --stream 1, --no-stream 0, else by the model's size against memory
};

void print_summary(const Imatrix & im, const engine::CollectResult & r, const std::string & out) {
    std::fprintf(stderr, "imx collect: %zu tensors, %u chunks of %u tokens in %s (%.0f tok/s)%s -> %s\n",
                 im.tensors.size(), im.meta.chunk_count, im.meta.chunk_size, clock_str(r.seconds).c_str(),
                 r.seconds > 0 ? r.tokens / r.seconds : 0.0,
                 r.chunks_resumed ? (", resumed after chunk " + std::to_string(r.chunks_resumed)).c_str() : "",
                 out.c_str());
    if (!im.covariances.empty()) {
        std::fprintf(stderr, "covariance: %s\n", covariance_summary(im).c_str());
    }
    if (!im.all_experts.empty()) {
        std::fprintf(stderr, "all experts: every expert's inputs over all %lld tokens for %zu expert tensors (kept "
                             "beside the routed sums)\n", (long long) im.all_experts.begin()->second.tokens,
                     im.all_experts.size());
    }
    if (r.device_input_bytes > 0) {
        std::fprintf(stderr, "device traffic: %.2f MiB read back (per-column sums made where the activations are) "
                             "for %.2f MiB of matmul inputs on devices/servers (%.0fx less than copying them)\n",
                     r.read_back_bytes / 1048576.0, r.device_input_bytes / 1048576.0,
                     r.read_back_bytes > 0 ? (double) r.device_input_bytes / (double) r.read_back_bytes : 0.0);
    }
    print_coverage_table(stderr, im);
}

void print_json(const Imatrix & im, const engine::CollectResult & r, const std::string & out) {
    nlohmann::ordered_json j;
    j["output"] = out;
    j["chunks"] = im.meta.chunk_count;
    j["chunk_size"] = im.meta.chunk_size;
    j["chunks_resumed"] = r.chunks_resumed;
    j["seconds"] = r.seconds;
    j["tokens_per_second"] = r.seconds > 0 ? r.tokens / r.seconds : 0.0;
    j["tensors"] = im.tensors.size();
    j["device_input_bytes"] = r.device_input_bytes;
    j["read_back_bytes"] = r.read_back_bytes;
    if (!im.covariances.empty()) {
        j["covariance"] = covariance_summary(im);
    }
    j["all_experts_tensors"] = im.all_experts.size();
    j["coverage"] = coverage_json(im);
    std::printf("%s\n", j.dump(2).c_str());
}

}  // namespace

uint64_t available_memory() {
    std::FILE * f = std::fopen("/proc/meminfo", "r");
    if (!f) {
        return 0;
    }
    char line[256];
    unsigned long long kb = 0;
    while (std::fgets(line, sizeof line, f)) {
        if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
            break;
        }
    }
    std::fclose(f);
    return (uint64_t) kb * 1024;
}

uint64_t whole_covariance_bytes(const Imatrix & im) {
    uint64_t bytes = 0;
    for (const Covariance & c : im.covariances) {
        const int64_t mats = std::max<int64_t>(c.n_mat, im.tensors.at(c.readers[0]).n_mat());
        bytes += covariance_bytes(c.n_cols, c.n_cols, mats) * (c.cross.empty() ? 1 : 2);
    }
    return bytes;
}

std::string covariance_summary(const Imatrix & im, const char * held) {
    int64_t whole = 0, blocks = 0, readers = 0, pooled = 0, cross = 0;
    uint64_t bytes = 0;
    for (const Covariance & c : im.covariances) {
        (c.full() ? whole : blocks) += 1;
        pooled += c.n_mat == 1 && im.tensors.at(c.readers[0]).n_mat() > 1;
        readers += (int64_t) c.readers.size();
        bytes += covariance_bytes(c.n_cols, c.block, c.n_mat) * (c.cross.empty() ? 1 : 2);
        cross += c.cross.empty() ? 0 : 1;
    }
    char s[200];
    std::snprintf(s, sizeof s, "%zu inputs of %lld weights (%lld whole, %lld in blocks of 256; %lld pooled over "
                  "experts), %.0f MiB %s", im.covariances.size(), (long long) readers, (long long) whole,
                  (long long) blocks, (long long) pooled, bytes / 1048576.0, held);
    std::string out = s;
    if (cross > 0) {
        out += "; cross terms against the target model for " + std::to_string(cross) + " (whole, not pooled)";
    }
    return out;
}

Run add_collect(CLI::App & app) {
    auto o = std::make_shared<Options>();
    auto & c = o->c;
    app.add_option("-m,--model", c.model, "GGUF model");
    app.add_option("-f,--file", c.text_file, "calibration text");
    app.add_option("-o,--output,--output-file", c.output, "imatrix file to write (.gguf, or .dat for the legacy format)")
        ->capture_default_str();
    c.output = "imatrix.gguf";
    app.add_option("-c,--ctx-size", c.chunk_size, "tokens per chunk")->capture_default_str();
    app.add_option("-b,--batch-size", o->batch,
                   "accepted for compatibility: imx computes each chunk alone, as one batch and one ubatch, so "
                   "results never depend on -b or -ub");
    app.add_option("--ubatch-size", o->ubatch, "accepted for compatibility, like -b");
    app.add_option("-t,--threads", c.threads, "CPU threads (default: all cores)");
    app.add_option("--n-gpu-layers", c.n_gpu_layers, "layers to offload to the GPU")->capture_default_str();
    app.add_option("--chunks", c.max_chunks, "stop after N chunks (default: all of the text)");
    app.add_option("--from-chunk,--chunk", c.first_chunk, "skip the first N chunks of the text");
    app.add_option("--covariance-tensors", c.covariance_tensors,
                   "with --covariance: only inputs whose (first) reader matches this regex, e.g. 'blk\\.([0-9]|1[0-9])\\.' "
                   "(one machine per layer range; imx merge joins the sets)");
    app.add_option("--rpc", o->rpc, "HOST:PORT,...: rpc-server processes that take the layers -ngl places "
                                    "(llama.cpp's RPC backend); only per-column sums come back");
    app.add_option("--shard", o->shard, "I/N: collect part I of N equal runs of the chunks (one per machine); "
                                        "imx merge of the N files gives one run's bytes");
    app.add_option("--experts-used", c.experts_used, "run MoE models with N active experts per token");
    app.add_option("--save-every", c.save_every, "write a checkpoint (<output>.ckpt) every N chunks");
    app.add_flag("--resume", c.resume, "continue from <output>.ckpt if it exists");
    app.add_flag("--parse-special", c.parse_special, "parse special tokens in the text");
    app.add_flag("--chat", c.chat, "the file is chat JSONL, one {\"messages\": [...]} per line (default for .jsonl)");
    app.add_option("--chat-template", c.chat_template, "built-in template name for chat data (default: the model's)");
    app.add_flag("--device-sums", c.device_sums,
                 "sum x² with ggml ops on the activations' backend even on the CPU (GPU inputs always are)");
    app.add_flag("--host-sums", c.host_sums, "copy GPU activations to the host and sum there (upstream's way; slower)");
    app.add_flag("--covariance", o->covariance,
                 "also accumulate XᵀX of every matmul input, per expert (for quantize --method hessian; GGUF only)");
    app.add_option("--covariance-budget", o->covariance_mib,
                   "MiB of memory for XᵀX: inputs seen first are kept whole, then in 256-column diagonal blocks, "
                   "then not at all")
        ->capture_default_str();
    app.add_flag("--covariance-blocks", c.covariance_blocks,
                 "keep XᵀX as 256-column diagonal blocks even where the whole matrix would fit (large models: "
                 "spreads the budget over all layers)");
    app.add_flag("--covariance-pooled-experts", c.covariance_pool_experts,
                 "keep one XᵀX per expert input, pooled over its experts (quantize scales it by each expert's own "
                 "imatrix); the default where per-expert matrices do not fit the budget");
    app.add_flag("--gate-weights", c.gate_weights,
                 "with --covariance: each token's row of an expert's XᵀX weighted by its gate weight for that expert, "
                 "squared, as its output is (the sums, the imatrix, stay unweighted; off by default: lower KLD on "
                 "held-out calibration text, higher on WikiText-2 with --sequential, docs/hessian.md)");
    app.add_option("--target-model", c.target_model,
                   "with --covariance, -m being a quantization of this model: also X̃ᵀX of -m's inputs against this "
                   "model's over the same tokens, so that quantize --method hessian fits each layer to this model's "
                   "outputs on the inputs the quantized layers before it give (sequential quantization)");
    app.add_flag("--process-output", c.process_output, "also collect the output head (output.weight), as llama-imatrix");
    app.add_flag("--all-experts", c.all_experts,
                 "also every expert's inputs over all tokens, as if each token were routed to every expert (computed "
                 "on the side; routing, outputs and the routed sums stay as they are): quantize --prior all-experts "
                 "leans thin and unseen experts on them");
    app.add_option("--in-file", o->in_files,
                   "imatrix files added to what this run collects (comma-separated or repeated); without -f they "
                   "are only combined into -o (llama-imatrix's --in-file)")
        ->delimiter(',');
    app.add_flag("--show-statistics", o->show_statistics, "print the statistics of the one --in-file and exit "
                                                          "(as imx stats FILE)");
    app.add_option("--output-frequency", o->output_frequency,
                   "llama-imatrix's -ofreq N: imx keeps an exact checkpoint <output>.ckpt every N chunks instead of "
                   "rewriting the output (same as --save-every N)");
    app.add_option("--save-frequency", o->save_frequency, "accepted for llama-imatrix command lines; imx writes no "
                                                           "copies (its checkpoints resume exactly: --save-every)");
    app.add_flag("--ppl", o->ppl, "accepted for llama-imatrix command lines; imx computes no perplexity (imx eval does)");
    app.add_flag("--no-ppl", o->no_ppl, "accepted for llama-imatrix command lines (imx never computes perplexity)");
    app.add_option("--flash-attn", o->flash_attn, "flash attention: on, off or auto (-fa)")
        ->check(CLI::IsMember({"on", "off", "auto"}));
    app.add_flag_function("--stream,!--no-stream", [o](int64_t n) { o->stream = n > 0 ? 1 : 0; },
                          "block by block: each block run over every chunk, the model read once per run (the default "
                          "when the model is larger than the memory available; qwen3, qwen3moe, deepseek2); "
                          "--no-stream: the whole model per chunk");
    app.add_flag("--json", o->json, "print a JSON summary on stdout");
    app.add_flag("-v,--verbose", c.verbose, "show llama.cpp's log");
    add_format_option(app, o->format);
    return [o] {
        auto & c = o->c;
        if (o->show_statistics) {
            if (o->in_files.size() != 1) {
                throw Error("--show-statistics needs exactly one --in-file (as llama-imatrix)");
            }
            show_statistics(o->in_files[0]);
            return;
        }
        if (c.text_file.empty()) {  // llama-imatrix without a prompt: combine the --in-file matrices only
            if (o->in_files.empty()) {
                throw Error("no calibration text (-f FILE) and no --in-file to combine");
            }
            prepare_outputs({c.output});
            const Imatrix merged = merge_files(o->in_files);
            save_imatrix(merged, c.output, resolve_format(o->format, c.output));
            std::fprintf(stderr, "imx collect: combined %zu files into %s (%zu tensors, %u chunks)\n",
                         o->in_files.size(), c.output.c_str(), merged.tensors.size(), merged.meta.chunk_count);
            return;
        }
        if (c.model.empty()) {
            throw Error("no model given (-m MODEL)");
        }
        if (o->output_frequency > 0 && c.save_every == 0) {
            c.save_every = o->output_frequency;
            std::fprintf(stderr, "imx: note: -ofreq %d: imx writes an exact checkpoint %s every %d chunks instead of "
                                 "rewriting the output (--resume continues from it)\n", o->output_frequency,
                         engine::checkpoint_path(c.output).c_str(), o->output_frequency);
        }
        if (o->save_frequency > 0) {
            std::fprintf(stderr, "imx: note: --save-frequency is ignored: imx writes no copies; its checkpoints "
                                 "(--save-every) resume exactly\n");
        }
        if (o->ppl) {
            std::fprintf(stderr, "imx: note: --ppl is ignored: imx collect computes no perplexity (imx eval does)\n");
        }
        if (!o->flash_attn.empty()) {
            c.flash_attn = o->flash_attn == "on" ? 1 : o->flash_attn == "off" ? 0 : -1;
        }
        // loaded before hours of work: a bad file fails now
        const Imatrix added = o->in_files.empty() ? Imatrix{} : merge_files(o->in_files);
        if ((o->ubatch > 0 && (uint32_t) o->ubatch < c.chunk_size) || (o->batch > 0 && (uint32_t) o->batch < c.chunk_size)) {
            std::fprintf(stderr, "imx: note: -b/-ub smaller than the chunk (%u) are not used: imx computes each chunk "
                                 "in one ubatch, so the result does not depend on them\n", c.chunk_size);
        }
        if (!o->shard.empty()) {
            unsigned i = 0, n = 0;
            char end = 0;
            if (std::sscanf(o->shard.c_str(), "%u/%u%c", &i, &n, &end) != 2 || n < 1 || i < 1 || i > n) {
                throw Error("--shard '" + o->shard + "': expected I/N with 1 <= I <= N, e.g. --shard 2/3");
            }
            if (resolve_format(o->format, c.output) != ImatrixFormat::gguf) {
                throw Error(c.output + ": --shard needs the GGUF format (a part keeps its sums in double, which a "
                            "legacy .dat cannot hold)");
            }
            if (!o->in_files.empty()) {
                throw Error("--shard with --in-file: merge the parts with imx merge instead");
            }
            c.shard = i;
            c.shard_count = n;
        }
        if (!c.covariance_tensors.empty()) {
            if (!o->covariance) {
                throw Error("--covariance-tensors goes with --covariance");
            }
            try {
                std::regex check(c.covariance_tensors);
            } catch (const std::regex_error & e) {
                throw Error("--covariance-tensors '" + c.covariance_tensors + "': bad regular expression (" + e.what() + ")");
            }
        }
        if (c.gate_weights && !o->covariance) {
            throw Error("--gate-weights goes with --covariance (it changes the expert covariances only)");
        }
        if (!c.target_model.empty()) {
            if (!o->covariance) {
                throw Error("--target-model " + c.target_model + " goes with --covariance (it adds to the covariances)");
            }
            if (!std::filesystem::is_regular_file(c.target_model)) {
                throw Error(c.target_model + ": no such model file (--target-model)");
            }
        }
        if (!o->rpc.empty()) {
            c.rpc_servers = engine::parse_rpc_servers(o->rpc);
            if (o->covariance) {
                throw Error("--covariance with --rpc: XᵀX is made on this machine, so every activation would cross "
                            "the network; collect covariances where the model fits, or spread the text with --shard");
            }
        }
        prepare_outputs({c.output, c.save_every > 0 || c.resume ? engine::checkpoint_path(c.output) : ""});
        if (c.all_experts && resolve_format(o->format, c.output) != ImatrixFormat::gguf) {
            throw Error(c.output + ": --all-experts needs the GGUF format (legacy .dat files cannot hold it)");
        }
        if (o->covariance) {
            if (resolve_format(o->format, c.output) != ImatrixFormat::gguf) {
                throw Error(c.output + ": --covariance needs the GGUF format (legacy .dat files cannot hold it)");
            }
            c.covariance_budget = (uint64_t) (o->covariance_mib * 1048576.0);
        }
        if (o->stream < 0) {  // a model larger than memory would be paged through once per chunk
            const uint64_t model_bytes = engine::model_file_bytes(c.model), memory = available_memory();
            o->stream = memory > 0 && model_bytes > memory ? 1 : 0;
            if (o->stream) {
                std::fprintf(stderr, "imx collect: %s (%.1f GiB) is larger than the memory available (%.1f GiB): "
                                     "block by block (--no-stream: the whole model per chunk)\n",
                             c.model.c_str(), model_bytes / 1073741824.0, memory / 1073741824.0);
            }
        }
        c.by_blocks = o->stream == 1;
        // made after the first chunk: model loading and a resumed checkpoint's chunks stay out of the ETA
        std::unique_ptr<Progress> bar;
        const auto on_progress = [&](const engine::CollectProgress & p) {
            if (!bar) {
                bar = std::make_unique<Progress>("imx collect", p.chunks_done);
            }
            const double rate = p.seconds > 0 ? p.chunks_run * (double) c.chunk_size / p.seconds : 0;
            char detail[64];
            if (p.blocks > 0) {  // chunks count each block's pass
                std::snprintf(detail, sizeof detail, "block %d/%d, %.0f tok/s", p.block + 1, p.blocks, rate);
            } else {
                std::snprintf(detail, sizeof detail, "%.0f tok/s", rate);
            }
            bar->update(p.chunks_done, p.chunks_total, "chunk", detail);
        };
        engine::CollectResult r = c.by_blocks ? engine::collect_by_blocks(c, on_progress) : engine::collect(c, on_progress);
        if (!o->in_files.empty()) {  // upstream adds them to what it collected
            add_imatrix(r.imatrix, added, "--in-file");
        }
        save_imatrix(r.imatrix, c.output, resolve_format(o->format, c.output));
        std::filesystem::remove(engine::checkpoint_path(c.output));
        print_summary(r.imatrix, r, c.output);
        if (o->json) {
            print_json(r.imatrix, r, c.output);
        }
    };
}

}  // namespace imx::cli
