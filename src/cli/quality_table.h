// The table that eval and sweep print: one row per model, quality against the base with 95% intervals.
#pragma once

#include "core/report/eval_stats.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace imx::cli {

struct QualityRow {
    std::string             group{};  // the quant type in a sweep; empty in eval
    std::string             label{};  // what made it
    std::string             path{};
    uint64_t                bytes = 0;
    QualitySummary          summary{};
    std::optional<Estimate> kld_vs_ref{};  // paired mean KLD difference against the group's reference row
    bool                    best = false;
    std::string             note{};   // instead of numbers, e.g. "needs an imatrix"
    std::optional<Estimate> ppl_vs_ref{};  // paired PPL ratio against the reference row
};

// Markdown, so that it pastes into docs as is.
void print_quality_table(FILE * out, const std::vector<QualityRow> & rows, const std::string & ref_label);
nlohmann::ordered_json quality_json(const std::vector<QualityRow> & rows);

// Marks the row with the lowest mean KLD in each group.
void mark_best(std::vector<QualityRow> & rows);

}  // namespace imx::cli
