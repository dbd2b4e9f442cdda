// collect --all-experts: the inputs every expert would have had if every token were routed to it, computed
// beside the model's forward pass, whose own top-k routing, outputs and routed sums stay as they are.
//
// gate and up read the layer's input x whatever the expert: their statistic is Σ_t x² over all tokens, one row
// for every expert. down reads h_e = act(gate_e·x, up_e·x), which the model computes only for the experts its
// router picked. When the collector reaches a layer's down matmul, the graph of its input — the activation,
// back to the gate/up MUL_MAT_IDs — is rebuilt in a small graph of our own with the routing replaced by
// "every expert", run on the backend that holds the weights (llama.cpp's kernels), and Σ_t h_e² per column
// comes back. The layer's input was copied when gate/up read it: by the time down runs, its memory may hold
// something else.
//
// Cost: the gate/up products of n_expert / n_used times the tokens, plus the activation; memory: the
// intermediates of one group of experts at a time (kGroupBytes).
#pragma once

#include "engine/model/backend_pool.h"

#include <cstdint>
#include <vector>

struct ggml_tensor;
struct ggml_context;

namespace imx::engine {

class AllExpertsPass {
public:
    explicit AllExpertsPass(BackendPool & pool) : pool_(pool) {}

    // The input of an expert layer's gate/up (t: their MUL_MAT_ID; host_data: its src[1] in host memory).
    // Throws imx::Error when the experts do not share one input (a model that scales it per expert).
    void keep_input(const ggml_tensor * t, const char * host_data);
    // Σ_t x² per column of the kept input: gate's and up's one row.
    const std::vector<double> & input_sums() const { return input_sums_; }
    int64_t tokens() const { return tokens_; }
    // Σ_t h_e² for every expert e and column of down's input (down: its MUL_MAT_ID), expert-major
    // (n_expert × n_ff). Throws imx::Error naming the operation when the input's graph holds one we do not
    // rebuild, or when it does not lead back to the kept input.
    void down_sums(const ggml_tensor * down, std::vector<double> & out);

private:
    struct Replay;
    // The node for every expert of the group, built once per graph (replay) by rebuild.
    ggml_tensor * replay(const ggml_tensor * node, Replay & r);
    ggml_tensor * rebuild(const ggml_tensor * node, Replay & r);

    BackendPool &       pool_;
    const ggml_tensor * input_ = nullptr;  // the graph's tensor the copy was taken from
    std::vector<float>  x_;                // [tokens][n_cols]
    int64_t             n_cols_ = 0;
    int64_t             tokens_ = 0;
    std::vector<double> input_sums_;
};

}  // namespace imx::engine
