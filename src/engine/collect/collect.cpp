#include "engine/collect/collect.h"

#include "engine/collect/activation_collector.h"
#include "engine/collect/calibration.h"
#include "core/format/atomic_file.h"
#include "core/format/checkpoint.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/math/linear_algebra.h"
#include "engine/model/llama_model.h"
#include "engine/collect/rpc_servers.h"
#include "engine/collect/target_inputs.h"
#include "engine/model/tensor_file.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <filesystem>
#include <thread>

namespace imx::engine {

namespace {

// FNV-1a over the token ids of all chunks: the fingerprint notices a different text or tokenizer.
uint64_t hash_chunks(const std::vector<Chunk> & chunks) {
    uint64_t h = 1469598103934665603ull;
    for (const Chunk & c : chunks) {
        for (llama_token t : c) {
            h = (h ^ (uint32_t) t) * 1099511628211ull;
        }
        h = (h ^ 0xffffffffu) * 1099511628211ull;  // chunk boundary
    }
    return h;
}

}  // namespace

std::string collect_fingerprint(const CollectOptions & o, const std::vector<Chunk> & chunks) {
    return std::string(o.by_blocks ? "by_blocks " : "") + "model=" + std::filesystem::absolute(o.model).string() +
           " model_bytes=" + std::to_string(model_file_bytes(o.model)) +
           " chunks=" + std::to_string(chunks.size()) + ":" + std::to_string(hash_chunks(chunks)) +
           " chunk_size=" + std::to_string(o.chunk_size) + " from_chunk=" + std::to_string(o.first_chunk) +
           (o.shard_count ? " shard=" + std::to_string(o.shard) + "/" + std::to_string(o.shard_count) : "") +
           " experts_used=" + std::to_string(o.experts_used) + (o.process_output ? " output" : "") +
           (o.all_experts ? " all_experts" : "") +
           (o.target_model.empty() ? "" : " target=" + std::filesystem::absolute(o.target_model).string()) +
           (o.only_tensors.empty() ? "" : " only_tensors=" + o.only_tensors) +
           (o.covariance_budget ? " covariance_budget=" + std::to_string(o.covariance_budget) +
                                      (o.covariance_blocks ? " blocks" : "") +
                                      (o.covariance_pool_experts ? " pooled" : "") +
                                      (o.gate_weights ? " gates" : "") +
                                      (o.covariance_tensors.empty() ? "" : " only=" + o.covariance_tensors) : "");
}

namespace {

// --target-model must be the model `quantized` was made from: every tensor there, of the same shape.
void check_same_tensors(const std::string & quantized, const std::string & target) {
    const TensorTable q(quantized), t(target);
    for (const std::string & name : q.names()) {
        const ggml_tensor * a = q.find(name);
        const ggml_tensor * b = t.find(name);
        if (!b || !ggml_are_same_shape(a, b)) {
            throw Error(target + ": not the model " + quantized + " was quantized from (tensor " + name + " is " +
                        (b ? "of another shape" : "missing") + ")");
        }
    }
}

// The RPC servers: checked before any work, and a line naming a server that stops answering later, the chunk
// and the checkpoint kept.
std::unique_ptr<RpcFailureReport> watch_rpc_servers(const CollectOptions & o, const std::atomic<uint32_t> & chunk_now,
                                                    const std::atomic<uint32_t> & saved) {
    check_rpc_servers(o.rpc_servers);
    add_rpc_servers(o.rpc_servers);
    if (o.rpc_servers.empty()) {
        return nullptr;
    }
    return std::make_unique<RpcFailureReport>(o.rpc_servers, [&o, &chunk_now, &saved] {
        const std::string ckpt = checkpoint_path(o.output);
        return "at chunk " + std::to_string(chunk_now.load()) + "; " +
               (saved.load() > 0 ? ckpt + " holds " + std::to_string(saved.load()) +
                                       " chunks: the same command with --resume continues once it is back"
                                 : std::string("no checkpoint (--save-every N keeps one)"));
    });
}

// A context of one chunk whose eval callback is `cb`.
ContextPtr chunk_context(llama_model * model, const std::string & path, const CollectOptions & o, int threads,
                         ggml_backend_sched_eval_callback cb, void * data) {
    llama_context_params cp = chunk_context_params(o.chunk_size, threads);
    cp.flash_attn_type = (llama_flash_attn_type) o.flash_attn;
    cp.cb_eval = cb;
    cp.cb_eval_user_data = data;
    ContextPtr ctx(llama_init_from_model(model, cp));
    if (!ctx) {
        throw Error(path + ": could not create a context of " + std::to_string(cp.n_ctx) + " tokens");
    }
    return ctx;
}

// One chunk through a context; libllama's failure as one line naming the file and the chunk.
void decode(llama_context * ctx, const llama_batch & batch, const std::string & path, uint32_t chunk) {
    llama_memory_clear(llama_get_memory(ctx), true);
    if (const int32_t rc = llama_decode(ctx, batch); rc != 0) {
        throw Error(path + ": llama_decode failed (" + std::to_string(rc) + ") at chunk " + std::to_string(chunk));
    }
}

struct BatchFree {
    llama_batch b;
    ~BatchFree() { llama_batch_free(b); }
};

}  // namespace

std::string checkpoint_path(const std::string & output) { return output + ".ckpt"; }

std::vector<Chunk> collect_chunks(const CollectOptions & o, const llama_model * model, uint32_t & first) {
    const CalibrationOptions co{o.text_file, o.chunk_size, o.first_chunk, o.max_chunks, o.parse_special,
                                o.chat || is_chat_file(o.text_file), o.chat_template};
    std::vector<Chunk> chunks = calibration_chunks(co, model);
    first = o.first_chunk;
    if (o.shard_count > 0) {  // part I of N: chunks [⌊(I−1)·n/N⌋, ⌊I·n/N⌋), so the N parts cover all exactly once
        const size_t n = chunks.size();
        const size_t lo = (size_t) (o.shard - 1) * n / o.shard_count, hi = (size_t) o.shard * n / o.shard_count;
        if (lo == hi) {
            throw Error(o.text_file + ": --shard " + std::to_string(o.shard) + "/" + std::to_string(o.shard_count) +
                        " is empty: the text has " + std::to_string(n) + " chunks of " + std::to_string(o.chunk_size) +
                        " tokens to share");
        }
        chunks = std::vector<Chunk>(chunks.begin() + (std::ptrdiff_t) lo, chunks.begin() + (std::ptrdiff_t) hi);
        first += (uint32_t) lo;
    }
    return chunks;
}

ImatrixMeta collect_meta(const CollectOptions & o, uint32_t n_chunks) {
    ImatrixMeta meta{.datasets = {o.text_file}, .chunk_count = n_chunks, .chunk_size = o.chunk_size};
    if (o.covariance_budget > 0) {
        meta.covariance_tensors = o.covariance_tensors;
        meta.experts_gate_weighted = o.gate_weights;
    }
    if (o.shard_count > 0) {
        meta.shard_count = o.shard_count;
        meta.shards = {o.shard};
    }
    return meta;
}

CollectResult collect(const CollectOptions & o, const std::function<void(const CollectProgress &)> & progress) {
    if (o.chunk_size < 16) {
        throw Error("chunk size -c " + std::to_string(o.chunk_size) + " is too small (at least 16 tokens)");
    }
    init_llama(o.verbose);
    std::atomic<uint32_t> chunk_now{0}, saved{0};
    const std::unique_ptr<RpcFailureReport> rpc_report = watch_rpc_servers(o, chunk_now, saved);
    if (!o.target_model.empty() && o.covariance_budget == 0) {
        throw Error("--target-model " + o.target_model + " needs --covariance: it adds to the covariances");
    }
    if (!o.target_model.empty()) {
        check_same_tensors(o.model, o.target_model);  // from the headers, before either model is loaded
    }
    ModelPtr model = load_model(o.model, {o.n_gpu_layers, o.experts_used});
    ModelPtr target_model = o.target_model.empty() ? nullptr : load_model(o.target_model, {o.n_gpu_layers, o.experts_used});
    uint32_t first = 0;  // the text's number of chunks[0]
    const std::vector<Chunk> chunks = collect_chunks(o, model.get(), first);
    const uint32_t n_chunks = (uint32_t) chunks.size();

    const int threads = o.threads > 0 ? o.threads : (int) std::max(1u, std::thread::hardware_concurrency());
    set_linear_algebra_threads(threads);  // covariance products
    ActivationCollector::weight_experts_by_gates(o.gate_weights);
    ActivationCollector collector(o.chunk_size, o.device_sums, o.host_sums, threads, o.covariance_budget,
                                  o.covariance_blocks, o.covariance_pool_experts);
    collector.collect_output_head(o.process_output);
    collector.collect_all_experts(o.all_experts);
    collector.covariance_tensors(o.covariance_tensors);
    collector.only_tensors(o.only_tensors);
    CollectResult result;
    const std::string fp = collect_fingerprint(o, chunks);
    const std::string ckpt = checkpoint_path(o.output);
    uint32_t next = 0;
    if (o.resume && std::filesystem::exists(ckpt)) {
        Checkpoint c = load_checkpoint(ckpt);
        if (c.fingerprint != fp) {
            throw Error(ckpt + ": made by a different run (" + c.fingerprint + "), not this one (" + fp + ")");
        }
        next = c.next_chunk;
        saved = next;
        collector.data() = std::move(c.data);
        result.chunks_resumed = next;
    }
    const ContextPtr ctx = chunk_context(model.get(), o.model, o, threads, ActivationCollector::eval_callback, &collector);
    // --target-model: each chunk goes through the target first, its matmul inputs kept for the cross terms
    TargetInputs target;
    target.record_output_head(o.process_output);
    target.only(o.only_tensors);
    ContextPtr target_ctx;
    if (target_model) {
        target_ctx = chunk_context(target_model.get(), o.target_model, o, threads, TargetInputs::eval_callback, &target);
        collector.cross_with(&target);
    }

    const BatchFree batch{llama_batch_init((int32_t) o.chunk_size, 0, 1)};
    const auto t0 = std::chrono::steady_clock::now();
    uint32_t last_checkpoint = next;
    auto save = [&](uint32_t done) {
        Checkpoint c{fp, done, collector.data()};
        c.data.meta = {.datasets = {o.text_file}, .chunk_count = done, .chunk_size = o.chunk_size};
        save_checkpoint(c, ckpt);
        last_checkpoint = done;
        saved = done;
    };
    // Ctrl-C / SIGTERM between chunks: keep what was done (a checkpoint when one was asked for), then stop.
    const DeferInterrupts defer;
    for (uint32_t i = next; i < n_chunks; ++i) {
        chunk_now = first + i;
        if (const int sig = interrupted()) {
            std::string what = "interrupted (signal " + std::to_string(sig) + ") after " + std::to_string(i) + " of " +
                               std::to_string(n_chunks) + " chunks";
            if (o.save_every > 0 && i > last_checkpoint) {
                save(i);
            }
            what += o.save_every > 0 && last_checkpoint > 0
                        ? "; " + ckpt + " holds " + std::to_string(last_checkpoint) + " chunks, --resume continues"
                        : "; nothing saved (--save-every N keeps a checkpoint)";
            throw Interrupted(sig, what);
        }
        // every token is an output: otherwise llama.cpp skips the last layer's FFN for all others,
        // and their activations would be missing from that layer's sums
        llama_batch b = batch.b;
        fill_batch(b, chunks[i], 0);
        if (target_ctx) {
            target.begin_chunk();
            decode(target_ctx.get(), b, o.target_model, first + i);
        }
        collector.begin_chunk(first + i);
        try {
            decode(ctx.get(), b, o.model, first + i);
        } catch (const Error &) {
            if (collector.error().empty()) {
                throw;
            }
        }
        if (!collector.error().empty()) {
            throw Error(o.model + ": " + collector.error());
        }
        const uint32_t done = i + 1;
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (o.save_every > 0 && done < n_chunks && done - last_checkpoint >= (uint32_t) o.save_every) {
            save(done);
        }
        progress({done, n_chunks, secs, done - result.chunks_resumed});
    }

    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (uint32_t i = result.chunks_resumed; i < n_chunks; ++i) {
        result.tokens += (int64_t) chunks[i].size();
    }
    result.device_input_bytes = collector.traffic().device_inputs;
    result.read_back_bytes = collector.traffic().read_back;
    result.imatrix = std::move(collector.data());
    result.imatrix.meta = collect_meta(o, n_chunks);
    return result;
}

}  // namespace imx::engine
