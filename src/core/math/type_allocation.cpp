#include "core/math/type_allocation.h"

#include "core/error.h"

#include <algorithm>
#include <limits>
#include <numeric>

namespace imx {

namespace {

// Indices of a tensor's options on the lower convex hull of (bytes, damage), from the fewest bytes on: damage
// falls strictly and the damage removed per byte shrinks from one point to the next.
std::vector<size_t> lower_hull(const std::vector<TypeOption> & options) {
    std::vector<size_t> order(options.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return options[a].bytes != options[b].bytes ? options[a].bytes < options[b].bytes
                                                    : options[a].damage < options[b].damage;
    });
    std::vector<size_t> hull;
    for (size_t i : order) {
        const TypeOption & p = options[i];
        if (!hull.empty() && (p.bytes == options[hull.back()].bytes || p.damage >= options[hull.back()].damage)) {
            continue;  // no fewer bytes, no less damage: dominated
        }
        // drop the last point while it lies on or above the line from the one before it to p
        while (hull.size() >= 2) {
            const TypeOption & a = options[hull[hull.size() - 2]];
            const TypeOption & b = options[hull.back()];
            const double cross = (double) (b.bytes - a.bytes) * (p.damage - a.damage) -
                                 (b.damage - a.damage) * (double) (p.bytes - a.bytes);
            if (cross > 0) {
                break;
            }
            hull.pop_back();
        }
        hull.push_back(i);
    }
    return hull;
}

struct Step {
    size_t   tensor = 0, from = 0, to = 0;  // option indices
    uint64_t bytes = 0;                     // added
    double   damage = 0;                    // removed
    double   gain() const { return damage / (double) bytes; }
};

// Every tensor's hull upgrades, best gain per byte first (within a tensor the gains already fall).
std::vector<Step> hull_steps(const std::vector<TensorTypeOptions> & tensors, std::vector<size_t> & start) {
    std::vector<Step> steps;
    start.assign(tensors.size(), 0);
    for (size_t t = 0; t < tensors.size(); ++t) {
        const auto & o = tensors[t].options;
        if (o.empty()) {
            throw Error("tensor " + tensors[t].name + ": no candidate type fits it");
        }
        const std::vector<size_t> hull = lower_hull(o);
        start[t] = hull[0];
        for (size_t k = 1; k < hull.size(); ++k) {
            steps.push_back({t, hull[k - 1], hull[k], o[hull[k]].bytes - o[hull[k - 1]].bytes,
                             o[hull[k - 1]].damage - o[hull[k]].damage});
        }
    }
    std::stable_sort(steps.begin(), steps.end(), [](const Step & a, const Step & b) { return a.gain() > b.gain(); });
    return steps;
}

// Dynamic programming over the budget cut into `units` equal parts, each option's bytes rounded up to whole
// parts (so what fits here fits the real budget): optimal up to that rounding. O(tensors · options · units).
std::vector<size_t> allocate_by_units(const std::vector<TensorTypeOptions> & tensors, uint64_t budget, size_t units) {
    const uint64_t unit = std::max<uint64_t>(1, (budget + units - 1) / units);
    const size_t cap = (size_t) (budget / unit);
    const double none = std::numeric_limits<double>::infinity();
    std::vector<double> best(cap + 1, 0.0), next(cap + 1);
    std::vector<std::vector<uint8_t>> pick(tensors.size(), std::vector<uint8_t>(cap + 1, 0));
    for (size_t t = 0; t < tensors.size(); ++t) {
        std::fill(next.begin(), next.end(), none);
        const auto & o = tensors[t].options;
        for (size_t k = 0; k < o.size() && k < 256; ++k) {
            const size_t cost = (size_t) ((o[k].bytes + unit - 1) / unit);
            for (size_t c = cost; c <= cap; ++c) {
                const double d = best[c - cost] + o[k].damage;
                if (d < next[c]) {
                    next[c] = d;
                    pick[t][c] = (uint8_t) k;
                }
            }
        }
        best.swap(next);
    }
    if (best[cap] == none) {
        return {};  // the rounding lost a fit the real budget has
    }
    std::vector<size_t> choice(tensors.size());
    size_t c = cap;
    for (size_t t = tensors.size(); t-- > 0;) {
        choice[t] = pick[t][c];
        c -= (size_t) ((tensors[t].options[choice[t]].bytes + unit - 1) / unit);
    }
    return choice;
}

}  // namespace

