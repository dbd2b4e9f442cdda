#include "engine/collect/stream_collect.h"

#include "core/error.h"
#include "core/format/atomic_file.h"
#include "core/format/checkpoint.h"
#include "core/interrupt.h"
#include "core/math/linear_algebra.h"
#include "engine/collect/activation_collector.h"
#include "engine/collect/calibration.h"
#include "engine/model/llama_model.h"
#include "engine/stream/block_model.h"
#include "engine/stream/block_runner.h"
#include "engine/stream/head_statistics.h"
#include "engine/stream/hidden_stream.h"
#include "engine/stream/token_embeddings.h"

#include <chrono>
#include <filesystem>
#include <regex>
#include <thread>

namespace imx::engine {

namespace fs = std::filesystem;

namespace {

// Options that need the whole model in one pass (or were not checked on this path): one line each.
void refuse_whole_model_options(const CollectOptions & o) {
    auto no = [](bool given, const std::string & flag, const std::string & why) {
        if (given) {
            throw Error(flag + " does not go with a block-by-block run (" + why + ")");
        }
    };
    no(!o.rpc_servers.empty(), "--rpc", "layers on rpc-server machines run the whole model per chunk");
    no(!o.target_model.empty(), "--target-model", "use imx quantize --sequential, which runs both models by blocks");
    no(o.all_experts, "--all-experts", "not written for it yet");
    no(!o.only_tensors.empty(), "only_tensors", "internal");
    no(o.device_sums || o.host_sums, "--device-sums/--host-sums", "test switches of the whole-model path");
}

}  // namespace

CollectResult collect_by_blocks(const CollectOptions & o, const std::function<void(const CollectProgress &)> & progress) {
    refuse_whole_model_options(o);
    ActivationCollector::weight_experts_by_gates(o.gate_weights);
    if (o.chunk_size < 16) {
        throw Error("chunk size -c " + std::to_string(o.chunk_size) + " is too small (at least 16 tokens)");
    }
    init_llama(o.verbose);
    const TensorTable table(o.model);
    check_block_streaming(table);
    TensorIo io(table, false);
    const int blocks = block_count(table);
    const size_t n_embd = (size_t) embedding_length(table);

    uint32_t first = 0;
    std::vector<Chunk> chunks;
    {
        ModelPtr vocab = load_vocab_only(o.model);
        chunks = collect_chunks(o, vocab.get(), first);
    }
    const uint32_t n_chunks = (uint32_t) chunks.size();
    std::vector<size_t> tokens;
    for (const Chunk & c : chunks) {
        tokens.push_back(c.size());
    }
    const int threads = o.threads > 0 ? o.threads : (int) std::max(1u, std::thread::hardware_concurrency());
    set_linear_algebra_threads(threads);

    const std::string fp = collect_fingerprint(o, chunks);
    const std::string ckpt = checkpoint_path(o.output);
    // checkpoints after every block; --resume alone keeps them too (as quantize does), so that a run resumed once
    // can be resumed again
    const bool keep = o.save_every > 0 || o.resume;
    // the run's own files (removed at the end, on an error or a signal); a checkpoint's hidden states are kept
    const std::string base = temporary_path(o.output);
    HiddenStream hidden((keep ? ckpt : base) + ".hidden", keep, tokens, n_embd);
    CollectResult result;
    Imatrix total;
    int start = 0;
    if (o.resume && fs::exists(ckpt)) {
        Checkpoint c = load_checkpoint(ckpt);
        if (c.fingerprint != fp) {
            throw Error(ckpt + ": made by a different run (" + c.fingerprint + "), not this one (" + fp + ")");
        }
        start = (int) c.next_chunk;  // a block-by-block checkpoint counts blocks
        total = std::move(c.data);
        hidden.resume(start);
    } else {
        embed_chunks(table, io, chunks, nullptr, hidden.begin());
    }
    const ScratchFile block_file(base + ".block.gguf");
    uint64_t budget_left = o.covariance_budget;
    for (const Covariance & c : total.covariances) {
        budget_left -= std::min(budget_left, covariance_bytes(c.n_cols, c.block, c.n_mat));
    }

    const auto t0 = std::chrono::steady_clock::now();
    const DeferInterrupts defer;
    std::vector<float> h_in, h_out;
    uint32_t run = 0;
    for (int b = start; b < blocks; ++b) {
        const HiddenStates & in = hidden.input();
        HiddenStates & out = hidden.output();
        write_block_model(table, io, b, {}, block_file.path());
        ActivationCollector collector(o.chunk_size, false, false, threads, budget_left, o.covariance_blocks,
                                      o.covariance_pool_experts);
        collector.stop_after_last_weight(false);
        collector.covariance_tensors(o.covariance_tensors);
        BlockRunner runner(block_file.path(), o.chunk_size, threads, o.n_gpu_layers, ActivationCollector::eval_callback,
                           &collector);
        for (uint32_t c = 0; c < n_chunks; ++c) {
            if (const int sig = interrupted()) {
                throw Interrupted(sig, "interrupted (signal " + std::to_string(sig) + ") in block " + std::to_string(b) +
                                           " of " + std::to_string(blocks) +
                                           (keep && b > 0 ? "; " + ckpt + " holds blocks 0-" + std::to_string(b - 1) +
                                                                ", --resume continues"
                                                          : "; nothing saved (--save-every N keeps a checkpoint per block)"));
            }
            in.read(c, h_in);
            collector.begin_chunk(first + c);
            const bool ok = runner.run(h_in, h_out, first + c);
            if (!collector.error().empty() || !ok) {
                throw Error(o.model + ": " + (collector.error().empty() ? "the block's pass stopped" : collector.error()) +
                            " (block " + std::to_string(b) + ")");
            }
            out.write(c, h_out.data());
            run += 1;
            const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            progress({(uint32_t) (b * n_chunks + c + 1), (uint32_t) (blocks * n_chunks), secs, run, b, blocks});
        }
        Imatrix block;
        add_block(block, std::move(collector.data()), b);  // blk.0 of the one-block model is block b
        if (o.on_block) {
            o.on_block(b, block);
        }
        for (const Covariance & c : block.covariances) {
            budget_left -= std::min(budget_left, covariance_bytes(c.n_cols, c.block, c.n_mat));
        }
        add_block(total, std::move(block), 0);  // named already: the renaming of blk.0 is the identity
        if (keep) {
            hidden.keep_output();
            Checkpoint c{fp, (uint32_t) (b + 1), total};
            c.data.meta = collect_meta(o, n_chunks);
            save_checkpoint(c, ckpt);
        }
        hidden.advance();
    }
    if (o.process_output && (has_output_head(table) || o.tied_head)) {  // the head reads the last block's output
        const int64_t n = (int64_t) n_embd;
        const bool wanted = o.covariance_tensors.empty() || std::regex_search(head_weight(table), std::regex(o.covariance_tensors));
        const int64_t block = wanted ? choose_covariance_block(n, 1, budget_left, o.covariance_blocks) : 0;
        add_block(total, head_statistics(table, io, hidden.input(), block), 0);  // no blk.* name: kept as it is
    }
    hidden.finish();
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (const Chunk & c : chunks) {
        result.tokens += (int64_t) c.size();
    }
    result.imatrix = std::move(total);
    result.imatrix.meta = collect_meta(o, n_chunks);
    return result;
}

}  // namespace imx::engine
