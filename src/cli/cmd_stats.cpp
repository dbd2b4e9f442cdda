// imx stats FILE [--json] [--html report.html]: upstream's per-tensor statistics, expert coverage per layer,
// and a self-contained HTML report.
#include "commands.h"
#include "coverage_output.h"
#include "core/format/atomic_file.h"
#include "core/report/coverage.h"
#include "core/format/imatrix_file.h"
#include "core/report/report_html.h"
#include "core/report/statistics.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <regex>

namespace imx::cli {

namespace {

struct Options {
    std::string              file, html;
    std::vector<std::string> profile;
    bool                     json = false;
    uint32_t                 legacy_chunk_size = kDefaultLegacyChunkSize;
};

void print_text(const Imatrix & im, const std::vector<TensorStatistics> & ts, const std::vector<LayerStatistics> & ls,
                const std::string & file) {
    std::printf("Statistics for %s (%zu tensors)\n\n", file.c_str(), ts.size());
    std::printf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", " Layer", "       Tensor", "          Σ(Act²)",
                "  Min", "            Max", "           μ", "   σ", " % Active", "N", "   Entropy", "E (norm)", "ZD",
                "  CosSim");
    for (const auto & t : ts) {
        std::printf("%s\n", format_tensor_row(t).c_str());
    }
    std::printf("\nWeighted averages per layer (%zu layers)\n\n%s\t%s\t%s\t%s\n", ls.size(), "  Layer",
                "     μΣ(Act²)", "      μZD", "μCosSim");
    for (const auto & l : ls) {
        std::printf("%s\n", format_layer_row(l).c_str());
    }
    print_coverage_table(stdout, im);
}

void print_json(const Imatrix & im, const std::vector<TensorStatistics> & ts, const std::vector<LayerStatistics> & ls,
                const std::string & file) {
    nlohmann::ordered_json j;
    j["file"] = file;
    j["chunk_count"] = im.meta.chunk_count;
    j["chunk_size"] = im.meta.chunk_size;
    j["tensors"] = nlohmann::json::array();
    for (const auto & t : ts) {
        const TensorStats & e = im.tensors.at(t.name);
        j["tensors"].push_back({{"name", t.name}, {"layer", t.layer}, {"kind", t.kind}, {"sum_act2", t.total},
                                {"min", t.min}, {"max", t.max}, {"mean", t.mean}, {"stddev", t.stddev},
                                {"cv", t.mean > 0 ? t.stddev / t.mean : 0.0f}, {"active", t.active},
                                {"elements", t.elements}, {"entropy", t.entropy},
                                {"entropy_norm", t.entropy_norm()}, {"zd", t.zd}, {"cossim", t.cossim},
                                {"counts", e.counts}});
    }
    j["layers"] = nlohmann::json::array();
    for (const auto & l : ls) {
        j["layers"].push_back({{"layer", l.layer}, {"mean_sum_act2", l.mean_total}, {"zd", l.zd}, {"cossim", l.cossim}});
    }
    j["coverage"] = coverage_json(im);
    std::printf("%s\n", j.dump(2).c_str());
}

}  // namespace

void show_statistics(const std::string & file) {
    const Imatrix im = load_imatrix(file);
    const auto ts = tensor_statistics(im);
    print_text(im, ts, layer_statistics(ts), file);
}

Run add_stats(CLI::App & app) {
    auto o = std::make_shared<Options>();
    app.add_option("file", o->file, "imatrix file (GGUF or legacy .dat)")->required();
    app.add_flag("--json", o->json, "print JSON on stdout instead of tables");
    app.add_option("--html", o->html, "also write a self-contained HTML report to this file");
    app.add_option("--profile", o->profile,
                   "regex of tensors whose sorted column importance the report plots (default: first and last "
                   "block's attention input and FFN down)");
    app.add_option("--chunk-size", o->legacy_chunk_size, "tokens per chunk assumed for legacy .dat input")
        ->capture_default_str();
    return [o] {
        prepare_outputs({o->html});
        const Imatrix im = load_imatrix(o->file, o->legacy_chunk_size);
        const auto ts = tensor_statistics(im);
        const auto ls = layer_statistics(ts);
        o->json ? print_json(im, ts, ls, o->file) : print_text(im, ts, ls, o->file);
        if (!o->html.empty()) {
            ReportOptions ro{o->file, default_profile_tensors(im)};
            if (!o->profile.empty()) {
                ro.profile_tensors.clear();
                for (const auto & [name, t] : im.tensors) {
                    for (const auto & re : o->profile) {
                        if (std::regex_search(name, std::regex(re))) {
                            ro.profile_tensors.push_back(name);
                            break;
                        }
                    }
                }
            }
            const std::string page = render_html_report(im, ro);
            write_text_atomic(o->html, page);
            std::fprintf(stderr, "imx: wrote %s\n", o->html.c_str());
        }
    };
}

}  // namespace imx::cli
