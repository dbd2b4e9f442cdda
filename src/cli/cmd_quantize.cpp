// imx quantize -m MODEL --imatrix FILE -o OUT TYPE: libllama's quantizer, fed with imx's per-column weights
// (neutral prior for thin data, neutral weights for experts that saw no token, MLA substitutes).
#include "commands.h"
#include "quantize_options.h"
#include "format_option.h"
#include "progress.h"
#include "core/error.h"
#include "core/format/imatrix_file.h"
#include "core/math/prior_choice.h"
#include "core/math/quant_weights.h"
#include "engine/collect/activation_collector.h"
#include "engine/encode/hessian_encoder.h"
#include "engine/encode/sequential_encoder.h"
#include "engine/model/llama_model.h"
#include "engine/encode/quantize.h"
#include "engine/model/tensor_file.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <filesystem>
#include <memory>

namespace imx::cli {

namespace {

void warn_about_unseen(const Imatrix & im, const QuantWeights & w, const Prior & prior, const std::string & file) {
    if (w.n_unseen == 0) {
        return;
    }
    const double share = 100.0 * (double) w.n_unseen / (double) w.n_matrices;
    if (!im.counts_per_expert_known) {
        std::fprintf(stderr,
                     "imx: warning: %s is a legacy .dat without per-expert counts: %lld of %lld matrices (%.1f%%) have "
                     "all-zero data and are taken as never seen: they get the prior's target (%s) instead of zeros\n",
                     file.c_str(), (long long) w.n_unseen, (long long) w.n_matrices, share,
                     prior_target_name(prior.target));
    } else {
        std::fprintf(stderr, "imx: %lld of %lld matrices (%.1f%%) saw no token in %s: they get the prior's target (%s)\n",
                     (long long) w.n_unseen, (long long) w.n_matrices, share, file.c_str(),
                     prior_target_name(prior.target));
    }
}

// --prior-weight auto: W (and with --prior auto the target) per tensor, cross-fitted on the --imatrix parts.
void choose_prior(QuantizeCommand & o, const std::vector<Imatrix> & parts) {
    std::vector<PriorTarget> targets;
    if (o.prior_target == "auto") {
        targets = {PriorTarget::one, PriorTarget::mean, PriorTarget::geomean, PriorTarget::hier};
    } else {
        targets = {parse_prior_target(o.prior_target)};
    }
    const std::map<std::string, PriorChoice> chosen = choose_priors(parts, targets);
    std::map<double, int> by_weight;
    std::map<std::string, int> by_target;
    double loss = 0, loss_none = 0;
    for (const auto & [name, c] : chosen) {
        o.chosen_priors[name] = c.prior;
        by_weight[c.prior.weight] += 1;
        by_target[prior_target_name(c.prior.target)] += 1;
        loss += c.loss;
        loss_none += c.loss_none;
    }
    std::string ws, ts;
    for (const auto & [w, n] : by_weight) {
        char b[48];
        std::snprintf(b, sizeof b, "%sW=%g ×%d", ws.empty() ? "" : ", ", w, n);
        ws += b;
    }
    for (const auto & [t, n] : by_target) {
        ts += (ts.empty() ? "" : ", ") + t + " ×" + std::to_string(n);
    }
    std::fprintf(stderr, "imx quantize: prior chosen per tensor by cross-fitting %zu parts (held-out log error %.1f%% "
                         "below W = 0): %s; targets %s\n", parts.size(),
                 loss_none > 0 ? 100.0 * (1.0 - loss / loss_none) : 0.0, ws.c_str(), ts.c_str());
}

}  // namespace

// The Hessian pass's summary line, and with -v a line per tensor.
HessianSummary summarize(const std::vector<engine::HessianTensorReport> & reports) {
    HessianSummary s;
    for (const auto & r : reports) {
        s.tensors += 1;
        s.rows += r.rows;
        s.rows_improved += r.rows_improved;
        s.pooled += r.pooled_matrices;
        s.loss_diagonal += r.loss_diagonal;
        s.loss_final += r.loss_final;
        s.compared = s.compared && r.compared;
    }
    return s;
}


void add_hessian_json(nlohmann::ordered_json & j, const HessianSummary & hs) {
    j["hessian_tensors"] = hs.tensors;
    j["hessian_rows_changed"] = hs.rows_improved;
    j["hessian_rows"] = hs.rows;
    if (hs.compared) {
        j["hessian_error_diagonal"] = hs.loss_diagonal;
    }
    j["hessian_error"] = hs.loss_final;
    j["hessian_pooled_experts"] = hs.pooled;
}

void print_hessian_reports(const std::vector<engine::HessianTensorReport> & reports, bool verbose, bool row_scales) {
    const HessianSummary hs = summarize(reports);
    if (hs.compared) {
        std::fprintf(stderr,
                     "imx quantize: hessian: %lld tensors re-encoded (%lld of %lld rows changed), output error "
                     "%.1f%% below the diagonal encoder's; %lld experts without tokens used the pooled covariance; "
                     "other tensors keep the diagonal encoding\n",
                     (long long) hs.tensors, (long long) hs.rows_improved, (long long) hs.rows,
                     hs.loss_diagonal > 0 ? 100.0 * (1.0 - hs.loss_final / hs.loss_diagonal) : 0.0,
                     (long long) hs.pooled);
    } else {
        std::fprintf(stderr,
                     "imx quantize: hessian: %lld tensors encoded with their covariances (%lld rows; no diagonal "
                     "encoding first, --sequential encodes them again); %lld experts without tokens used the pooled "
                     "covariance; other tensors take the diagonal encoding\n",
                     (long long) hs.tensors, (long long) hs.rows, (long long) hs.pooled);
    }
    if (verbose) {
        for (const auto & r : reports) {
            std::string scales;
            if (row_scales) {
                char buf[128];
                std::snprintf(buf, sizeof buf, "output scale wHq/qHq %.4f -> %.4f  signal scale wHq/wHw %.4f -> %.4f  ",
                              r.qq_diagonal > 0 ? r.wq_diagonal / r.qq_diagonal : 0.0,
                              r.qq_final > 0 ? r.wq_final / r.qq_final : 0.0,
                              r.ww > 0 ? r.wq_diagonal / r.ww : 0.0, r.ww > 0 ? r.wq_final / r.ww : 0.0);
                scales = buf;
            }
            char error[96];
            if (r.compared) {
                std::snprintf(error, sizeof error, "error %.4g -> %.4g (%.1f%%)", r.loss_diagonal, r.loss_final,
                              r.loss_diagonal > 0 ? 100.0 * (r.loss_final / r.loss_diagonal - 1.0) : 0.0);
            } else {
                std::snprintf(error, sizeof error, "error %.4g (no diagonal encoding)", r.loss_final);
            }
            std::fprintf(stderr, "  %-32s %-8s %6lld/%-6lld rows  %s  %s%.1f s factor, %.1f s error, %.1f s encode\n",
                         r.name.c_str(), r.type.c_str(), (long long) r.rows_improved, (long long) r.rows, error,
                         scales.c_str(), r.seconds_factor, r.seconds_loss, r.seconds_round);
        }
    }
}

Run add_quantize(CLI::App & app) {
    auto o = std::make_shared<QuantizeCommand>();
    auto & q = o->q;
    app.add_option("-m,--model", q.model, "GGUF model to quantize (F32/F16/BF16)")->required();
    app.add_option("-o,--output", q.output, "quantized GGUF to write")->required();
    app.add_option("type", q.type, "file type as llama-quantize names it: Q4_K_M, Q2_K, IQ2_XXS, ... ("
                                   "`imx quantize --list-types`)");
    app.add_option("--imatrix", o->imatrix_parts, "importance matrix (GGUF or legacy .dat); several: parts of one "
                                                  "text (imx collect --shard i/K), added")
        ->allow_extra_args(false);  // one file per --imatrix: a type after it stays the type
    app.add_option("--prior-weight", o->prior_weight_text,
                   "W: the neutral prior is worth W tokens (0: upstream's weights); auto: chosen per tensor by "
                   "cross-fitting the --imatrix parts")
        ->capture_default_str();
    app.add_option("--prior", o->prior_target,
                   "prior target: one, mean, geomean, hier (expert <- tensor <- 1), all-experts (each expert's own "
                   "input over every token: imx collect --all-experts); auto (with --prior-weight auto): chosen per "
                   "tensor too")
        ->capture_default_str()
        ->check(CLI::IsMember({"one", "mean", "geomean", "hier", "all-experts", "auto"}));
    app.add_option("--tensor-type", q.tensor_types, "REGEX=TYPE: ggml type for matching tensors (repeatable)");
    app.add_option("--output-tensor-type", q.output_tensor_type, "ggml type for output.weight");
    app.add_option("--token-embedding-type", q.token_embedding_type, "ggml type for token_embd.weight");
    app.add_flag("--allow-requantize", q.allow_requantize, "allow quantizing already quantized tensors");
    app.add_flag("--pure", q.pure, "every tensor in the type's default type (no k-quant mixture)");
    app.add_flag("--keep-split", q.keep_split,
                 "write a split model as the same parts (OUT-00001-of-0000N.gguf ...), as llama-quantize --keep-split");
    app.add_option("-t,--threads", q.threads, "threads (default: all cores)");
    app.add_option("--chunk-size", o->legacy_chunk_size, "tokens per chunk assumed for a legacy .dat imatrix")
        ->capture_default_str();
    app.add_option("--method", o->method,
                   "diagonal: llama.cpp's encoders with imatrix weights; hessian: re-encode tensors whose input "
                   "covariance the imatrix holds (imx collect --covariance) with GPTQ-style error feedback")
        ->capture_default_str()
        ->check(CLI::IsMember({"diagonal", "hessian"}));
    app.add_option("--damp", o->hessian.rounding.damp, "hessian: damping, a fraction of the mean diagonal")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app.add_option("--covariance-prior", o->hessian.prior_weight,
                   "hessian: an expert's covariance leans on the tensor's pooled one with this weight in tokens")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    app.add_option("--hessian-tensors", o->hessian.tensors,
                   "hessian: re-encode only tensors whose name matches this regex (others stay diagonal)");
    app.add_flag("--gate-weights", o->gate_weights,
                 "hessian, with -f: the expert covariances this run collects weight each token by its gate weight "
                 "for the expert, squared, as the layer's output does (off by default: with a type 1-4% lower KLD "
                 "on held-out calibration text, but with --sequential or --target-size higher on WikiText-2, "
                 "docs/hessian.md)");
    app.add_flag("--hessian-per-head,!--no-hessian-per-head", o->hessian.per_head,
                 "hessian: re-encode per-head 3-D weights (MLA attn_k_b/attn_v_b) too (default; lower KLD on "
                 "deepseek3-tiny's held-out calibration text at Q2_K, IQ2_XXS, Q3_K_S)");
    app.add_option("--refinements", o->hessian.rounding.refinements,
                   "hessian: target shifts tried per block after the diagonal encoding")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    app.add_flag("--refine-rescale", o->hessian.refine_rescale,
                 "hessian: refinement rounds search the block's scales again with ggml's quantizer instead of keeping "
                 "them (Q2_K, q4_K-q6_K, Q4_0, Q8_0, IQ2_XXS, IQ3_XXS): 1.4-1.6x slower, at Q2_K better on held-out "
                 "calibration text, worse in KLD on deepseek3-tiny's WikiText-2 (docs/hessian.md)");
    app.add_flag("--output-scales", o->hessian.row_scales,
                 "hessian: measure each re-encoded tensor's output scale wᵀHq/qᵀHq and signal scale wᵀHq/wᵀHw, diagonal and final (printed "
                 "with -v; three more triangular products per matrix)");
    app.add_flag("--sequential", o->sequential,
                 "hessian: then layer by layer again, each fitted to the unquantized model's outputs on the inputs the "
                 "quantized layers before it give (-f TEXT, -c; one pass of both models per layer)");
    app.add_option("--sequential-step", o->hessian.sequential_step,
                   "hessian --sequential: share of the step toward the least-squares targets (1: the whole step)")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 1.0));
    app.add_option("--sequential-chunks", o->sequential_chunks, "hessian --sequential: chunks of -f's text (default: all)")
        ->check(CLI::PositiveNumber);
    app.add_option("--sequential-budget", o->sequential_budget_mib,
                   "hessian --sequential: MiB for one layer's covariances and cross terms (inputs beyond it keep the "
                   "first pass's encoding)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app.add_option("--refine-tolerance", o->hessian.rounding.refine_tolerance,
                   "hessian: a block stops refining after a shift that lowers its error by less than this share")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 1.0));
    // options only the type search reads: refused without a target, never dropped
    std::vector<CLI::Option *> target_only;
    app.add_option("--target-size", o->target_mib,
                   "instead of a type: the whole file's size in MiB; every tensor's type is chosen by measurement")
        ->check(CLI::PositiveNumber);
    app.add_option("--target-bpw", o->target_bpw, "instead of a type: bits per weight, as llama-quantize prints them")
        ->check(CLI::PositiveNumber);
    target_only.push_back(app.add_option("--candidates", o->candidates, "target: the ggml types a tensor may get, comma-separated")
        ->delimiter(',')
        ->capture_default_str());
    app.add_option("-f,--file", o->text,
                   "calibration text: without --imatrix, collected here block by block and quantized in the same run "
                   "(with --method hessian: every tensor with its whole covariance); with --target-size: where each "
                   "tensor's sensitivity is measured");
    app.add_flag("--refit-norms", o->refit_norms,
                 "block by block, --method hessian: re-fit each block's norm weights so that the quantized matrices "
                 "reading them match the float outputs (same size; measured in docs/streaming.md)");
    app.add_option("--chunks", o->collect_chunks, "block by block: chunks of -f's text (default: all)")
        ->check(CLI::PositiveNumber);
    app.add_option("--save-every", o->save_every,
                   "block by block: keep a checkpoint after every block (<output>.ckpt*; any N > 0)")
        ->check(CLI::PositiveNumber);
    app.add_flag("--resume", o->resume, "block by block: go on from the checkpoint of an interrupted run");
    app.add_option("--save-imatrix", o->save_imatrix, "block by block: also write the collected imatrix (GGUF)");
    app.add_option("--covariance-budget", o->block_budget_mib,
                   "block by block, --method hessian: MiB for one block's covariances (and cross terms with "
                   "--sequential); inputs beyond it keep the diagonal encoding. With --target-size and -f: the "
                   "same where the search runs block by block (--method hessian), else for every block's at once, "
                   "which the search holds (default there: the memory available less 4 GiB)")
        ->capture_default_str()
        ->check(CLI::PositiveNumber)
        ->each([o](const std::string &) { o->block_budget_given = true; });
    app.add_option("--n-gpu-layers", o->n_gpu_layers, "block by block: offload the block to the GPU (99: yes)")
        ->capture_default_str();
    app.add_option("-c,--ctx-size", o->ctx, "target: tokens per chunk of that text")->capture_default_str();
    target_only.push_back(app.add_option("--sensitivity-chunks", o->chunks,
                   "target: chunks of the text per probe and for the output's measured KLD (default: " +
                       std::to_string(engine::kProbeChunksByTensor) + " with a probe per tensor, " +
                       std::to_string(engine::kProbeChunksByRole) + " with probes by role)")
        ->check(CLI::PositiveNumber));
    target_only.push_back(app.add_option("--probe-groups", o->probe_groups,
                   "target: tensor (one probe each), role (one per role over all layers: a few probes for a "
                   "large model, the KLD shared by error), or auto (tensor up to 64 tensors, else role)")
        ->capture_default_str()
        ->check(CLI::IsMember({"tensor", "role", "auto"})));
    target_only.push_back(app.add_option("--error-rows", o->error_rows,
                   "target: rows of each matrix encoded to measure a candidate type's error (0: every row)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber));
    target_only.push_back(app.add_option("--probe-type", o->probe_type, "target: the type each tensor is tried at alone")
        ->capture_default_str());
    target_only.push_back(app.add_option("--cache-dir", o->cache_dir, "target: where measurements (and the base's log-probs) are kept")
        ->capture_default_str());
    app.add_option("--recipe", o->recipe_file,
                   "target: write the chosen types as a llama-quantize --tensor-type-file");
    app.add_option("--html", o->html, "target: write a page with the size-KLD frontier and llama-quantize's mixes");
    app.add_flag("--json", o->json, "print a JSON summary on stdout");
    app.add_flag("-v,--verbose", o->verbose, "show llama.cpp's log");
    app.add_flag_callback("--list-types", [] {
        for (const std::string & t : engine::quant_type_names()) {
            std::printf("%s\n", t.c_str());
        }
        throw CLI::Success();
    }, "print the type names and exit");
    return [o, target_only] {
        auto & q = o->q;
        const bool target = o->target_mib > 0 || o->target_bpw > 0;
        if (o->target_mib > 0 && o->target_bpw > 0) {
            throw Error("give --target-size or --target-bpw, not both");
        }
        if (target && !q.type.empty()) {
            throw Error("give a type (" + q.type + ") or a target size, not both");
        }
        if (q.type.empty() && !target) {
            throw Error("no quantization type given (e.g. imx quantize -m model.gguf -o out.gguf Q4_K_M, or "
                        "--target-size MiB)");
        }
        if (target && o->text.empty()) {
            throw Error("--target-size/--target-bpw need -f TEXT: calibration text to measure each tensor's effect on");
        }
        if (!target && (!o->recipe_file.empty() || !o->html.empty())) {
            throw Error("--recipe and --html go with --target-size or --target-bpw");
        }
        for (const CLI::Option * given : target_only) {
            if (!target && given->count() > 0) {
                throw Error(given->get_name() + " goes with --target-size or --target-bpw");
            }
        }
        const bool auto_prior = o->prior_weight_text == "auto";
        if (!auto_prior) {
            char * end = nullptr;
            o->prior_weight = std::strtod(o->prior_weight_text.c_str(), &end);
            if (end == o->prior_weight_text.c_str() || *end != 0 || !(o->prior_weight >= 0)) {
                throw Error("--prior-weight '" + o->prior_weight_text + "': expected a number of tokens >= 0, or auto");
            }
            if (o->prior_target == "auto") {
                throw Error("--prior auto chooses the target with the weight: give --prior-weight auto too");
            }
        } else if (o->prior_target == "all-experts") {
            throw Error("--prior all-experts takes a number for --prior-weight (auto cross-fits the other targets)");
        }
        o->imatrix = o->imatrix_parts.empty() ? "" : o->imatrix_parts[0];
        if ((o->prior_weight > 0 || auto_prior) && o->imatrix.empty() && o->text.empty()) {
            throw Error("--prior-weight needs an --imatrix (or -f TEXT) to weigh against");
        }
        if (auto_prior && o->imatrix_parts.size() < 2 && !o->imatrix.empty()) {
            throw Error("--prior-weight auto needs parts of the text to cross-fit: --imatrix part1.gguf --imatrix "
                        "part2.gguf (imx collect --shard 1/2 and --shard 2/2)");
        }
        // with --keep-split the parts are written under the output's name without ".gguf" (as llama-quantize)
        const std::string written_as = q.keep_split && q.output.ends_with(".gguf") ? q.output.substr(0, q.output.size() - 5)
                                                                                    : q.output;
        prepare_outputs({written_as, o->recipe_file, o->html});
        if (o->sequential && (o->method != "hessian" || o->text.empty())) {
            throw Error("--sequential goes with --method hessian and -f TEXT (the calibration text run through the "
                        "quantized layers)");
        }
        if (o->gate_weights && (o->method != "hessian" || o->text.empty() || (!o->imatrix.empty() && !o->sequential))) {
            throw Error("--gate-weights goes with --method hessian and -f TEXT (it changes the expert covariances this "
                        "run collects; an --imatrix file's were weighted or not when collected: imx collect --gate-weights)");
        }
        engine::ActivationCollector::weight_experts_by_gates(o->gate_weights);
        if ((target || o->sequential) && !std::filesystem::is_regular_file(o->text)) {
            throw Error(o->text + ": no such file");
        }
        engine::init_llama(o->verbose);
        const Prior prior{o->prior_weight, parse_prior_target(o->prior_target == "auto" ? "one" : o->prior_target)};
        QuantWeights weights;
        Imatrix im;
        const bool by_blocks = o->imatrix.empty() && !o->text.empty() && !target;
        if (by_blocks) {
            if (!std::filesystem::is_regular_file(o->text)) {
                throw Error(o->text + ": no such file");
            }
            run_by_blocks(*o);
            return;
        }
        const bool collect_here = target && o->imatrix.empty();  // one command: the statistics collected first
        // the search block by block: one block's covariances at a time, the output by quantize_by_blocks
        const bool searched_by_blocks = collect_here && search_by_blocks(*o);
        if (target && (o->save_every > 0 || o->resume)) {
            throw Error(std::string(o->save_every > 0 ? "--save-every" : "--resume") +
                        " does not go with --target-size: the search keeps its measurements in --cache-dir as it "
                        "goes, and the same command run again resumes from them");
        }
        for (const auto & [given, flag] : {std::pair{o->collect_chunks > 0 && !collect_here, "--chunks"},
                                           {o->save_every > 0, "--save-every"}, {o->resume, "--resume"},
                                           {o->refit_norms && !searched_by_blocks, "--refit-norms"},
                                           {!o->save_imatrix.empty() && !collect_here, "--save-imatrix"}}) {
            if (given) {
                throw Error(std::string(flag) + " goes with a block-by-block run (-f TEXT without --imatrix" +
                            (target ? ", --method hessian)" : ")"));
            }
        }
        if (searched_by_blocks) {
            refuse_for_blocks(*o);  // what its block-by-block output cannot write, now
        }
        if (collect_here && auto_prior) {
            throw Error("--prior-weight auto cross-fits parts of an imatrix (--imatrix part1 --imatrix part2): give a "
                        "number with --target-size and no --imatrix, or collect the parts first");
        }
        std::unique_ptr<engine::BlockErrors> block_errors;
        if (collect_here) {
            if (searched_by_blocks) {
                block_errors = std::make_unique<engine::BlockErrors>(target_options(*o, im));
            }
            im = collect_for_target(*o, block_errors.get());
        } else if (o->method == "hessian" && o->imatrix.empty()) {
            throw Error("--method hessian needs an --imatrix with covariances (imx collect --covariance), or -f TEXT "
                        "to collect them block by block in the same run");
        }
        if (!o->imatrix.empty() || collect_here) {
            std::vector<Imatrix> parts;
            if (!collect_here) {
                im = merge_files(o->imatrix_parts, o->legacy_chunk_size, auto_prior ? &parts : nullptr);
            }
            if (auto_prior) {
                choose_prior(*o, parts);
            }
            if (prior.target == PriorTarget::all_experts && im.all_experts.empty()) {
                throw Error(o->imatrix + ": holds no all-experts statistics; collect them with imx collect --all-experts");
            }
            if (o->method == "hessian" && im.covariances.empty() && !searched_by_blocks) {
                throw Error(o->imatrix + ": holds no covariance; collect one with imx collect --covariance");
            }
            weights = quant_weights(im, prior, engine::model_tensor_shapes(q.model),
                                    auto_prior ? &o->chosen_priors : nullptr);
            warn_about_unseen(im, weights, prior, collect_here ? "the statistics collected from " + o->text : o->imatrix);
            for (const std::string & note : weights.notes) {
                std::fprintf(stderr, "imx: %s\n", note.c_str());
            }
            q.weights = &weights;
            q.imatrix_file = collect_here ? (o->save_imatrix.empty() ? "imx quantize: collected in the run" : o->save_imatrix)
                                          : o->imatrix;
            q.imatrix_datasets = im.meta.datasets;
            q.imatrix_chunks = im.meta.chunk_count;
        }
        if (target) {
            run_target(*o, im, block_errors.get());
            return;
        }
        Progress bar("imx quantize");
        q.progress = [&](int done, int total) { bar.update((uint64_t) done, (uint64_t) total, "tensor"); };
        std::vector<engine::HessianTensorReport> reports;
        std::vector<engine::SequentialLayerReport> sequential;
        if (o->method == "hessian") {
            o->hessian.threads = q.threads;
            q.finish = [&](const std::string & written) {
                Progress hbar("imx quantize: hessian");
                reports = engine::hessian_reencode(q.model, written, im, o->hessian, [&](int done, int total) {
                    hbar.update((uint64_t) done, (uint64_t) total, "matrix");
                });
                if (o->sequential) {
                    im.covariances.clear();  // done with: their memory goes to the layers' new ones (8B layer: 2 GB)
                    Progress sbar("imx quantize: sequential");
                    const engine::SequentialOptions so{o->text, o->ctx, o->sequential_chunks,
                                                       (uint64_t) (o->sequential_budget_mib * 1048576.0)};
                    sequential = engine::sequential_reencode(q.model, written, o->hessian, so, [&](int done, int total) {
                        sbar.update((uint64_t) done, (uint64_t) total, "layer");
                    });
                }
            };
        }
        engine::quantize_model(q);
        const double secs = bar.seconds();
        const HessianSummary hs = summarize(reports);
        if (o->method == "hessian") {
            print_hessian_reports(reports, o->verbose, o->hessian.row_scales);
        }
        for (const auto & l : sequential) {
            const HessianSummary ls = summarize(l.tensors);
            std::fprintf(stderr, "imx quantize: sequential: layer %d: %lld tensors re-encoded toward its shifted targets "
                                 "(%lld of %lld rows changed, error %.1f%% below the first pass's), %.1f s through both "
                                 "models\n",
                         l.layer, (long long) ls.tensors, (long long) ls.rows_improved, (long long) ls.rows,
                         ls.loss_diagonal > 0 ? 100.0 * (1.0 - ls.loss_final / ls.loss_diagonal) : 0.0,
                         l.seconds_collect);
        }
        const std::vector<std::string> written = engine::quantized_paths(q);
        const uint64_t in_size = engine::model_file_bytes(q.model), out_size = engine::model_file_bytes(written[0]);
        const std::string parts = written.size() > 1 ? " (" + std::to_string(written.size()) + " parts)" : "";
        std::fprintf(stderr, "imx quantize: %s -> %s%s (%s), %.2f MiB -> %.2f MiB in %s\n", q.model.c_str(),
                     written[0].c_str(), parts.c_str(), q.type.c_str(), in_size / 1048576.0, out_size / 1048576.0,
                     clock_str(secs).c_str());
        if (o->json) {
            nlohmann::ordered_json j;
            j["model"] = q.model;
            j["output"] = written[0];
            j["outputs"] = written;
            j["type"] = q.type;
            j["imatrix"] = o->imatrix;
            j["prior"] = prior_target_name(prior.target);
            if (auto_prior) {
                j["prior_weight"] = "auto";
                for (const auto & [name, p] : o->chosen_priors) {
                    j["priors"][name] = {{"weight", p.weight}, {"target", prior_target_name(p.target)}};
                }
            } else {
                j["prior_weight"] = prior.weight;
            }
            j["matrices"] = weights.n_matrices;
            j["matrices_unseen"] = weights.n_unseen;
            j["zero_groups_floored"] = weights.n_zero_groups;
            j["input_bytes"] = in_size;
            j["output_bytes"] = out_size;
            j["seconds"] = secs;
            j["method"] = o->method;
            if (!sequential.empty()) {
                int64_t tensors = 0;
                for (const auto & l : sequential) {
                    tensors += (int64_t) l.tensors.size();
                }
                j["sequential_layers"] = sequential.size();
                j["sequential_tensors"] = tensors;
            }
            if (o->method == "hessian") {
                add_hessian_json(j, hs);
            }
            std::printf("%s\n", j.dump(2).c_str());
        }
    };
}

}  // namespace imx::cli
