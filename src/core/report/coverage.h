// Expert coverage: which matrices of each tensor saw no token, and how thin the rest is.
#pragma once

#include "core/imatrix.h"

#include <cstdint>
#include <string>
#include <vector>

namespace imx {

struct TensorCoverage {
    std::string          name;
    int64_t              n_mat = 0;
    std::vector<int64_t> unseen;          // matrices (experts) with zero tokens
    int64_t              min_count = 0;   // smallest non-zero count
    int64_t              min_matrix = -1; // the matrix that has it
    int64_t              max_count = 0;
};

// One entry per tensor with more than one count (expert tensors), in name order.
std::vector<TensorCoverage> expert_coverage(const Imatrix & im);

// N for a tensor named "blk.N.…", -1 for any other name.
int block_index(const std::string & name);

// "3,7,12": matrix (expert) ids for tables.
std::string join_ids(const std::vector<int64_t> & ids, const char * separator = ",");

// The "never routed" cell: "-" for none, else the count and the ids apart, "2 (#3, #7)" — a bare "0" read as
// "none" where it meant expert 0.
std::string never_routed_label(const std::vector<int64_t> & ids);

}  // namespace imx
