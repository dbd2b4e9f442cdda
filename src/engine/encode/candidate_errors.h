// The type search's first measurement (engine/encode/type_search.h): every candidate type's error for every
// tensor, in memory — each tensor's weights read once, each matrix's H factorised once (per block size) for all
// candidates, and only a sample of each matrix's rows encoded. No candidate file is written.
//
// The error of tensor t at type T is what the encoder that writes the file leaves:
//   hessian: Σ over rows of (w − q)ᵀ H (w − q), where the Hessian encoder re-encodes t at T (per row the better
//            of llama-quantize's diagonal encoding and the Hessian one, toward the shifted targets where the
//            covariance has a cross term: exactly engine/encode/hessian_encoder.h's loss_final);
//   diag:    Σ over rows of Σ_j imp_j (w_j − q_j)², imp the imatrix weights of the row's matrix (1 where none);
//   hessian_of_diag: the hessian metric of llama-quantize's own encoding alone (what the search's probes write:
//            they are encoded without the Hessian pass, engine/encode/type_search.cpp).
// The diagonal encoding is llama_model_quantize's own (ggml's quantizer, the same imatrix weights, row by row),
// so with every row sampled these are the errors of the candidate files the search wrote before.
//
// Rows: `sample_rows` of each matrix (expert, head), evenly spaced, the same rows for every type (types are
// compared on the same rows); the sums are scaled by rows/sampled. A whole-model search at the Qwen3-1.7B shape
// encodes ~2.2% of the rows per candidate with the default 64 (docs/allocation.md).
#pragma once

#include "core/imatrix.h"
#include "core/math/quant_weights.h"
#include "engine/encode/hessian_encoder.h"
#include "engine/model/tensor_file.h"

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace imx::engine {

// Rows of each matrix encoded for a candidate's error where --error-rows is not given: 64 was level with 128 on
// both shared models (qwen3moe-tiny the same file), and 128 with 256 (docs/allocation.md).
constexpr int64_t kErrorRows = 64;

struct CandidateErrorOptions {
    const QuantWeights * weights = nullptr;  // llama-quantize's imatrix weights per tensor (null: none)
    const Imatrix *      hessian = nullptr;  // covariances: the Hessian encoder's errors too (null: diagonal only)
    HessianOptions       hessian_options;
    int64_t              sample_rows = kErrorRows;  // per matrix; 0: every row
    int                  threads = 1;
};

struct CandidateError {
    double diag = 0;
    double hessian = -1;  // < 0: the Hessian encoder does not re-encode the tensor at this type
    double hessian_of_diag = -1;  // with `hessian`: the same loss of the diagonal encoding
};

struct CandidateTensor {
    std::string            name;
    std::vector<ggml_type> types;
};

// Measures every tensor at each of its types; `done(name, errors by type)` is called as each tensor is finished
// (the caller keeps them: an interrupted search resumes from there). Throws imx::Error naming the tensor.
void measure_candidate_errors(const TensorTable & model, const std::vector<CandidateTensor> & tensors,
                              const CandidateErrorOptions & o,
                              const std::function<void(const std::string &, const std::map<ggml_type, CandidateError> &)> & done);

}  // namespace imx::engine
