// The name of the weight a graph node reads, as the model file names it.
#pragma once

#include <string>

namespace imx::engine {

// "CUDA0#blk.0.attn_q.weight#0" (a weight copied to another backend) → "blk.0.attn_q.weight"
inline std::string weight_name(const char * raw) {
    std::string n = raw;
    if (const auto p = n.find('#'); p != std::string::npos) {
        n = n.substr(p + 1);
        if (const auto q = n.find('#'); q != std::string::npos) {
            n.resize(q);
        }
    }
    return n;
}

}  // namespace imx::engine
