// Per-tensor statistics of an importance matrix, the same numbers as upstream `llama-imatrix
// --show-statistics` prints for the same file (computed in float, in upstream's order, so they agree to the
// printed digit). For each tensor the "activations" are the per-column means Σx²/count of every matrix that
// saw tokens; then
//   Σ(Act²) = Σ activations          μ = Σ/N          σ = sqrt(max(0, Σa²/N − μ²))
//   % active = share of activations above 1e-5
//   entropy  = −Σ p log2 p with p = a/Σ(Act²);   E(norm) = 100 · entropy / log2 N
//   ZD       = share of activations more than one σ above μ (z-score > 1)
//   CosSim   = cosine of the raw sums with the same tensor in the previous block (0 where none)
#pragma once

#include "core/imatrix.h"

#include <string>
#include <vector>

namespace imx {

struct TensorStatistics {
    std::string name;    // full tensor name
    std::string layer;   // block number as text, "-" outside blocks
    std::string kind;    // e.g. "attn_q", "ffn_down_exps"
    float       total = 0, min = 0, max = 0, mean = 0, stddev = 0, active = 0, entropy = 0, zd = 0, cossim = 0;
    int         elements = 0;
    float entropy_norm() const;
};

struct LayerStatistics {
    int   layer = -1;
    float mean_total = 0;  // μΣ(Act²): Σ(Act²) weighted by elements
    float zd = 0;
    float cossim = 0;
    int   elements = 0;
};

// Tensors whose matrices all lack data are left out, as upstream does. Sorted as upstream prints them:
// by kind, then by Σ(Act²) descending.
std::vector<TensorStatistics> tensor_statistics(const Imatrix & im);
std::vector<LayerStatistics> layer_statistics(const std::vector<TensorStatistics> & ts);

// The rows as upstream prints them (tab-separated, same precision).
std::string format_tensor_row(const TensorStatistics & t);
std::string format_layer_row(const LayerStatistics & l);

}  // namespace imx
