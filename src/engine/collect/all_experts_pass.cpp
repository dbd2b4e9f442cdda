#include "engine/collect/all_experts_pass.h"

#include "core/error.h"
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <string>

namespace imx::engine {

namespace {

// Intermediates of one group of experts (gate, up, activation, squares and their transpose: about 5 tensors
// of n_ff × group × tokens floats) stay below this.
constexpr int64_t kGroupBytes = int64_t{512} << 20;

}  // namespace

// What the rebuilt nodes read: our copy of the input and the routing "every expert of the group".
struct AllExpertsPass::Replay {
    ggml_context *      ctx;
    ggml_tensor *       x;    // [n_cols, 1, tokens]
    ggml_tensor *       ids;  // [group, tokens]
    const ggml_tensor * down;
    std::map<const ggml_tensor *, ggml_tensor *> rebuilt;  // once each: a merged gate_up feeds two views
};

ggml_tensor * AllExpertsPass::replay(const ggml_tensor * node, Replay & r) {
    auto it = r.rebuilt.find(node);
    if (it == r.rebuilt.end()) {
        it = r.rebuilt.emplace(node, rebuild(node, r)).first;
    }
    return it->second;
}

void AllExpertsPass::keep_input(const ggml_tensor * t, const char * host_data) {
    const ggml_tensor * x = t->src[1];  // [n_cols, 1 or n_used, tokens]
    if (x->ne[1] != 1 || x->ne[3] != 1) {
        throw Error(std::string("--all-experts: the experts of ") + t->src[0]->name +
                    " do not share one input (this model scales it per expert)");
    }
    input_ = x;
    n_cols_ = x->ne[0];
    tokens_ = x->ne[2];
    x_.resize(n_cols_ * tokens_);
    input_sums_.assign(n_cols_, 0.0);
    for (int64_t tok = 0; tok < tokens_; ++tok) {
        const float * row = (const float *) (host_data + tok * x->nb[2]);
        std::copy_n(row, n_cols_, x_.data() + tok * n_cols_);
        for (int64_t j = 0; j < n_cols_; ++j) {
            input_sums_[j] += (double) row[j] * row[j];
        }
    }
}

// The node again, computed for every expert of the group instead of the routed ones. Elementwise steps keep
// their parameters (op_params copied whole: the GLU's swap flag and limits, clamp bounds, scale).
ggml_tensor * AllExpertsPass::rebuild(const ggml_tensor * node, Replay & r) {
    ggml_context * ctx = r.ctx;
    ggml_tensor * out = nullptr;
    switch (node->op) {
        case GGML_OP_MUL_MAT_ID:
            if (node->src[1] != input_) {
                throw Error(std::string("--all-experts: the input of ") + r.down->src[0]->name +
                            " does not come from the layer's gate/up input");
            }
            return ggml_mul_mat_id(ctx, alias(ctx, node->src[0]), r.x, r.ids);
        case GGML_OP_ADD_ID:  // per-expert biases
            return ggml_add_id(ctx, replay(node->src[0], r), alias(ctx, node->src[1]), r.ids);
        case GGML_OP_GLU: {
            ggml_tensor * a = replay(node->src[0], r);
            out = node->src[1] ? ggml_glu_split(ctx, a, replay(node->src[1], r), ggml_get_glu_op(node))
                               : ggml_glu(ctx, a, ggml_get_glu_op(node), false);
            break;
        }
        case GGML_OP_UNARY:
            return ggml_unary(ctx, replay(node->src[0], r), ggml_get_unary_op(node));
        case GGML_OP_MUL:
            return ggml_mul(ctx, replay(node->src[0], r), replay(node->src[1], r));
        case GGML_OP_SCALE:
            out = ggml_scale(ctx, replay(node->src[0], r), 1.0f);
            break;
        case GGML_OP_CLAMP:
            out = ggml_clamp(ctx, replay(node->src[0], r), 0.0f, 0.0f);
            break;
        case GGML_OP_VIEW: {  // a merged gate_up product split into its halves along the columns
            const ggml_tensor * whole = node->src[0];
            if (node->ne[1] != whole->ne[1] || node->ne[2] != whole->ne[2] || node->view_offs >= whole->nb[1]) {
                break;
            }
            ggml_tensor * a = replay(whole, r);
            return ggml_view_3d(ctx, a, node->ne[0], a->ne[1], a->ne[2], a->nb[1], a->nb[2], node->view_offs);
        }
        default:
            break;
    }
    if (!out) {
        throw Error(std::string("--all-experts: cannot rebuild the ") + ggml_op_desc(node) + " in the input of " +
                    r.down->src[0]->name + " for every expert");
    }
    std::memcpy(out->op_params, node->op_params, sizeof(node->op_params));
    return out;
}

void AllExpertsPass::down_sums(const ggml_tensor * down, std::vector<double> & out) {
    const ggml_tensor * w = down->src[0];  // [n_ff, n_embd, n_expert]
    const int64_t n_ff = w->ne[0], n_expert = w->ne[2];
    if (!input_) {
        throw Error(std::string("--all-experts: ") + w->name + " runs before any expert gate/up");
    }
    const int64_t group = std::clamp<int64_t>(kGroupBytes / (int64_t) (5 * sizeof(float) * n_ff * tokens_), 1, n_expert);
    ggml_backend * b = pool_.backend_for(w);
    out.assign(n_ff * n_expert, 0.0);
    std::vector<int32_t> ids;
    std::vector<float> sums;
    for (int64_t e0 = 0; e0 < n_expert; e0 += group) {
        const int64_t g = std::min(group, n_expert - e0);
        GraphContext gc(64);
        Replay r{gc.ctx, ggml_new_tensor_3d(gc.ctx, GGML_TYPE_F32, n_cols_, 1, tokens_),
                 ggml_new_tensor_2d(gc.ctx, GGML_TYPE_I32, g, tokens_), down, {}};
        ggml_set_input(r.x);
        ggml_set_input(r.ids);
        ggml_tensor * h = replay(down->src[1], r);  // [n_ff, g, tokens]
        // Σ over tokens: [n_ff, g, tokens] → [tokens, n_ff, g], then each row summed
        ggml_tensor * s = ggml_sum_rows(gc.ctx, ggml_cont(gc.ctx, ggml_permute(gc.ctx, ggml_sqr(gc.ctx, h), 1, 2, 0, 3)));
        ggml_cgraph * gf = ggml_new_graph_custom(gc.ctx, 64, false);
        ggml_build_forward_expand(gf, s);
        if (!ggml_gallocr_alloc_graph(pool_.allocator(b), gf)) {
            throw Error(std::string("--all-experts: cannot allocate the side graph of ") + w->name);
        }
        ids.resize(g * tokens_);
        for (int64_t tok = 0; tok < tokens_; ++tok) {
            for (int64_t k = 0; k < g; ++k) {
                ids[tok * g + k] = (int32_t) (e0 + k);
            }
        }
        ggml_backend_tensor_set(r.x, x_.data(), 0, x_.size() * sizeof(float));
        ggml_backend_tensor_set(r.ids, ids.data(), 0, ids.size() * sizeof(int32_t));
        if (ggml_backend_graph_compute(b, gf) != GGML_STATUS_SUCCESS) {
            throw Error(std::string("--all-experts: the side graph of ") + w->name + " failed");
        }
        sums.resize(n_ff * g);
        ggml_backend_tensor_get(s, sums.data(), 0, sums.size() * sizeof(float));
        for (int64_t i = 0; i < n_ff * g; ++i) {
            out[e0 * n_ff + i] = sums[i];
        }
    }
}

}  // namespace imx::engine
