// One block run alone over calibration chunks: a block model (block_model.h) loaded by libllama with a context
// of one chunk, fed a chunk's hidden states through llama_batch.embd, its output read back from the graph node
// "l_out-0" (the residual stream after the block) — where the computation stops: the output head that follows
// is never run. Every token is an output, as in collect, so that the block computes its FFN for all of them.
//
// An inner eval callback (the activation collector, a target model's recorder) sees the block's matmuls on the
// way, with their names as in the block model (blk.0.*).
#pragma once

#include "engine/model/llama_model.h"
#include "engine/stream/block_model.h"

#include "ggml-backend.h"

#include <cstdint>
#include <string>
#include <vector>

namespace imx::engine {

// The graph node of a block model's output (llama.cpp's "l_out" of block 0): where a run stops.
inline constexpr const char * kBlockOutputNode = "l_out-0";

class BlockRunner {
public:
    BlockRunner(const std::string & block_file, uint32_t chunk_tokens, int threads, int n_gpu_layers,
                ggml_backend_sched_eval_callback inner = nullptr, void * inner_data = nullptr);
    ~BlockRunner();
    BlockRunner(const BlockRunner &) = delete;
    BlockRunner & operator=(const BlockRunner &) = delete;

    // One chunk: `in` holds tokens × n_embd floats; `out` gets the block's output of the same shape. False when
    // the inner callback stopped the graph (its own error says why); throws imx::Error naming the block file
    // and the chunk when libllama fails.
    bool run(const std::vector<float> & in, std::vector<float> & out, uint32_t chunk);
    int64_t n_embd() const { return n_embd_; }
    // The callback that sees the next runs' matmuls (one runner serves two streams in turn).
    void set_inner(ggml_backend_sched_eval_callback inner, void * inner_data) {
        inner_ = inner;
        inner_data_ = inner_data;
    }

private:
    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);

    std::string                      path_;
    ModelPtr                         model_;
    ContextPtr                       ctx_;
    llama_batch                      batch_{};
    uint32_t                         tokens_ = 0;
    int64_t                          n_embd_ = 0;
    ggml_backend_sched_eval_callback inner_ = nullptr;
    void *                           inner_data_ = nullptr;
    std::vector<float> *             out_ = nullptr;  // where this chunk's l_out-0 goes
    bool                             got_out_ = false;
    bool                             inner_stopped_ = false;
};

// The block weights a runner with this offload is fastest on: F16 where the block stays on the CPU (no GPU
// device, or n_gpu_layers 0; block_model.h says why), else the types as given.
BlockWeights fastest_block_weights(int n_gpu_layers);

// Several eval callbacks on one graph (the float stream's imatrix sums and its inputs for the cross terms): each
// is called for the nodes it asked for, and the graph stops where one of them stops it.
class EvalChain {
public:
    void add(ggml_backend_sched_eval_callback cb, void * data) { links_.push_back({cb, data}); }
    static bool callback(ggml_tensor * t, bool ask, void * user_data);

private:
    struct Link {
        ggml_backend_sched_eval_callback cb;
        void *                           data;
    };
    std::vector<Link>  links_;
    const ggml_tensor * asked_node_ = nullptr;  // the node of the last ask, and who wanted it
    std::vector<bool>  wanted_;
};

}  // namespace imx::engine
