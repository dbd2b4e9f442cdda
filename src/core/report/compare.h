// Comparing two importance matrices: token counts exactly, sums by their worst relative difference.
#pragma once

#include "core/imatrix.h"

#include <string>
#include <vector>

namespace imx {

struct Comparison {
    double                   worst_relative = 0;  // max over columns of |a-b| / |b|, over tensors in both
    std::string              worst_at;            // "tensor[index]"
    std::vector<std::string> count_mismatches;    // tensors whose per-matrix counts differ
    std::vector<std::string> only_in_a, only_in_b;
    std::vector<std::string> shape_mismatches;
    // Covariances of inputs both hold with the same layout: max |a−b| / sqrt(b_ii·b_jj) (off-diagonal entries
    // are measured against their row and column's scale, as they may be near zero).
    double                   worst_covariance = 0;
    std::string              worst_covariance_at;
    size_t                   covariances_compared = 0;
};

Comparison compare(const Imatrix & a, const Imatrix & b);

}  // namespace imx
