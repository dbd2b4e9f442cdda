// The expert-coverage table and its JSON, shared by collect and stats.
#pragma once

#include "core/report/coverage.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace imx::cli {

inline void print_coverage_table(std::FILE * out, const Imatrix & im) {
    const auto cov = expert_coverage(im);
    if (cov.empty()) {
        return;
    }
    std::fprintf(out, "\nexpert coverage (tokens per expert):\n%-34s %8s %10s %10s  %s\n", "tensor", "experts",
                 "fewest", "most", "never routed");
    for (const auto & c : cov) {
        std::fprintf(out, "%-34s %4lld/%-3lld %10lld %10lld  %s\n", c.name.c_str(),
                     (long long) (c.n_mat - (int64_t) c.unseen.size()), (long long) c.n_mat, (long long) c.min_count,
                     (long long) c.max_count, never_routed_label(c.unseen).c_str());
    }
}

inline nlohmann::json coverage_json(const Imatrix & im) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto & c : expert_coverage(im)) {
        a.push_back({{"tensor", c.name}, {"experts", c.n_mat}, {"never_routed", c.unseen},
                     {"fewest_tokens", c.min_count}, {"most_tokens", c.max_count}});
    }
    return a;
}

}  // namespace imx::cli
