// imx eval --base BASE QUANT... -f TEXT: perplexity of each model and, against the base, KL-divergence
// (mean, median, p99), top-1 agreement, and the paired KLD difference to the first quant, all with 95% intervals.
#include "commands.h"
#include "eval_options.h"
#include "progress.h"
#include "quality_table.h"
#include "core/report/eval_stats.h"
#include "engine/model/tensor_file.h"
#include "engine/evaluate/evaluate.h"

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

namespace imx::cli {

namespace {
struct Options {
    std::string              base;
    std::vector<std::string> quants;
    engine::EvalOptions      e;
    bool                     no_cache = false;
    bool                     json = false;
};
}  // namespace

Run add_eval(CLI::App & app) {
    auto o = std::make_shared<Options>();
    app.add_option("--base", o->base, "the unquantized model (F16/BF16/F32) that the quants are compared with")
        ->required();
    app.add_option("quants", o->quants, "quantized models of the base");
    add_eval_options(app, o->e, o->no_cache);
    app.add_flag("--json", o->json, "print JSON on stdout instead of the table");
    return [o] {
        if (o->no_cache) {
            o->e.cache_dir.clear();
        }
        std::map<std::string, std::unique_ptr<Progress>> bars;
        o->e.progress = [&](const std::string & model, uint32_t done, uint32_t total) {
            auto & bar = bars[model];
            if (!bar) {
                bar = std::make_unique<Progress>("imx eval " + std::filesystem::path(model).filename().string());
            }
            bar->update(done, total, "chunk");
        };
        const engine::Evaluator ev(o->base, o->e);
        if (ev.base_from_cache()) {
            std::fprintf(stderr, "imx eval: base log-probabilities from %s\n", ev.cache_file().c_str());
        }
        std::vector<QualityRow> rows;
        rows.push_back({.label = "base", .path = o->base, .bytes = engine::model_file_bytes(o->base), .summary = summarize(ev.base_scores())});
        std::vector<TokenScores> scores;
        for (const std::string & q : o->quants) {
            scores.push_back(ev.score(q));
            QualityRow r{.label = q, .path = q, .bytes = engine::model_file_bytes(q), .summary = summarize(scores.back())};
            if (scores.size() > 1) {
                r.kld_vs_ref = paired_difference(scores.back().kld, scores.front().kld);
                r.ppl_vs_ref = paired_ppl_ratio(scores.back().nll, scores.front().nll);
            }
            rows.push_back(r);
        }
        if (o->json) {
            nlohmann::ordered_json j;
            j["text"] = o->e.text_file;
            j["ctx"] = o->e.ctx;
            j["chunks"] = ev.chunks();
            j["models"] = quality_json(rows);
            std::printf("%s\n", j.dump(2).c_str());
        } else {
            std::printf("%u chunks of %u tokens of %s (%zu scored tokens)\n\n", ev.chunks(), o->e.ctx,
                        o->e.text_file.c_str(), rows.front().summary.n_tokens);
            print_quality_table(stdout, rows, o->quants.empty() ? "first" : o->quants.front());
        }
    };
}

}  // namespace imx::cli
