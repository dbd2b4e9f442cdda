#include "engine/collect/graph_nodes.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <cstring>

namespace imx::engine {

std::string weight_name(const char * raw) {
    std::string n = raw;
    if (const auto p = n.find('#'); p != std::string::npos) {
        n = n.substr(p + 1);
        if (const auto q = n.find('#'); q != std::string::npos) {
            n.resize(q);
        }
    }
    return n;
}

std::string collected_weight(const ggml_tensor * t, bool output_head, const std::regex & only) {
    if ((t->op != GGML_OP_MUL_MAT && t->op != GGML_OP_MUL_MAT_ID) || t->src[1]->type != GGML_TYPE_F32) {
        return {};
    }
    std::string name = weight_name(t->src[0]->name);
    if ((name.rfind("blk.", 0) != 0 && !(output_head && name == "output.weight")) || !std::regex_search(name, only)) {
        return {};
    }
    return name;
}

bool is_expert_gate_weights(const char * node_name) {
    return std::strncmp(node_name, "ffn_moe_weights", 15) == 0 && !std::strstr(node_name, "_sum") && !std::strchr(node_name, '(');
}

bool is_expert_weighted_input(const char * node_name) {
    return std::strncmp(node_name, "ffn_moe_weighted", 16) == 0;
}

void read_expert_ids(const ggml_tensor * ids, std::vector<char> & scratch, std::vector<int32_t> & out) {
    scratch.resize(ggml_nbytes(ids));
    ggml_backend_tensor_get(ids, scratch.data(), 0, scratch.size());
    out.resize((size_t) (ids->ne[0] * ids->ne[1]));
    for (int64_t tok = 0; tok < ids->ne[1]; ++tok) {
        for (int64_t k = 0; k < ids->ne[0]; ++k) {
            std::memcpy(&out[tok * ids->ne[0] + k], scratch.data() + tok * ids->nb[1] + k * ids->nb[0], sizeof(int32_t));
        }
    }
}

}  // namespace imx::engine
