// Choosing the neutral prior (W and its target, core/quant_weights.h) per tensor from the collected data alone,
// by cross-fitting parts of the text — instead of one W for all tensors picked by evaluating quants.
//
// The parts are imatrix files of disjoint chunks of the calibration text (imx collect --shard i/K writes them;
// each is the memory of one imatrix, so K parts cost K× one file). For every part k held out, the weights are
// estimated from the other parts with a candidate prior, and scored against the held-out part's own per-column
// means:
//     loss(prior) = Σ_k Σ_m n_m^(k) · mean_j (log(est_mj + ε) − log(held_mj + ε))²
// weighted by the tokens matrix m saw in part k (ε = 1e-3 × the tensor's pooled mean, for dead columns). The noise
// of the held-out means does not depend on the prior, so the prior with the least loss is the one whose weights
// best predict fresh text. The log makes it a relative error, as quantizers use the weights (within a block).
// Tokens of one chunk are correlated; holding out whole chunks keeps that correlation out of the estimate.
#pragma once

#include "core/imatrix.h"
#include "core/math/quant_weights.h"

#include <map>
#include <string>
#include <vector>

namespace imx {

struct PriorChoice {
    Prior  prior;
    double loss = 0;       // of the chosen prior
    double loss_none = 0;  // of W = 0, for comparison
};

// The W grid searched: 0 and powers of 2 from 1 to 4096 tokens.
std::vector<double> prior_weight_grid();

// Per tensor present in every part, the prior (among `targets` × prior_weight_grid()) with the least cross-fit
// loss. Throws imx::Error if fewer than two parts are given.
std::map<std::string, PriorChoice> choose_priors(const std::vector<Imatrix> & parts,
                                                 const std::vector<PriorTarget> & targets);

}  // namespace imx
