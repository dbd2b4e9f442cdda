// The importance-matrix data model, independent of any file format and of llama.cpp.
//
// For every weight tensor consumed by a matrix multiplication we keep, per input column j of each matrix m,
//     sums[m*n_cols + j] = Σ_tokens x_j²        (accumulated in double)
//     counts[m]          = number of tokens that reached matrix m
// "Matrix" is an expert for MoE tensors (MUL_MAT_ID), the single matrix of a 2-D weight, or one head of a 3-D
// weight such as MLA's attn_k_b. When every matrix of a tensor always sees the same tokens (dense 3-D weights),
// upstream llama.cpp keeps a single count for all of them; we keep that shape so files round-trip exactly:
// counts.size() is the number of count groups and n_cols() = sums.size() / counts.size().
#pragma once

#include "core/math/covariance.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace imx {

struct TensorStats {
    std::vector<double>  sums;    // n_mat() rows of n_cols() values
    std::vector<int64_t> counts;  // tokens per matrix (or one count shared by all)

    int64_t n_mat() const { return (int64_t) counts.size(); }
    int64_t n_cols() const { return counts.empty() ? 0 : (int64_t) sums.size() / n_mat(); }
    // Matrices (experts) that never saw a token: their sums are all zero and say nothing.
    int64_t n_unseen() const;
    bool has_data() const { return n_unseen() < n_mat(); }
};

// What the GGUF and legacy files carry besides the tensors.
struct ImatrixMeta {
    std::vector<std::string> datasets{};     // calibration files, in the order they were used
    uint32_t                 chunk_count = 0;
    uint32_t                 chunk_size  = 0;  // tokens per chunk; 0 when unknown
    // imx collect --shard I/N writes part I of N of a text's chunks; merged, the N parts give one run's bytes.
    // `shards` lists the parts a file holds (one, or several merged) of `shard_count`; 0: a whole run. While a
    // file is a part, its sums and covariances are also stored in double (extra tensors upstream ignores).
    uint32_t                 shard_count = 0;
    std::vector<uint32_t>    shards{};
    // imx collect --covariance-tensors REGEX: the covariances held are those of inputs matching it (KV
    // imx.in_cov.tensors); runs over the same chunks with other sets join into one file by imx merge.
    std::string              covariance_tensors{};
    // the expert covariances weight each token by its gate weight squared (KV imx.in_cov.gate_weighted; files
    // before it: unweighted). Files that differ here do not merge.
    bool                     experts_gate_weighted = false;
};

enum class ImatrixFormat { gguf, legacy };

// imx collect --all-experts: what an expert tensor's inputs would have summed had every token been routed to
// every expert (the model's own top-k routing still runs; these are computed on the side). gate/up read the
// same input whatever the expert, so their one row serves all experts; down has one row per expert. Kept apart
// from the routed sums, which stay what llama-imatrix writes; quantize --prior all-experts leans on them.
struct AllExpertStats {
    std::vector<double> sums;    // n_rows × n_cols: Σ over all tokens of x² (1 row shared, or 1 per expert)
    int64_t             n_rows = 1;
    int64_t             tokens = 0;

    int64_t n_cols() const { return n_rows > 0 ? (int64_t) sums.size() / n_rows : 0; }
    // The target of matrix m, column j: the mean of x² over all tokens.
    double mean(int64_t m, int64_t j) const { return sums[(m % n_rows) * n_cols() + j] / (double) tokens; }
};

struct Imatrix {
    ImatrixMeta                        meta;
    std::map<std::string, TensorStats> tensors;  // sorted by name: deterministic output
    ImatrixFormat                      source_format = ImatrixFormat::gguf;
    // Legacy files store means per chunk and one count per tensor, so per-expert token counts are unknown.
    bool                               counts_per_expert_known = true;
    // XᵀX of matmul inputs (imx collect --covariance), sorted by their first reader's name.
    std::vector<Covariance>            covariances;
    std::map<std::string, AllExpertStats> all_experts;  // by weight name (expert tensors only)

    // The covariance of the input `weight` multiplies, or null.
    const Covariance * covariance_of(const std::string & weight) const;
};

// Adds `other` into `into`: sums and per-matrix counts add exactly, whatever the chunk sizes.
// A single shared count broadcasts to all matrices (legacy data, or dense 3-D tensors).
// Throws imx::Error naming the tensor when shapes disagree; `what` names the source in the message.
// Covariances add where both hold one for the same input; one that `other` lacks is dropped (it would be
// the covariance of part of the text only). Returns the readers' names of those dropped.
// Parts of one sharded run (same shard count, datasets and chunk size) keep the text named once and become a
// whole run when all parts are in; a part given twice is an error.
// Two files that each hold a subset of covariances (--covariance-tensors) over the same chunks are joined
// instead: sums kept once (they must be identical), covariance sets united (they must be disjoint).
std::vector<std::string> merge_into(Imatrix & into, const Imatrix & other, const std::string & what);

// Block-by-block runs (engine/stream) collect each block from a model of that block alone, where it is blk.0:
// its tensors, covariances and all-experts statistics are moved into `into` as block `block`.
void add_block(Imatrix & into, Imatrix && block0, int block);

// "blk.0.ffn_up.weight" → "blk.<block>.ffn_up.weight"; other names as they are.
std::string block_name(const std::string & block0_name, int block);

}  // namespace imx
