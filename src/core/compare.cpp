#include "compare.h"

#include <algorithm>
#include <cmath>

namespace imx {

Comparison compare(const Imatrix & a, const Imatrix & b) {
    Comparison c;
    for (const auto & [name, ta] : a.tensors) {
        if (!b.tensors.count(name)) {
            c.only_in_a.push_back(name);
        }
    }
    for (const auto & [name, tb] : b.tensors) {
        const auto it = a.tensors.find(name);
        if (it == a.tensors.end()) {
            c.only_in_b.push_back(name);
            continue;
        }
        const TensorStats & ta = it->second;
        if (ta.sums.size() != tb.sums.size()) {
            c.shape_mismatches.push_back(name);
            continue;
        }
        if (ta.counts != tb.counts) {
            c.count_mismatches.push_back(name);
        }
        for (size_t i = 0; i < tb.sums.size(); ++i) {
            if (ta.sums[i] == tb.sums[i]) {
                continue;
            }
            const double rel = std::fabs(ta.sums[i] - tb.sums[i]) / std::max(std::fabs(tb.sums[i]), 1e-30);
            if (rel > c.worst_relative) {
                c.worst_relative = rel;
                c.worst_at = name + "[" + std::to_string(i) + "]";
            }
        }
    }
    return c;
}

}  // namespace imx
