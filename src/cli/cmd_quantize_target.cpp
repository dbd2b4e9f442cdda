// imx quantize --target-size MiB | --target-bpw X: runs the type search (engine/type_search.h) and reports it:
// the mix, predicted and measured KLD, timings, the llama-quantize recipe, the frontier page, --json.
#include "quantize_options.h"
#include "progress.h"
#include "core/format/atomic_file.h"
#include "core/hash.h"
#include "core/report/frontier_html.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>
#include <memory>

namespace imx::cli {

namespace {

std::string target_text(const QuantizeCommand & o) {
    char s[64];
    std::snprintf(s, sizeof s, o.target_mib > 0 ? "%g MiB" : "%g bpw", o.target_mib > 0 ? o.target_mib : o.target_bpw);
    return s;
}

}  // namespace

engine::TargetOptions target_options(const QuantizeCommand & o, const Imatrix & im) {
    engine::TargetOptions t;
    t.quantize = o.q;
    t.target_bytes = o.target_mib * 1048576.0;
    t.target_bpw = o.target_bpw;
    t.candidates = o.candidates;
    t.probe_type = o.probe_type;
    t.probe_groups = o.probe_groups;
    t.error_rows = o.error_rows;
    t.text_file = o.text;
    t.ctx = o.ctx;
    t.chunks = o.chunks;
    t.cache_dir = o.cache_dir;
    t.cache_key = "prior " + o.prior_target + " " + o.prior_weight_text + (o.gate_weights ? " gates" : "");
    const bool by_blocks = search_by_blocks(o);
    if (by_blocks) {
        // collected here block by block, each block's errors measured before the run's numbers exist: the key
        // names what the collection depends on instead (the model and text are in the key already)
        t.cache_key += " collected by blocks: chunks " + std::to_string(o.collect_chunks) + " ctx " +
                       std::to_string(o.ctx) + " budget " + std::to_string((uint64_t) (o.block_budget_mib * 1048576.0));
    } else if (o.imatrix.empty()) {  // collected in this run: the measurements depend on its numbers, not on a file
        uint64_t h = kFnv1aOffset;
        for (const auto & [name, ts] : im.tensors) {
            h = fnv1a(h, name.data(), name.size());
            h = fnv1a(h, ts.sums.data(), ts.sums.size() * sizeof(double));
            h = fnv1a(h, ts.counts.data(), ts.counts.size() * sizeof(int64_t));
        }
        t.cache_key += " collected " + std::to_string(h);
    }
    if (o.method == "hessian") {
        t.hessian = &im;
        t.hessian_options = o.hessian;
        if (by_blocks) {
            t.by_blocks = stream_options(o);
        } else if (o.sequential) {
            t.sequential = engine::SequentialOptions{o.text, o.ctx, o.sequential_chunks,
                                                     (uint64_t) (o.sequential_budget_mib * 1048576.0)};
        }
    }
    return t;
}

void run_target(QuantizeCommand & o, const Imatrix & im, const engine::BlockErrors * block_errors) {
    engine::TargetOptions t = target_options(o, im);
    if (block_errors) {
        t.block_error_seconds = block_errors->seconds();
        t.block_error_tensors = block_errors->tensors();
        t.block_error_types = block_errors->types();
        t.spill = block_errors->spill();
    }
    std::unique_ptr<Progress> bar;  // one per stage: candidate types, then tensors
    std::string stage_shown;
    t.progress = [&](const std::string & stage, int done, int total) {
        if (stage != stage_shown) {
            bar = std::make_unique<Progress>("imx quantize: " + stage);
            stage_shown = stage;
        }
        bar->update((uint64_t) done, (uint64_t) total,
                    stage == "sequential" ? "layers"
                    : stage == "encode"   ? "blocks"
                    : stage == "quantize" && t.by_blocks ? "passes"
                                                         : "tensors");
    };
    const engine::TargetResult r = engine::quantize_to_target(t);
    bar.reset();

    std::map<std::string, int> count;
    for (const auto & c : r.tensors) {
        count[c.type] += 1;
    }
    std::string mix;
    for (const auto & [type, n] : count) {
        mix += (mix.empty() ? "" : ", ") + type + " ×" + std::to_string(n);
    }
    const double gap = r.predicted_kld > 0 ? 100.0 * (r.predicted_kld - r.lower_bound) / r.predicted_kld : 0.0;
    std::fprintf(stderr,
                 "imx quantize: %s -> %s: %.2f MiB (%.3f bpw) for a target of %s; %zu tensors: %s\n"
                 "imx quantize: predicted KLD %.5f (optimality gap %.2f%%), measured %.5f on %d chunks of %s\n"
                 "imx quantize: %s in all (errors %.1f s: %d types of %d tensors in memory, %s; sensitivity "
                 "%.1f s over %d probes, solve %.3f s; the rest from %s)\n",
                 o.q.model.c_str(), o.q.output.c_str(), r.file_bytes / 1048576.0, r.bpw,
                 target_text(o).c_str(),
                 r.tensors.size(), mix.c_str(), r.predicted_kld, gap, r.measured_kld, r.chunks, o.text.c_str(),
                 clock_str(r.seconds_total).c_str(), r.seconds_errors, r.error_types, r.error_tensors,
                 o.error_rows > 0 ? (std::to_string(o.error_rows) + " rows a matrix").c_str() : "every row",
                 r.seconds_sensitivity,
                 r.probes, r.seconds_solve, r.cache_file.empty() ? "nothing" : r.cache_file.c_str());
    if (t.by_blocks && t.by_blocks->refit_norms) {
        std::fprintf(stderr, "imx quantize: %d norms re-fitted to their quantized readers\n", r.norms_refit);
    }
    std::string recipe;
    for (const std::string & a : r.recipe) {
        recipe += a + "\n";
    }
    if (!o.recipe_file.empty()) {
        write_text_atomic(o.recipe_file, recipe);
    }
    if (!o.html.empty()) {
        std::vector<FrontierMark> marks;
        for (const auto & s : r.stock) {
            marks.push_back({s.name, s.file_bytes, s.damage});
        }
        marks.push_back({"chosen", r.predicted_file_bytes, r.predicted_kld});
        const std::string page = render_frontier_html(o.q.model, r.frontier, marks, r.measured_kld);
        write_text_atomic(o.html, page);
    }
    if (o.json) {
        nlohmann::ordered_json j;
        j["model"] = o.q.model;
        j["output"] = o.q.output;
        j["imatrix"] = o.imatrix;
        j["method"] = o.method;
        j["target_bytes"] = t.target_bytes;
        j["target_bpw"] = t.target_bpw;
        j["output_bytes"] = r.file_bytes;
        j["predicted_bytes"] = r.predicted_file_bytes;
        j["bpw"] = r.bpw;
        j["predicted_kld"] = r.predicted_kld;
        j["lower_bound_kld"] = r.lower_bound;
        j["measured_kld"] = r.measured_kld;
        j["measured_chunks"] = r.chunks;
        j["base_type"] = r.base_type;
        j["seconds"] = {{"total", r.seconds_total}, {"errors", r.seconds_errors},
                        {"sensitivity", r.seconds_sensitivity}, {"solve", r.seconds_solve}};
        j["error_types"] = r.error_types;
        j["error_tensors"] = r.error_tensors;
        j["error_rows"] = o.error_rows;
        j["probes"] = r.probes;
        j["cache"] = r.cache_file;
        j["tensor_types"] = nlohmann::ordered_json::object();
        for (const auto & c : r.tensors) {
            j["tensor_types"][c.name] = {{"type", c.type}, {"bytes", c.bytes}, {"predicted_kld", c.damage}};
        }
        j["recipe"] = r.recipe;
        j["recipe_reproduces"] = o.method == "hessian" ? "types" : "types and bytes";
        j["sequential_layers"] = r.sequential_reports.size();
        j["by_blocks"] = t.by_blocks.has_value();
        j["norms_refit"] = r.norms_refit;
        j["stock"] = nlohmann::ordered_json::array();
        for (const auto & s : r.stock) {
            j["stock"].push_back({{"type", s.name}, {"bytes", s.file_bytes}, {"predicted_kld", s.damage}});
        }
        std::printf("%s\n", j.dump(2).c_str());
    } else {
        // the same types with upstream's tools (the recipe's patterns name one tensor each); not the same bytes
        // where imx's own encoders wrote them
        if (o.method == "hessian") {
            std::printf("# the same types with llama-quantize (not the same file: its bytes come from imx's Hessian "
                        "encoder%s, which llama-quantize does not have)\n", o.sequential ? " and sequential passes" : "");
        } else {
            std::printf("# the same file with llama-quantize (types and bytes)\n");
        }
        std::printf("llama-quantize%s%s%s", o.q.keep_split ? " --keep-split" : "", o.imatrix.empty() ? "" : " --imatrix ",
                    o.imatrix.c_str());
        for (const std::string & a : r.recipe) {
            std::printf(" --tensor-type '%s'", a.c_str());
        }
        std::printf(" %s %s %s\n", o.q.model.c_str(), o.q.output.c_str(), r.base_type.c_str());
    }
}

}  // namespace imx::cli
