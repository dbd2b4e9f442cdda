// The ggml backends imx computes its own small graphs on, beside llama.cpp's: one per device that holds the
// tensors they read (host memory: the CPU backend), each with a graph allocator, opened on first use.
// DeviceSums (Σx² where the activations are) and AllExpertsPass (every expert's FFN on the side) share them.
#pragma once

#include <cstddef>
#include <map>

struct ggml_tensor;
struct ggml_backend;
struct ggml_gallocr;
struct ggml_context;

namespace imx::engine {

class BackendPool {
public:
    explicit BackendPool(int cpu_threads) : cpu_threads_(cpu_threads) {}
    ~BackendPool();
    BackendPool(const BackendPool &) = delete;
    BackendPool & operator=(const BackendPool &) = delete;

    // The backend of the device whose memory holds t's data (the CPU backend for host memory).
    ggml_backend * backend_for(const ggml_tensor * t);
    ggml_gallocr * allocator(ggml_backend * b) { return allocators_.at(b); }

private:
    int                                      cpu_threads_;
    std::map<const void *, ggml_backend *>   backends_;  // per device
    std::map<ggml_backend *, ggml_gallocr *> allocators_;
};

// A context for one graph's tensor metadata (no data: that lives in backend buffers).
struct GraphContext {
    ggml_context * ctx;
    explicit GraphContext(size_t n_nodes = 16);
    ~GraphContext();
    GraphContext(const GraphContext &) = delete;
    GraphContext & operator=(const GraphContext &) = delete;
};

// A tensor of our graph that reads t's data where it lies (no copy): activations of llama.cpp's graph, or
// model weights.
ggml_tensor * alias(ggml_context * ctx, const ggml_tensor * t);

}  // namespace imx::engine
