#include "core/math/quant_weights.h"

#include "core/error.h"

#include <algorithm>
#include <cmath>

namespace imx {

PriorTarget parse_prior_target(const std::string & name) {
    if (name == "one") return PriorTarget::one;
    if (name == "mean") return PriorTarget::mean;
    if (name == "geomean") return PriorTarget::geomean;
    if (name == "hier") return PriorTarget::hier;
    if (name == "all-experts") return PriorTarget::all_experts;
    throw Error("unknown prior target '" + name + "' (one of: one, mean, geomean, hier, all-experts)");
}

const char * prior_target_name(PriorTarget t) {
    switch (t) {
        case PriorTarget::one: return "one";
        case PriorTarget::mean: return "mean";
        case PriorTarget::geomean: return "geomean";
        case PriorTarget::hier: return "hier";
        case PriorTarget::all_experts: return "all-experts";
    }
    return "?";
}

namespace {

// One count per matrix: a single shared count applies to every matrix (dense 3-D weights).
std::vector<int64_t> counts_per_matrix(const TensorStats & t) {
    const int64_t n_cols = t.n_cols();
    const int64_t n_rows = n_cols == 0 ? 0 : (int64_t) t.sums.size() / n_cols;
    return t.n_mat() == n_rows ? t.counts : std::vector<int64_t>(n_rows, t.counts.empty() ? 0 : t.counts[0]);
}

// Legacy data of an expert tensor: n_mat matrices share the tensor's one count, except those whose sums are
// all zero, which never saw a token.
TensorStats split_legacy(const TensorStats & t, int64_t n_mat) {
    TensorStats s{t.sums, {}};
    const int64_t n_cols = (int64_t) t.sums.size() / n_mat;
    for (int64_t m = 0; m < n_mat; ++m) {
        bool all_zero = true;
        for (int64_t j = 0; j < n_cols && all_zero; ++j) {
            all_zero = t.sums[m * n_cols + j] == 0;
        }
        s.counts.push_back(all_zero ? 0 : t.counts[0]);
    }
    return s;
}

}  // namespace

std::vector<float> quant_weights(const TensorStats & t, const Prior & prior, const AllExpertStats * all) {
    const std::vector<int64_t> counts = counts_per_matrix(t);
    const int64_t n_cols = counts.empty() ? 0 : (int64_t) t.sums.size() / (int64_t) counts.size();
    const int64_t n_rows = (int64_t) counts.size();
    const double W = prior.weight;

    // the data of all matrices pooled, per column: what `mean`, `geomean` and `hier` lean on
    std::vector<double> pooled_sum(n_cols, 0.0);
    int64_t pooled_count = 0;
    for (int64_t m = 0; m < n_rows; ++m) {
        pooled_count += counts[m];
        for (int64_t j = 0; j < n_cols; ++j) {
            pooled_sum[j] += t.sums[m * n_cols + j];
        }
    }

    std::vector<double> target(n_cols, 1.0);
    const bool per_expert = prior.target == PriorTarget::all_experts && all && all->n_cols() == n_cols &&
                            all->tokens > 0 && (all->n_rows == 1 || all->n_rows == n_rows);
    if (pooled_count > 0 && (prior.target == PriorTarget::mean ||
                             (prior.target == PriorTarget::all_experts && !per_expert))) {
        double s = 0;
        for (double v : pooled_sum) s += v / (double) pooled_count;
        target.assign(n_cols, s / (double) n_cols);
    } else if (pooled_count > 0 && prior.target == PriorTarget::geomean) {
        double log_sum = 0;
        int64_t n = 0;
        for (double v : pooled_sum) {
            if (v > 0) {
                log_sum += std::log(v / (double) pooled_count);
                ++n;
            }
        }
        target.assign(n_cols, n > 0 ? std::exp(log_sum / (double) n) : 1.0);
    } else if (prior.target == PriorTarget::hier && n_rows > 1) {
        for (int64_t j = 0; j < n_cols; ++j) {
            const double denom = (double) pooled_count + W;
            target[j] = denom > 0 ? (pooled_sum[j] + W) / denom : 1.0;
        }
    }

    std::vector<float> w(t.sums.size());
    for (int64_t m = 0; m < n_rows; ++m) {
        const int64_t n = counts[m];
        if (per_expert) {
            for (int64_t j = 0; j < n_cols; ++j) {
                target[j] = all->mean(m, j);
            }
        }
        for (int64_t j = 0; j < n_cols; ++j) {
            const size_t i = (size_t) (m * n_cols + j);
            if (n == 0) {
                w[i] = (float) target[j];
            } else if (W == 0) {
                w[i] = (float) t.sums[i] / (float) n;  // upstream's own float division, bit for bit
            } else {
                w[i] = (float) ((t.sums[i] + W * target[j]) / ((double) n + W));
            }
        }
    }
    return w;
}

QuantWeights quant_weights(const Imatrix & im, const Prior & prior, const ModelShapes & shapes,
                           const std::map<std::string, Prior> * per_tensor) {
    QuantWeights out;
    for (const auto & [name, stats] : im.tensors) {
        if (stats.counts.empty() || stats.sums.empty()) {
            continue;
        }
        const TensorStats * t = &stats;
        TensorStats split;
        const auto shape = shapes.find(name);
        if (!im.counts_per_expert_known && stats.n_mat() == 1 && shape != shapes.end() && shape->second[2] > 1 &&
            (int64_t) stats.sums.size() == shape->second[0] * shape->second[2]) {
            split = split_legacy(stats, shape->second[2]);
            t = &split;
        }
        const std::vector<int64_t> counts = counts_per_matrix(*t);
        out.n_matrices += (int64_t) counts.size();
        for (int64_t c : counts) {
            out.n_unseen += c == 0;
        }
        const auto chosen = per_tensor ? per_tensor->find(name) : std::map<std::string, Prior>::const_iterator{};
        const auto all = im.all_experts.find(name);
        std::vector<float> w = quant_weights(*t, per_tensor && chosen != per_tensor->end() ? chosen->second : prior,
                                             all == im.all_experts.end() ? nullptr : &all->second);
        out.n_zero_groups += floor_zero_groups(w, t->n_cols(), counts);
        out.tensors.emplace(name, std::move(w));
    }
    if (out.n_zero_groups > 0) {
        out.notes.push_back(std::to_string(out.n_zero_groups) + " groups of 16 columns had all-zero weights in matrices "
                            "that saw tokens (dead features): they get a small floor, so the quantizer does not write "
                            "those weights as zeros");
    }
    add_mla_substitutes(out, shapes);
    return out;
}

int64_t floor_zero_groups(std::vector<float> & weights, int64_t n_cols, const std::vector<int64_t> & counts) {
    constexpr int64_t kGroup = 16;
    int64_t floored = 0;
    for (size_t m = 0; m < counts.size(); ++m) {
        float * w = weights.data() + (int64_t) m * n_cols;
        if (counts[m] == 0 || n_cols % kGroup != 0) {
            continue;  // unseen matrices have the prior's target already
        }
        double mean = 0;
        for (int64_t j = 0; j < n_cols; ++j) {
            mean += w[j];
        }
        mean /= (double) n_cols;
        const float floor = mean > 0 ? (float) (1e-4 * mean) : 1.0f;  // nothing seen at all: neutral
        for (int64_t g = 0; g < n_cols; g += kGroup) {
            if (std::all_of(w + g, w + g + kGroup, [](float x) { return x == 0.0f; })) {
                std::fill(w + g, w + g + kGroup, floor);
                ++floored;
            }
        }
    }
    return floored;
}

namespace {

// "blk.7.attn_kv_b.weight" → {"blk.7.", "attn_kv_b"}; false for other names
bool split_mla_name(const std::string & name, std::string & prefix, std::string & kind) {
    for (const char * k : {"attn_kv_b", "attn_v_b"}) {
        const std::string tail = std::string(".") + k + ".weight";
        if (name.size() > tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0) {
            prefix = name.substr(0, name.size() - tail.size() + 1);
            kind = k;
            return true;
        }
    }
    return false;
}

}  // namespace

void add_mla_substitutes(QuantWeights & w, const ModelShapes & model_shapes) {
    for (const auto & [name, ne] : model_shapes) {
        std::string prefix, kind;
        if (!split_mla_name(name, prefix, kind) || w.tensors.count(name)) {
            continue;
        }
        const std::string other = prefix + (kind == "attn_v_b" ? "attn_kv_b" : "attn_v_b") + ".weight";
        const auto it = w.tensors.find(other);
        if (it == w.tensors.end()) {
            continue;
        }
        const std::vector<float> & src = it->second;
        const int64_t n_cols = ne[0], n_mat = ne[2];
        std::vector<float> dst;
        if (kind == "attn_v_b" && (int64_t) src.size() == n_cols) {
            for (int64_t h = 0; h < n_mat; ++h) {
                dst.insert(dst.end(), src.begin(), src.end());
            }
        } else if (kind == "attn_kv_b" && n_mat == 1 && n_cols > 0 && (int64_t) src.size() % n_cols == 0) {
            const int64_t heads = (int64_t) src.size() / n_cols;
            dst.assign(n_cols, 0.0f);
            for (int64_t j = 0; j < n_cols; ++j) {
                double s = 0;
                for (int64_t h = 0; h < heads; ++h) s += src[h * n_cols + j];
                dst[j] = (float) (s / (double) heads);
            }
        } else {
            continue;  // shapes that do not line up: leave the tensor without data, as upstream would
        }
        w.notes.push_back(name + " has no data: using " + other + "'s (MLA: both read the KV latent)");
        w.tensors.emplace(name, std::move(dst));
    }
}

}  // namespace imx
