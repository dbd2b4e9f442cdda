#include "core/math/prior_choice.h"

#include "core/error.h"

#include <cmath>

namespace imx {

namespace {

TensorStats sum_except(const std::vector<const TensorStats *> & parts, size_t skip) {
    TensorStats s;
    for (size_t k = 0; k < parts.size(); ++k) {
        if (k == skip) {
            continue;
        }
        if (s.counts.empty()) {
            s = *parts[k];
            continue;
        }
        for (size_t i = 0; i < s.sums.size(); ++i) {
            s.sums[i] += parts[k]->sums[i];
        }
        for (size_t i = 0; i < s.counts.size(); ++i) {
            s.counts[i] += parts[k]->counts[i];
        }
    }
    return s;
}

// One part held out: the others' sums (what the weights are estimated from) and the held-out part's log means.
// Made once per tensor, then scored against every candidate prior.
struct Fold {
    TensorStats         train;
    const TensorStats * held = nullptr;
    double              eps = 0;       // 1e-3 × the held-out part's pooled mean
    std::vector<double> log_held;      // log(held mean + eps) per matrix and column
};

std::vector<Fold> folds_of(const std::vector<const TensorStats *> & parts) {
    std::vector<Fold> folds;
    for (size_t k = 0; k < parts.size(); ++k) {
        const TensorStats & held = *parts[k];
        const int64_t n_cols = held.n_cols(), n_mat = held.n_mat();
        double pooled = 0;
        int64_t tokens = 0;
        for (int64_t m = 0; m < n_mat; ++m) {
            tokens += held.counts[m];
            for (int64_t j = 0; j < n_cols; ++j) {
                pooled += held.sums[m * n_cols + j];
            }
        }
        if (tokens == 0) {
            continue;  // nothing held out to predict
        }
        Fold f{sum_except(parts, k), &held, 1e-3 * pooled / (double) tokens / (double) n_cols, {}};
        f.log_held.assign(held.sums.size(), 0.0);
        for (int64_t m = 0; m < n_mat; ++m) {
            for (int64_t j = 0; held.counts[m] > 0 && j < n_cols; ++j) {
                f.log_held[m * n_cols + j] = std::log(held.sums[m * n_cols + j] / (double) held.counts[m] + f.eps);
            }
        }
        folds.push_back(std::move(f));
    }
    return folds;
}

double cross_fit_loss(const std::vector<Fold> & folds, const Prior & prior) {
    double loss = 0;
    for (const Fold & f : folds) {
        const std::vector<float> est = quant_weights(f.train, prior);
        const int64_t n_cols = f.held->n_cols(), n_mat = f.held->n_mat();
        for (int64_t m = 0; m < n_mat; ++m) {
            const int64_t n = f.held->counts[m];
            if (n == 0) {
                continue;
            }
            double e = 0;
            for (int64_t j = 0; j < n_cols; ++j) {
                const double d = std::log((double) est[m * n_cols + j] + f.eps) - f.log_held[m * n_cols + j];
                e += d * d;
            }
            loss += (double) n * e / (double) n_cols;
        }
    }
    return loss;
}

}  // namespace

std::vector<double> prior_weight_grid() {
    std::vector<double> g{0};
    for (double w = 1; w <= 4096; w *= 2) {
        g.push_back(w);
    }
    return g;
}

std::map<std::string, PriorChoice> choose_priors(const std::vector<Imatrix> & parts,
                                                 const std::vector<PriorTarget> & targets) {
    if (parts.size() < 2) {
        throw Error("choosing the prior needs at least two parts of the text (imx collect --shard 1/2 and 2/2)");
    }
    std::map<std::string, PriorChoice> out;
    for (const auto & [name, first] : parts[0].tensors) {
        std::vector<const TensorStats *> ts;
        for (const Imatrix & p : parts) {
            const auto it = p.tensors.find(name);
            if (it == p.tensors.end() || it->second.sums.size() != first.sums.size() ||
                it->second.counts.size() != first.counts.size()) {
                break;
            }
            ts.push_back(&it->second);
        }
        if (ts.size() != parts.size() || first.counts.empty()) {
            continue;
        }
        const std::vector<Fold> folds = folds_of(ts);
        PriorChoice best;
        best.loss = INFINITY;
        best.loss_none = cross_fit_loss(folds, {0, PriorTarget::one});
        for (PriorTarget target : targets) {
            for (double w : prior_weight_grid()) {
                const Prior p{w, target};
                const double loss = w == 0 && target == PriorTarget::one ? best.loss_none : cross_fit_loss(folds, p);
                if (loss < best.loss) {
                    best.prior = p;
                    best.loss = loss;
                }
            }
        }
        out.emplace(name, best);
    }
    return out;
}

}  // namespace imx
