// Σx² over tokens, computed by small ggml graphs on the backend that holds the activations.
//
// On a GPU, upstream copies every matmul input to the host and sums it there. Here the input never leaves the
// device: for a weight's input x ([cols, tokens, heads] or, for experts, [cols, slots, tokens]) we run
//   dense:   s = sum_rows(cont(permute(sqr(x))))             → [cols, heads]: Σ_t x², per head
//   experts: g = cont(transpose(get_rows(sqr(x), rows sorted by expert)));  s_e = sum_rows(g[segment e])
// where the row order (row = slot + slots·token) comes from the expert ids, which are small and copied to the
// host. Only s comes back (cols × n_expert floats), and the host adds it, widened to double, to the
// accumulators. The partial sum over one ubatch is F32 on the device, so results equal the host
// path within ~1e-6 relative, not bit for bit.
//
// The same code runs on the CPU backend (imx collect --device-sums), which is how CI tests this path.
#pragma once

#include "engine/model/backend_pool.h"

#include <cstdint>
#include <vector>

struct ggml_tensor;

namespace imx::engine {

class DeviceSums {
public:
    explicit DeviceSums(BackendPool & pool) : pool_(pool) {}

    // Σ over rows of x² per column and slice: returns cols × ne2 values (slice-major). False: not supported
    // (4-D input), the caller falls back to the host path.
    bool dense(const ggml_tensor * x, std::vector<float> & out);
    // Σ over the tokens routed to each expert: cols × n_expert values (expert-major). `ids` on the host,
    // [n_tokens][n_used] as in the graph's ids tensor.
    bool experts(const ggml_tensor * x, const std::vector<int32_t> & ids, int64_t n_used, int64_t n_expert,
                 std::vector<float> & out);

private:
    BackendPool & pool_;
};

}  // namespace imx::engine
