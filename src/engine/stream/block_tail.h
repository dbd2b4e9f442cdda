// The end of a dense block: its output is its residual plus one matmul, l_out = R + W·X (Qwen3's and DeepSeek's
// dense FFN: ffn_down added to the residual after attention). Where a block's graph ends so, --sequential's last
// pass over the quantized stream needs no run of the whole block: the run of the last stage (W's) computes X
// and R before it stops where X is made, the tail recorder keeps them chunk by chunk, and once W is encoded the
// output is R + W̃·X computed by ggml's own operations on the CPU, on the same operands as the block's graph —
// the same bytes as a run of the block (tests: BlockTail.*), for a quarter of its work.
//
// Nothing here knows an architecture: the shape is read from the float block's graph (ggml's scheduler asks
// about every node: l_out-0 an ADD of a MUL_MAT by a block weight and another node), and where it differs —
// experts, a norm after the FFN, a bias — the block is run as before.
#pragma once

#include "engine/stream/block_model.h"

#include <memory>
#include <string>
#include <vector>

struct ggml_tensor;

namespace imx::engine {

struct BlockTail {
    std::string weight;    // W as the block model names it (blk.0.ffn_down.weight); empty: no such tail
    std::string input;     // the node X (W's input) by name
    std::string residual;  // the node R
    int64_t     input_width = 0, width = 0;  // X's and R's values a token
};

// Learns the tail from a block's graph: the ggml_backend_sched_eval_callback (user_data: the finder) sees the
// first graph's nodes as ggml's scheduler asks about them and never asks for data.
class BlockTailFinder {
public:
    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);
    const BlockTail & tail() const { return tail_; }

private:
    bool      seen_output_ = false;
    BlockTail tail_;
};

// Keeps X and R of every chunk while a run over the quantized stream computes them (the eval callback asks for
// those two nodes), in scratch files beside `scratch` (removed with the recorder, or on a signal).
class TailRecorder {
public:
    TailRecorder(const BlockTail & tail, const std::string & scratch, const std::vector<size_t> & tokens);
    ~TailRecorder();
    TailRecorder(const TailRecorder &) = delete;
    TailRecorder & operator=(const TailRecorder &) = delete;

    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);
    void begin_chunk(size_t chunk);
    // Both nodes of this chunk recorded (else a run did not compute them: the block has to be run).
    bool complete() const { return complete_ && got_ == 3; }
    const BlockTail & tail() const { return tail_; }

    // The block's output over chunk c: R + w·X with ggml on `threads` CPU threads, into `out`.
    void output(size_t chunk, const TensorBytes & w, int threads, std::vector<float> & out) const;

private:
    struct Files;
    BlockTail                tail_;
    std::vector<size_t>      tokens_;
    std::unique_ptr<Files>   files_;
    size_t                   chunk_ = 0;
    int                      got_ = 0;  // of this chunk: 1 input, 2 residual
    bool                     complete_ = true;
};

}  // namespace imx::engine
