#include "engine/stream/block_stages.h"

#include "engine/collect/graph_nodes.h"

#include "ggml.h"

#include <algorithm>
#include <functional>

namespace imx::engine {

namespace {

const ggml_tensor * root_of(const ggml_tensor * t) {
    while (t->view_src) {
        t = t->view_src;
    }
    return t;
}

bool is_block_weight(const ggml_tensor * t) {
    return t->op == GGML_OP_NONE && weight_name(t->name).rfind("blk.", 0) == 0;
}

const std::set<std::string> kNone;

}  // namespace

bool BlockStages::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<BlockStages *>(user_data);
    if (!ask || !self->tracing_) {
        return false;
    }
    if ((t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_MUL_MAT_ID) && is_block_weight(t->src[0])) {
        std::set<std::string> & in = self->inputs_[weight_name(t->src[0]->name)];
        for (int i = 1; i < GGML_MAX_SRC && t->src[i]; ++i) {  // the input, and a MUL_MAT_ID's routing
            const std::set<std::string> & d = self->depends(t->src[i]);
            in.insert(d.begin(), d.end());
        }
    }
    // a store into a tensor that outlives the node (the KV cache): what reads it later depends on what went in
    // (SET_ROWS and CPY return a view of the tensor they write; the values are their first source)
    const ggml_tensor * into = root_of(t);
    if ((t->op == GGML_OP_SET_ROWS || t->op == GGML_OP_CPY) && into->op == GGML_OP_NONE && !is_block_weight(into)) {
        const std::set<std::string> & d = self->depends(t->src[0]);
        self->stored_[into].insert(d.begin(), d.end());
    }
    return false;
}

// The weights t depends on. A leaf that was stored into (the cache) is looked up as it is now, and nothing that
// reads one is remembered: a later read of the same cache may see more stored into it.
const std::set<std::string> & BlockStages::depends(const ggml_tensor * t) {
    if (const auto m = memo_.find(t); m != memo_.end()) {
        return m->second;
    }
    if (t->op == GGML_OP_NONE && !t->view_src) {
        if (is_block_weight(t)) {
            return memo_[t] = {weight_name(t->name)};
        }
        const auto s = stored_.find(t);
        return s == stored_.end() ? kNone : s->second;
    }
    std::set<std::string> d;
    bool reads_store = false;
    const auto add = [&](const ggml_tensor * src) {
        const std::set<std::string> & s = depends(src);
        d.insert(s.begin(), s.end());
        const ggml_tensor * r = root_of(src);
        reads_store = reads_store || (r->op == GGML_OP_NONE && !is_block_weight(r));
    };
    for (int i = 0; i < GGML_MAX_SRC && t->src[i]; ++i) {
        add(t->src[i]);
    }
    if (t->view_src) {
        add(t->view_src);
    }
    if (reads_store) {
        scratch_.push_back(std::move(d));
        return scratch_.back();
    }
    return memo_[t] = std::move(d);
}

const std::set<std::string> & BlockStages::input_depends_on(const std::string & name) const {
    const auto it = inputs_.find(name);
    return it == inputs_.end() ? kNone : it->second;
}

std::vector<std::vector<std::string>> BlockStages::stages(const std::set<std::string> & encoded) const {
    std::map<std::string, int> depth;
    const std::function<int(const std::string &)> depth_of = [&](const std::string & w) {
        if (const auto it = depth.find(w); it != depth.end()) {
            return it->second;
        }
        int k = 0;
        for (const std::string & d : input_depends_on(w)) {
            if (d != w && encoded.contains(d) && inputs_.contains(d)) {
                k = std::max(k, depth_of(d) + 1);
            }
        }
        return depth[w] = k;
    };
    std::vector<std::vector<std::string>> out;
    for (const std::string & w : encoded) {
        if (!inputs_.contains(w)) {
            continue;
        }
        const int k = depth_of(w);
        if ((int) out.size() <= k) {
            out.resize((size_t) k + 1);
        }
        out[(size_t) k].push_back(w);
    }
    std::erase_if(out, [](const std::vector<std::string> & s) { return s.empty(); });
    return out;
}

}  // namespace imx::engine
