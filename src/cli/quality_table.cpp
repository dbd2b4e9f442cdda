#include "quality_table.h"

#include <map>

namespace imx::cli {

namespace {

std::string fmt(const char * f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

std::string with_interval(const char * f, const Estimate & e) {
    return fmt(f, e.value) + " [" + fmt(f, e.lo) + ", " + fmt(f, e.hi) + "]";
}

nlohmann::ordered_json estimate_json(const Estimate & e) {
    return {{"value", e.value}, {"lo", e.lo}, {"hi", e.hi}};
}

}  // namespace

void mark_best(std::vector<QualityRow> & rows) {
    std::map<std::string, QualityRow *> best;
    for (QualityRow & r : rows) {
        if (!r.note.empty() || r.summary.n_tokens == 0 || r.summary.kld_mean.value == 0) {
            continue;
        }
        QualityRow *& b = best[r.group];
        if (!b || r.summary.kld_mean.value < b->summary.kld_mean.value) {
            b = &r;
        }
    }
    for (auto & [group, r] : best) {
        r->best = true;
    }
}

void print_quality_table(FILE * out, const std::vector<QualityRow> & rows, const std::string & ref_label) {
    const bool groups = !rows.empty() && !rows.front().group.empty();
    std::fprintf(out, "| %smodel | size MiB | PPL [95%%] | mean KLD [95%%] | median KLD | p99 KLD | top-1 %% | "
                      "ΔKLD vs %s [95%%] | PPL ratio vs it [95%%] |\n",
                 groups ? "type | " : "", ref_label.c_str());
    std::fprintf(out, "|%s---|---:|---:|---:|---:|---:|---:|---:|---:|\n", groups ? "---|" : "");
    for (const QualityRow & r : rows) {
        const std::string label = r.best ? "**" + r.label + "** (best)" : r.label;
        if (groups) {
            std::fprintf(out, "| %s ", r.group.c_str());
        }
        if (!r.note.empty()) {
            std::fprintf(out, "| %s | | %s | | | | | | |\n", label.c_str(), r.note.c_str());
            continue;
        }
        const QualitySummary & s = r.summary;
        const bool has_kld = !(s.kld_mean.value == 0 && s.kld_mean.hi == 0);
        std::fprintf(out, "| %s | %.2f | %s | %s | %s | %s | %s | %s | %s |\n", label.c_str(), r.bytes / 1048576.0,
                     with_interval("%.3f", s.ppl).c_str(), has_kld ? with_interval("%.5f", s.kld_mean).c_str() : "",
                     has_kld ? fmt("%.5f", s.kld_median.value).c_str() : "",
                     has_kld ? fmt("%.4f", s.kld_p99.value).c_str() : "",
                     has_kld ? fmt("%.2f", 100 * s.top1.value).c_str() : "",
                     r.kld_vs_ref ? with_interval("%+.5f", *r.kld_vs_ref).c_str() : "",
                     r.ppl_vs_ref ? with_interval("%.4f", *r.ppl_vs_ref).c_str() : "");
    }
}

nlohmann::ordered_json quality_json(const std::vector<QualityRow> & rows) {
    nlohmann::ordered_json a = nlohmann::ordered_json::array();
    for (const QualityRow & r : rows) {
        nlohmann::ordered_json j;
        if (!r.group.empty()) j["type"] = r.group;
        j["label"] = r.label;
        j["path"] = r.path;
        if (!r.note.empty()) {
            j["note"] = r.note;
            a.push_back(j);
            continue;
        }
        j["bytes"] = r.bytes;
        j["tokens"] = r.summary.n_tokens;
        j["ppl"] = estimate_json(r.summary.ppl);
        j["kld_mean"] = estimate_json(r.summary.kld_mean);
        j["kld_median"] = estimate_json(r.summary.kld_median);
        j["kld_p99"] = estimate_json(r.summary.kld_p99);
        j["top1"] = estimate_json(r.summary.top1);
        if (r.kld_vs_ref) j["kld_minus_reference"] = estimate_json(*r.kld_vs_ref);
        if (r.ppl_vs_ref) j["ppl_ratio_to_reference"] = estimate_json(*r.ppl_vs_ref);
        j["best"] = r.best;
        a.push_back(j);
    }
    return a;
}

}  // namespace imx::cli
