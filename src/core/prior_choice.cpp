#include "prior_choice.h"

#include "error.h"

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

double cross_fit_loss(const std::vector<const TensorStats *> & parts, const Prior & prior) {
    double loss = 0;
    for (size_t k = 0; k < parts.size(); ++k) {
        const TensorStats train = sum_except(parts, k);
        const TensorStats & held = *parts[k];
        const std::vector<float> est = quant_weights(train, prior);
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
            continue;
        }
        const double eps = 1e-3 * pooled / (double) tokens / (double) n_cols;
        for (int64_t m = 0; m < n_mat; ++m) {
            const int64_t n = held.counts[m];
            if (n == 0) {
                continue;
            }
            double e = 0;
            for (int64_t j = 0; j < n_cols; ++j) {
                const double h = held.sums[m * n_cols + j] / (double) n;
                const double d = std::log((double) est[m * n_cols + j] + eps) - std::log(h + eps);
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
        PriorChoice best;
        best.loss = INFINITY;
        best.loss_none = cross_fit_loss(ts, {0, PriorTarget::one});
        for (PriorTarget target : targets) {
            for (double w : prior_weight_grid()) {
                const Prior p{w, target};
                const double loss = w == 0 && target == PriorTarget::one ? best.loss_none : cross_fit_loss(ts, p);
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