uint64_t smallest_allocation(const std::vector<TensorTypeOptions> & tensors) {
    uint64_t sum = 0;
    for (const auto & t : tensors) {
        uint64_t least = UINT64_MAX;
        for (const auto & o : t.options) {
            least = std::min(least, o.bytes);
        }
        sum += t.options.empty() ? 0 : least;
    }
    return sum;
}

uint64_t largest_allocation(const std::vector<TensorTypeOptions> & tensors) {
    uint64_t sum = 0;
    for (const auto & t : tensors) {
        uint64_t most = 0;
        for (const auto & o : t.options) {
            most = std::max(most, o.bytes);
        }
        sum += most;
    }
    return sum;
}

TypeAllocation allocate_types(const std::vector<TensorTypeOptions> & tensors, uint64_t budget) {
    TypeAllocation a;
    const std::vector<Step> steps = hull_steps(tensors, a.choice);
    for (size_t t = 0; t < tensors.size(); ++t) {
        a.bytes += tensors[t].options[a.choice[t]].bytes;
        a.damage += tensors[t].options[a.choice[t]].damage;
    }
    if (a.bytes > budget) {
        throw Error("the smallest allocation takes " + std::to_string(a.bytes) + " bytes, over the budget of " +
                    std::to_string(budget));
    }
    // the Lagrangian path while it fits; its break point bounds what any allocation can reach
    bool broken = false;
    std::vector<bool> blocked(tensors.size(), false);
    for (const Step & s : steps) {
        if (blocked[s.tensor] || a.choice[s.tensor] != s.from) {
            continue;
        }
        if (a.bytes + s.bytes <= budget) {
            a.choice[s.tensor] = s.to;
            a.bytes += s.bytes;
            a.damage -= s.damage;
            continue;
        }
        if (!broken) {
            a.lower_bound = a.damage - (double) (budget - a.bytes) * s.gain();
            broken = true;
        }
        blocked[s.tensor] = true;  // its later steps gain less per byte and come after this one
    }
    if (!broken) {
        a.lower_bound = a.damage;  // every tensor at its least damage: nothing can do better
    }
    // the greedy path can stop short when a few large steps do not fit; the rounded DP does not, and where
    // it predicts less damage it is taken
    const std::vector<size_t> dp = allocate_by_units(tensors, budget, 4096);
    if (!dp.empty()) {
        uint64_t bytes = 0;
        double damage = 0;
        for (size_t t = 0; t < tensors.size(); ++t) {
            bytes += tensors[t].options[dp[t]].bytes;
            damage += tensors[t].options[dp[t]].damage;
        }
        if (bytes <= budget && damage < a.damage) {
            a.choice = dp, a.bytes = bytes, a.damage = damage;
        }
    }
    // leftover bytes: the single change that removes the most damage and fits, until none does
    for (;;) {
        size_t best_t = 0, best_o = 0;
        double best = 0;
        for (size_t t = 0; t < tensors.size(); ++t) {
            const TypeOption & cur = tensors[t].options[a.choice[t]];
            for (size_t k = 0; k < tensors[t].options.size(); ++k) {
                const TypeOption & o = tensors[t].options[k];
                const double removed = cur.damage - o.damage;
                if (removed > best && a.bytes - cur.bytes + o.bytes <= budget) {
                    best = removed, best_t = t, best_o = k;
                }
            }
        }
        if (best <= 0) {
            break;
        }
        const TypeOption & cur = tensors[best_t].options[a.choice[best_t]];
        a.bytes = a.bytes - cur.bytes + tensors[best_t].options[best_o].bytes;
        a.damage -= best;
        a.choice[best_t] = best_o;
    }
    a.lower_bound = std::min(a.lower_bound, a.damage);
    return a;
}

std::vector<FrontierPoint> allocation_frontier(const std::vector<TensorTypeOptions> & tensors) {
    std::vector<size_t> start;
    const std::vector<Step> steps = hull_steps(tensors, start);
    FrontierPoint p;
    for (size_t t = 0; t < tensors.size(); ++t) {
        p.bytes += tensors[t].options[start[t]].bytes;
        p.damage += tensors[t].options[start[t]].damage;
    }
    std::vector<FrontierPoint> path{p};
    for (const Step & s : steps) {
        p.bytes += s.bytes;
        p.damage -= s.damage;
        path.push_back(p);
    }
    return path;
}

}  // namespace imx
