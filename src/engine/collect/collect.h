// imx collect: run a model over calibration text and accumulate its importance matrix.
//
// The text is tokenized once (with BOS, as upstream) and cut into chunks of `chunk_size` tokens; each chunk
// is an independent sequence whose first token is replaced by BOS where the vocabulary uses one. Every chunk
// is computed alone, as one batch and one ubatch in a context of its own size: the forward pass, and hence
// the sums, cannot depend on -b or -ub, and attention never spans the cells of other chunks (a unified KV
// cache of several chunks made upstream-style batching 1.2x slower here, measured). Checkpoints are taken
// between chunks.
#pragma once

#include "core/imatrix.h"

#include "llama.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace imx::engine {

struct CollectOptions {
    std::string model;
    std::string text_file;
    std::string output;           // the checkpoint goes beside it: <output>.ckpt
    uint32_t    chunk_size = 512;  // -c
    int         threads = 0;       // 0: all cores
    int         n_gpu_layers = 99;
    int         max_chunks = -1;   // --chunks
    uint32_t    first_chunk = 0;   // --from-chunk: skip the text's first N chunks
    uint32_t    shard = 0;         // --shard I/N: part I (1-based) of N contiguous parts of the chunks above
    uint32_t    shard_count = 0;
    int         experts_used = 0;  // --experts-used
    int         save_every = 0;    // checkpoint every N chunks (0: never)
    bool        resume = false;
    bool        parse_special = false;
    bool        chat = false;          // the file is chat JSONL (default: when it ends in .jsonl)
    std::string chat_template;         // for chat: a built-in template name; empty: the model's own
    bool        verbose = false;
    bool        device_sums = false;   // compute Σx² with ggml ops even for host activations (tests that path)
    bool        host_sums = false;     // copy GPU activations to the host and sum there (upstream's way)
    uint64_t    covariance_budget = 0; // --covariance: bytes of XᵀX to keep (0: none), see ActivationCollector
    bool        covariance_blocks = false;  // --covariance-blocks: 256-column blocks wherever possible
    bool        covariance_pool_experts = false;  // --covariance-pooled-experts: one XᵀX per expert input
    std::string covariance_tensors;       // --covariance-tensors: only inputs whose first reader matches
    bool        gate_weights = false;     // --gate-weights: expert covariances weighted by the router (ActivationCollector)
    bool        all_experts = false;      // --all-experts: every expert's inputs over all tokens too (AllExpertsPass)
    bool        process_output = false;   // --process-output: also the output head (output.weight), as upstream
    // by blocks, with process_output: a head tied to token_embd too, under token_embd.weight (for quantize's
    // re-encoding of it; upstream collects nothing for a tied head, and neither does `collect`)
    bool        tied_head = false;
    int         flash_attn = -1;          // -fa: -1 auto, 0 off, 1 on (llama.cpp's llama_flash_attn_type)
    std::vector<std::string> rpc_servers;  // --rpc: HOST:PORT of rpc-server processes that take layers (-ngl)
    // --target-model: the unquantized model that `model` (a quantization of it) should reproduce; each whole
    // covariance then also gets X̃ᵀX against the target's inputs (core/covariance.h, sequential quantization).
    std::string target_model;
    std::string only_tensors;  // collect only weights matching this regex (sums too); the pass ends after them
    // block by block (engine/collect/stream_collect.h) instead of the whole model per chunk
    bool        by_blocks = false;
    // block by block: called with each block's statistics once every chunk has passed it, before they join the
    // run's; it may take the covariances (the type search measures the block's errors with them and frees them,
    // so that one block's are held at a time). Not given to checkpoints' callers: internal.
    std::function<void(int block, Imatrix & stats)> on_block;
};

struct CollectProgress {
    uint32_t chunks_done;
    uint32_t chunks_total;
    double   seconds;    // since the first chunk of this run (not counting resumed ones)
    uint32_t chunks_run; // chunks computed by this run
    // block by block (engine/stream): the block in hand and the model's blocks; chunks count every block's pass
    int      block = -1;
    int      blocks = 0;
};

struct CollectResult {
    Imatrix  imatrix;
    uint32_t chunks_resumed = 0;
    double   seconds = 0;
    int64_t  tokens = 0;
    uint64_t device_input_bytes = 0;  // matmul inputs that lived on a device or an RPC server
    uint64_t read_back_bytes = 0;     // what came back from there (sums, or inputs copied)
};

// Throws imx::Error (naming the file, tensor or chunk) on bad input or a non-finite activation; the last
// checkpoint stays on disk then.
CollectResult collect(const CollectOptions & o, const std::function<void(const CollectProgress &)> & progress);

std::string checkpoint_path(const std::string & output);

// What collect and its block-by-block form share: the text's chunks of this run (its shard; `first` gets the
// text's number of the first), the fingerprint a checkpoint is checked against, the output's metadata.
std::vector<std::vector<int32_t>> collect_chunks(const CollectOptions & o, const llama_model * model,
                                                 uint32_t & first);
std::string collect_fingerprint(const CollectOptions & o, const std::vector<std::vector<int32_t>> & chunks);
ImatrixMeta collect_meta(const CollectOptions & o, uint32_t n_chunks);

}  // namespace imx::engine
