#include "core/report/compare.h"

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
    for (const Covariance & cb : b.covariances) {
        const Covariance * ca = a.covariance_of(cb.readers[0]);
        if (!ca || ca->n_cols != cb.n_cols || ca->block != cb.block || ca->n_mat != cb.n_mat) {
            continue;
        }
        c.covariances_compared += 1;
        for (int64_t m = 0; m < cb.n_mat; ++m) {
            const double * vb = cb.values.data() + m * cb.n_cols * cb.block;
            const double * va = ca->values.data() + m * cb.n_cols * cb.block;
            auto diag = [&](int64_t i) { return vb[i * cb.block + (i - cb.block_start(i))]; };
            for (int64_t i = 0; i < cb.n_cols; ++i) {
                for (int64_t k = 0; k < cb.block; ++k) {
                    const int64_t j = cb.block_start(i) + k;
                    const double scale = std::sqrt(diag(i) * diag(j));
                    const double d = std::fabs(va[i * cb.block + k] - vb[i * cb.block + k]);
                    if (d > 0 && d / std::max(scale, 1e-30) > c.worst_covariance) {
                        c.worst_covariance = d / std::max(scale, 1e-30);
                        c.worst_covariance_at = cb.readers[0] + ".in_cov[" + std::to_string(m) + "][" +
                                                std::to_string(i) + "][" + std::to_string(j) + "]";
                    }
                }
            }
        }
    }
    return c;
}

}  // namespace imx
