// imx sweep -m BASE --imatrix FILE -f TEXT: quantize a grid of types × prior settings, evaluate every quant
// against the base (its log-probabilities computed once), and print one table with the best row of each type
// marked and every row's paired KLD difference to a reference row (an upstream quant given with --row).
#include "commands.h"
#include "eval_options.h"
#include "quality_table.h"
#include "core/format/atomic_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/format/imatrix_file.h"
#include "core/math/quant_weights.h"
#include "engine/model/tensor_file.h"
#include "engine/evaluate/evaluate.h"
#include "engine/encode/quantize.h"

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <unistd.h>

namespace imx::cli {

namespace {

struct Options {
    std::string              base, imatrix, work_dir, json_file, markdown_file;
    std::vector<std::string> types{"Q2_K", "Q3_K_S", "IQ2_XXS", "IQ3_XXS", "Q4_K_M"};
    std::vector<std::string> priors{"one", "mean", "geomean", "hier"};
    std::vector<double>      weights{0, 1, 16, 128};
    std::vector<std::string> extra_rows;  // LABEL:TYPE=PATH
    engine::EvalOptions      e;
    bool                     no_cache = false, keep = false, no_plain = false;
};

struct Extra {
    std::string label, type, path;
};

Extra parse_extra(const std::string & spec) {
    const size_t colon = spec.find(':'), eq = spec.find('=');
    if (colon == std::string::npos || eq == std::string::npos || colon == 0 || eq < colon + 2 || eq + 1 == spec.size()) {
        throw Error("--row '" + spec + "': expected LABEL:TYPE=PATH");
    }
    return {spec.substr(0, colon), spec.substr(colon + 1, eq - colon - 1), spec.substr(eq + 1)};
}

// Quants that come out byte-identical (e.g. priors that differ only for experts a text never reaches on a
// model where every expert was reached) are evaluated once.
uint64_t content_hash(const std::string & path) {
    const std::vector<uint8_t> bytes = read_file(path);
    return fnv1a(kFnv1aOffset, bytes.data(), bytes.size()) ^ bytes.size();
}

std::string weight_str(double w) {
    std::ostringstream s;
    s << w;
    return s.str();
}

// The best row of a table is picked on the same tokens it is scored on, which flatters it. The honest version:
// pick each type's imx setting on the first half of the chunks, report it on the second half only.
struct HeldOutChoice {
    std::string type, label;
    Estimate    delta;  // mean KLD minus the reference's, second half, paired
};

std::vector<HeldOutChoice> choose_on_first_half(const std::vector<QualityRow> & rows,
                                                const std::vector<std::pair<size_t, TokenScores>> & kept,
                                                const std::map<std::string, TokenScores> & ref_scores,
                                                uint32_t n_chunks) {
    std::vector<HeldOutChoice> out;
    if (n_chunks < 2) {
        return out;
    }
    std::map<std::string, std::pair<double, size_t>> best;  // type → (first-half mean KLD, index into kept)
    for (size_t k = 0; k < kept.size(); ++k) {
        const QualityRow & r = rows[kept[k].first];
        const std::vector<float> & kld = kept[k].second.kld;
        if (r.label.rfind("imx", 0) != 0 || !ref_scores.count(r.group) || kld.empty()) {
            continue;
        }
        const size_t half = kld.size() / n_chunks * (n_chunks / 2);
        const double first = mean_estimate(std::span<const float>(kld.data(), half)).value;
        auto it = best.find(r.group);
        if (it == best.end() || first < it->second.first) {
            best[r.group] = {first, k};
        }
    }
    for (const auto & [type, b] : best) {
        const std::vector<float> & kld = kept[b.second].second.kld;
        const std::vector<float> & ref = ref_scores.at(type).kld;
        const size_t half = kld.size() / n_chunks * (n_chunks / 2);
        out.push_back({type, rows[kept[b.second].first].label,
                       paired_difference(std::span<const float>(kld).subspan(half),
                                         std::span<const float>(ref).subspan(half))});
    }
    return out;
}

void print_choices(FILE * f, const std::vector<HeldOutChoice> & choices, const std::string & ref_label, uint32_t n_chunks) {
    if (choices.empty()) {
        return;
    }
    std::fprintf(f, "\nimx setting chosen on chunks 1-%u, measured on chunks %u-%u (ΔKLD vs %s, 95%%):\n\n",
                 n_chunks / 2, n_chunks / 2 + 1, n_chunks, ref_label.c_str());
    for (const HeldOutChoice & c : choices) {
        std::fprintf(f, "- %s: %s, %+.5f [%+.5f, %+.5f]\n", c.type.c_str(), c.label.c_str(), c.delta.value,
                     c.delta.lo, c.delta.hi);
    }
}

}  // namespace

Run add_sweep(CLI::App & app) {
    auto o = std::make_shared<Options>();
    app.add_option("-m,--model", o->base, "the unquantized model")->required();
    app.add_option("--imatrix", o->imatrix, "imx's imatrix (GGUF or .dat)")->required();
    app.add_option("--types", o->types, "quant types")->delimiter(',')->capture_default_str();
    app.add_option("--priors", o->priors, "prior targets")->delimiter(',')->capture_default_str();
    app.add_option("--weights", o->weights, "prior weights W (tokens)")->delimiter(',')->capture_default_str();
    app.add_option("--row", o->extra_rows,
                   "LABEL:TYPE=PATH: a quant made elsewhere (e.g. upstream:Q2_K=up-q2k.gguf); the first label is "
                   "the reference of the ΔKLD column");
    app.add_flag("--no-plain", o->no_plain, "skip the quants without an imatrix");
    app.add_option("--work-dir", o->work_dir, "where the quants are written (default: a temporary folder)");
    app.add_flag("--keep", o->keep, "keep the quants (default: removed at the end)");
    app.add_option("--json", o->json_file, "also write the rows as JSON to this file");
    app.add_option("--markdown", o->markdown_file, "also write the table to this file");
    add_eval_options(app, o->e, o->no_cache);
    return [o] {
        namespace fs = std::filesystem;
        if (o->no_cache) {
            o->e.cache_dir.clear();
        }
        std::vector<Extra> extras;
        for (const std::string & s : o->extra_rows) {
            extras.push_back(parse_extra(s));
        }
        const std::string ref_label = extras.empty() ? "imx W=0 one" : extras.front().label;
        const bool temp_dir = o->work_dir.empty();
        const std::string dir = temp_dir ? (fs::temp_directory_path() / ("imx-sweep-" + std::to_string(getpid()))).string()
                                         : o->work_dir;
        fs::create_directories(dir);
        prepare_outputs({o->markdown_file, o->json_file});

        const Imatrix im = load_imatrix(o->imatrix);
        const auto shapes = engine::model_tensor_shapes(o->base);
        std::fprintf(stderr, "imx sweep: base log-probabilities of %s\n", o->base.c_str());
        const engine::Evaluator ev(o->base, o->e);

        std::vector<QualityRow> rows;
        std::map<uint64_t, TokenScores> by_content;
        std::map<std::string, TokenScores> ref_scores;  // per type
        auto evaluate = [&](QualityRow & r) {
            const uint64_t h = content_hash(r.path);
            auto it = by_content.find(h);
            if (it == by_content.end()) {
                it = by_content.emplace(h, ev.score(r.path)).first;
            }
            r.bytes = engine::model_file_bytes(r.path);
            r.summary = summarize(it->second);
            if (r.label == ref_label) {
                ref_scores[r.group] = it->second;
            }
            std::fprintf(stderr, "imx sweep: %-8s %-22s mean KLD %.5f  PPL %.3f\n", r.group.c_str(), r.label.c_str(),
                         r.summary.kld_mean.value, r.summary.ppl.value);
            return it->second;
        };
        std::vector<std::pair<size_t, TokenScores>> kept;  // row index → scores, for the ΔKLD column
        for (const std::string & type : o->types) {
            for (const Extra & x : extras) {
                if (x.type == type) {
                    QualityRow r{.group = type, .label = x.label, .path = x.path};
                    kept.emplace_back(rows.size(), evaluate(r));
                    rows.push_back(r);
                }
            }
            if (!o->no_plain) {
                QualityRow r{.group = type, .label = "no imatrix", .path = dir + "/" + type + "-plain.gguf"};
                engine::QuantizeOptions q{.model = o->base, .output = r.path, .type = type, .threads = o->e.threads};
                try {
                    engine::quantize_model(q);
                    kept.emplace_back(rows.size(), evaluate(r));
                } catch (const Error & err) {
                    if (std::string(err.what()).find("needs an importance matrix") == std::string::npos) {
                        throw;
                    }
                    r.note = "needs an imatrix";
                }
                rows.push_back(r);
            }
            for (double w : o->weights) {
                for (const std::string & p : o->priors) {
                    const Prior prior{w, parse_prior_target(p)};
                    QuantWeights qw = quant_weights(im, prior, shapes);
                    QualityRow r{.group = type, .label = "imx W=" + weight_str(w) + " " + p,
                                 .path = dir + "/" + type + "-w" + weight_str(w) + "-" + p + ".gguf"};
                    engine::QuantizeOptions q{.model = o->base, .output = r.path, .type = type, .threads = o->e.threads,
                                              .weights = &qw, .imatrix_file = o->imatrix,
                                              .imatrix_datasets = im.meta.datasets, .imatrix_chunks = im.meta.chunk_count};
                    engine::quantize_model(q);
                    kept.emplace_back(rows.size(), evaluate(r));
                    rows.push_back(r);
                }
            }
        }
        for (auto & [i, s] : kept) {
            const auto ref = ref_scores.find(rows[i].group);
            if (ref != ref_scores.end() && rows[i].label != ref_label) {
                rows[i].kld_vs_ref = paired_difference(s.kld, ref->second.kld);
                rows[i].ppl_vs_ref = paired_ppl_ratio(s.nll, ref->second.nll);
            }
        }
        mark_best(rows);
        const std::vector<HeldOutChoice> choices = choose_on_first_half(rows, kept, ref_scores, ev.chunks());

        std::printf("base %s, %u chunks of %u tokens of %s (%zu scored tokens), base PPL %.3f\n\n", o->base.c_str(),
                    ev.chunks(), o->e.ctx, o->e.text_file.c_str(), ev.base_scores().nll.size(),
                    summarize(ev.base_scores()).ppl.value);
        print_quality_table(stdout, rows, ref_label);
        print_choices(stdout, choices, ref_label, ev.chunks());
        if (!o->markdown_file.empty()) {
            char * buf = nullptr;
            size_t len = 0;
            FILE * mem = open_memstream(&buf, &len);
            print_quality_table(mem, rows, ref_label);
            print_choices(mem, choices, ref_label, ev.chunks());
            std::fclose(mem);
            write_text_atomic(o->markdown_file, std::string_view(buf, len));
            std::free(buf);
        }
        if (!o->json_file.empty()) {
            nlohmann::ordered_json j;
            j["base"] = o->base;
            j["imatrix"] = o->imatrix;
            j["text"] = o->e.text_file;
            j["ctx"] = o->e.ctx;
            j["chunks"] = ev.chunks();
            j["base_ppl"] = summarize(ev.base_scores()).ppl.value;
            j["reference"] = ref_label;
            j["rows"] = quality_json(rows);
            for (const HeldOutChoice & c : choices) {
                j["held_out_choice"].push_back({{"type", c.type}, {"label", c.label},
                                                {"kld_minus_reference_second_half",
                                                 {{"value", c.delta.value}, {"lo", c.delta.lo}, {"hi", c.delta.hi}}}});
            }
            const std::string s = j.dump(2) + "\n";
            write_text_atomic(o->json_file, s);
        }
        if (!o->keep) {
            for (const QualityRow & r : rows) {
                if (r.path.rfind(dir + "/", 0) == 0) {
                    std::error_code ec;
                    fs::remove(r.path, ec);
                }
            }
            if (temp_dir) {
                std::error_code ec;
                fs::remove(dir, ec);
            }
        }
    };
}

}  // namespace imx::cli
