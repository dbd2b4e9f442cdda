#include "engine/collect/device_sums.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"

#include <stdexcept>

namespace imx::engine {

bool DeviceSums::dense(const ggml_tensor * x, std::vector<float> & out) {
    if (x->ne[3] != 1) {
        return false;
    }
    ggml_backend * b = pool_.backend_for(x);
    GraphContext g;
    ggml_tensor * in = alias(g.ctx, x);
    ggml_tensor * sq = ggml_sqr(g.ctx, ggml_is_contiguous(in) ? in : ggml_cont(g.ctx, in));
    // [cols, tokens, heads] → [tokens, cols, heads], then sum each row: Σ_t x² per column and head
    ggml_tensor * s = ggml_sum_rows(g.ctx, ggml_cont(g.ctx, ggml_permute(g.ctx, sq, 1, 0, 2, 3)));
    ggml_cgraph * gf = ggml_new_graph_custom(g.ctx, 16, false);
    ggml_build_forward_expand(gf, s);
    if (!ggml_gallocr_alloc_graph(pool_.allocator(b), gf) || ggml_backend_graph_compute(b, gf) != GGML_STATUS_SUCCESS) {
        throw std::runtime_error("device sums: graph failed");
    }
    out.resize(ggml_nelements(s));
    ggml_backend_tensor_get(s, out.data(), 0, out.size() * sizeof(float));
    return true;
}

bool DeviceSums::experts(const ggml_tensor * x, const std::vector<int32_t> & ids, int64_t n_used, int64_t n_expert,
                         std::vector<float> & out) {
    const int64_t cols = x->ne[0], slots = x->ne[1], tokens = x->ne[2];
    if (x->ne[3] != 1 || (slots != 1 && slots != n_used)) {
        return false;
    }
    // input rows (row = slot + slots·token) grouped by expert, in token order within each expert
    std::vector<std::vector<int32_t>> rows_of(n_expert);
    for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t k = 0; k < n_used; ++k) {
            const int32_t e = ids[t * n_used + k];
            if (e >= 0 && e < n_expert) {
                rows_of[e].push_back((int32_t) ((k % slots) + slots * t));
            }
        }
    }
    std::vector<int32_t> order;
    std::vector<int64_t> start(n_expert + 1, 0);
    for (int64_t e = 0; e < n_expert; ++e) {
        order.insert(order.end(), rows_of[e].begin(), rows_of[e].end());
        start[e + 1] = (int64_t) order.size();
    }
    out.assign(cols * n_expert, 0.0f);
    if (order.empty()) {
        return true;
    }
    ggml_backend * b = pool_.backend_for(x);
    GraphContext g(8 + 2 * n_expert);
    ggml_tensor * in = alias(g.ctx, x);
    ggml_tensor * idx = ggml_new_tensor_1d(g.ctx, GGML_TYPE_I32, (int64_t) order.size());
    ggml_set_input(idx);
    ggml_tensor * sq = ggml_sqr(g.ctx, ggml_is_contiguous(in) ? in : ggml_cont(g.ctx, in));
    // gather the rows expert by expert, turn them into columns, and sum each expert's segment: plain F32
    // reductions (a 0/1 routing matrix through mul_mat would take the GPU's TF32 tensor-core path: 5e-4 off)
    ggml_tensor * grouped = ggml_get_rows(g.ctx, ggml_reshape_2d(g.ctx, sq, cols, slots * tokens), idx);
    ggml_tensor * by_col = ggml_cont(g.ctx, ggml_transpose(g.ctx, grouped));  // [n_routed, cols]
    std::vector<ggml_tensor *> sums(n_expert, nullptr);
    ggml_cgraph * gf = ggml_new_graph_custom(g.ctx, 8 + 2 * n_expert, false);
    for (int64_t e = 0; e < n_expert; ++e) {
        const int64_t n = start[e + 1] - start[e];
        if (n == 0) {
            continue;
        }
        ggml_tensor * seg = ggml_view_2d(g.ctx, by_col, n, cols, by_col->nb[1], start[e] * sizeof(float));
        sums[e] = ggml_sum_rows(g.ctx, seg);  // [1, cols]
        ggml_build_forward_expand(gf, sums[e]);
    }
    if (!ggml_gallocr_alloc_graph(pool_.allocator(b), gf)) {
        throw std::runtime_error("device sums: allocation failed");
    }
    ggml_backend_tensor_set(idx, order.data(), 0, order.size() * sizeof(int32_t));
    if (ggml_backend_graph_compute(b, gf) != GGML_STATUS_SUCCESS) {
        throw std::runtime_error("device sums: graph failed");
    }
    for (int64_t e = 0; e < n_expert; ++e) {
        if (sums[e]) {
            ggml_backend_tensor_get(sums[e], out.data() + e * cols, 0, cols * sizeof(float));
        }
    }
    return true;
}

}  // namespace imx::engine
