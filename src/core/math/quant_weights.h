// From imatrix sums and token counts to the per-column weights a quantizer minimises its error against.
//
// For matrix m (an expert, or the one matrix of a dense weight) and input column j:
//     weight[m][j] = (Σx²[m][j] + W·p[m][j]) / (count[m] + W)
// a neutral prior worth W tokens pulling thin data toward a target p:
//     one      p = 1                       (what quantizers assume without an imatrix)
//     mean     p = the tensor's mean weight (all columns, all experts pooled)
//     geomean  p = the geometric mean of the tensor's pooled column weights
//     hier     p[j] = (Σ_m Σx²[m][j] + W) / (Σ_m count[m] + W): an expert leans on all experts of the tensor,
//              which lean on 1 (for a single matrix this is `one`)
//     all-experts  p[m][j] = Σx² of matrix m's input over every token / tokens (collect --all-experts): what
//              expert m would have seen had every token been routed to it; tensors without those statistics
//              (attention, dense FFN, whose counts are all tokens anyway) fall back to `mean`
// W = 0 gives upstream llama-quantize's weights exactly (same float division). A matrix with count 0 gets the
// target p: an expert that saw no token is quantized neutrally instead of to zeros.
#pragma once

#include "core/imatrix.h"

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace imx {

enum class PriorTarget { one, mean, geomean, hier, all_experts };

PriorTarget parse_prior_target(const std::string & name);  // throws Error for an unknown name
const char * prior_target_name(PriorTarget t);

struct Prior {
    double      weight = 0;  // W, in tokens
    PriorTarget target = PriorTarget::one;
};

// Weights of one tensor, n_mat × n_cols floats in the tensor's matrix order (what llama_model_quantize takes).
// A single count shared by several matrices (dense 3-D weights) applies to each of them.
// `all`: the tensor's all-experts statistics, for the all-experts target (null: none collected).
std::vector<float> quant_weights(const TensorStats & t, const Prior & prior, const AllExpertStats * all = nullptr);

struct QuantWeights {
    std::map<std::string, std::vector<float>> tensors;
    int64_t n_matrices = 0;         // all matrices of all tensors
    int64_t n_unseen = 0;           // of those, how many got the prior's target for lack of data
    int64_t n_zero_groups = 0;      // all-zero groups of 16 columns in seen matrices, floored (floor_zero_groups)
    std::vector<std::string> notes; // things the user should know (MLA substitutions)
};

// Names of the model's tensors and their ne[0..2].
using ModelShapes = std::map<std::string, std::array<int64_t, 3>>;

// All tensors of an imatrix. Legacy .dat data has one count per tensor and does not say how many experts a
// tensor has: `shapes` (the model's) tells, and an expert whose sums are all zero is taken as never seen
// (count 0, so it gets the prior's target where upstream would quantize it against zero weights).
// With `shapes`, MLA substitutes are added too (add_mla_substitutes).
// `per_tensor`: priors chosen per tensor (core/prior_choice.h); tensors it does not name get `prior`.
QuantWeights quant_weights(const Imatrix & im, const Prior & prior, const ModelShapes & shapes = {},
                           const std::map<std::string, Prior> * per_tensor = nullptr);

// Dead features: a matrix that saw tokens can still have all-zero weights over a whole group of 16 columns
// (no token ever activated them). Most of ggml's quantizers then write that group (Q3_K, Q6_K, IQ4_*, Q4_0…)
// or its whole block (Q2_K, Q4_K, IQ2_XXS, IQ1_*…) as zeros, wiping real weights (llama.cpp #8661, measured
// on the pinned ggml). Such groups get a small uniform floor, 1e-4 × the matrix's mean weight: the quantizer
// treats their values as barely important but still encodes them. Returns the number of groups floored; lone
// zero columns are left as upstream has them.
int64_t floor_zero_groups(std::vector<float> & weights, int64_t n_cols, const std::vector<int64_t> & counts);

// MLA: attn_kv_b and attn_v_b both read the compressed KV latent, so the data of one can serve the other when
// the model being quantized has a tensor the imatrix lacks. `model_shapes` maps the model's tensor names to
// their ne[0..2]. attn_kv_b → attn_v_b repeats the kv_lora weights for every head; attn_v_b → attn_kv_b
// averages the heads.
void add_mla_substitutes(QuantWeights & w, const ModelShapes & model_shapes);

}  // namespace imx
