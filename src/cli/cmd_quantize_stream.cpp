// imx quantize -m MODEL -f TEXT -o OUT TYPE [--method hessian [--sequential]]: collection and quantization in one
// run, block by block (engine/encode/stream_quantize.h); the options, one progress line, the summary.
#include "progress.h"
#include "commands.h"
#include "quantize_options.h"
#include "core/error.h"
#include "core/math/quant_weights.h"
#include "core/format/imatrix_file.h"
#include "engine/collect/collect.h"
#include "engine/collect/stream_collect.h"
#include "engine/encode/stream_quantize.h"
#include "engine/encode/type_search.h"
#include "engine/model/tensor_file.h"
#include "engine/stream/block_model.h"
#include "engine/stream/head_statistics.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>

namespace imx::cli {

engine::StreamQuantizeOptions stream_options(const QuantizeCommand & o) {
    engine::StreamQuantizeOptions s;
    s.quantize = o.q;
    s.prior = Prior{o.prior_weight, parse_prior_target(o.prior_target)};
    s.text_file = o.text;
    s.chunk_size = o.ctx;
    s.max_chunks = o.collect_chunks;
    s.n_gpu_layers = o.n_gpu_layers;
    s.hessian = o.method == "hessian";
    s.sequential = o.sequential;
    s.hessian_options = o.hessian;
    s.covariance_budget = (uint64_t) (o.block_budget_mib * 1048576.0);
    s.verbose = o.verbose;
    s.refit_norms = o.refit_norms;
    return s;
}

void refuse_for_blocks(const QuantizeCommand & o) {
    if (o.hessian.row_scales) {
        throw Error("--output-scales goes with --imatrix (the two-step path)");
    }
    if (o.sequential_chunks > 0) {
        throw Error("--sequential-chunks goes with --imatrix (the two-step path); here --chunks sets the text's chunks");
    }
    engine::refuse_for_blocks(stream_options(o));
}

bool search_by_blocks(const QuantizeCommand & o) {
    return o.imatrix.empty() && o.method == "hessian" &&
           engine::block_streaming_supported(engine::TensorTable(o.q.model));
}

void run_by_blocks(QuantizeCommand & o) {
    if (o.prior_weight_text == "auto" || o.prior_target == "auto") {
        throw Error("--prior-weight auto cross-fits parts of an imatrix (--imatrix part1 --imatrix part2): give a "
                    "number with -f TEXT, or collect the parts first");
    }
    refuse_for_blocks(o);
    engine::StreamQuantizeOptions s = stream_options(o);
    s.save_every_block = o.save_every > 0;
    s.resume = o.resume;
    s.imatrix_output = o.save_imatrix;
    if (!s.imatrix_output.empty()) {
        prepare_outputs({s.imatrix_output});
    }
    std::unique_ptr<Progress> bar;
    s.progress = [&](int block, int blocks, uint64_t done, uint64_t total) {
        if (!bar) {
            bar = std::make_unique<Progress>("imx quantize", done - 1);
        }
        char detail[48];
        std::snprintf(detail, sizeof detail, "block %d/%d", block + 1, blocks);
        bar->update(done, total, "pass", detail);
    };
    const engine::StreamQuantizeResult r = engine::quantize_by_blocks(s);
    const double secs = bar ? bar->seconds() : 0;
    if (s.hessian && !s.sequential) {  // --sequential's encoding is reported below
        print_hessian_reports(r.reports, o.verbose, false);
    }
    std::vector<engine::HessianTensorReport> blocks;  // --sequential's block tensors (the head is reported below)
    for (const engine::HessianTensorReport & t : r.sequential_reports) {
        if (t.name != engine::kOutputHead && t.name != engine::kTokenEmbedding) {
            blocks.push_back(t);
        }
    }
    const HessianSummary seq = summarize(blocks);
    if (s.sequential) {
        std::fprintf(stderr, "imx quantize: sequential: %lld tensors encoded toward their shifted targets (%lld rows, "
                             "output error %.6g), in %d stages a block: each matrix after those its input depends on\n",
                     (long long) seq.tensors, (long long) seq.rows, seq.loss_final, r.sequential_stages);
    }
    const engine::HessianTensorReport * head = nullptr;  // the output head, re-encoded after the last block
    for (const auto * list : {&r.reports, &r.sequential_reports}) {
        for (const engine::HessianTensorReport & t : *list) {
            head = t.name == engine::kOutputHead || t.name == engine::kTokenEmbedding ? &t : head;
        }
    }
    if (head) {
        std::fprintf(stderr, "imx quantize: output head (%s, %s): %lld of %lld rows re-encoded with its input's covariance%s%s, "
                             "error %.1f%% below llama-quantize's encoding\n",
                     head->name.c_str(), head->type.c_str(), (long long) head->rows_improved, (long long) head->rows,
                     head->name == engine::kTokenEmbedding ? " and the lookup's own error (tied)" : "",
                     s.sequential ? " (toward the float model's outputs from the quantized stream)" : "",
                     head->loss_diagonal > 0 ? 100.0 * (1.0 - head->loss_final / head->loss_diagonal) : 0.0);
    }
    if (s.refit_norms) {
        std::fprintf(stderr, "imx quantize: %d norms re-fitted to their quantized readers (output error %.4g lower)\n",
                     r.norms_refit, r.norm_gain);
    }
    const uint64_t in_size = engine::model_file_bytes(o.q.model), out_size = std::filesystem::file_size(o.q.output);
    std::fprintf(stderr, "imx quantize: block by block over %u chunks of %s%s: %d blocks (%d from the checkpoint); "
                         "%.1f s through the blocks, %.1f s encoding\n",
                 r.chunks, o.text.c_str(), o.sequential ? " (sequential: the float block, its stages, the final block)" : "", r.blocks,
                 r.blocks_resumed, r.seconds_passes, r.seconds_encode);
    std::fprintf(stderr, "imx quantize: %s -> %s (%s), %.2f MiB -> %.2f MiB in %s\n", o.q.model.c_str(),
                 o.q.output.c_str(), o.q.type.c_str(), in_size / 1048576.0, out_size / 1048576.0, clock_str(secs).c_str());
    if (o.json) {
        nlohmann::ordered_json j;
        j["model"] = o.q.model;
        j["output"] = o.q.output;
        j["type"] = o.q.type;
        j["text"] = o.text;
        j["chunks"] = r.chunks;
        j["blocks"] = r.blocks;
        j["blocks_resumed"] = r.blocks_resumed;
        j["method"] = o.method;
        j["sequential"] = o.sequential;
        j["matrices"] = r.matrices;
        j["matrices_unseen"] = r.matrices_unseen;
        j["input_bytes"] = in_size;
        j["output_bytes"] = out_size;
        j["seconds"] = secs;
        j["seconds_passes"] = r.seconds_passes;
        j["seconds_encode"] = r.seconds_encode;
        if (!s.sequential) {
            add_hessian_json(j, summarize(r.reports));
        } else {
            j["sequential_tensors"] = seq.tensors;
            j["sequential_stages"] = r.sequential_stages;
            j["sequential_error"] = seq.loss_final;  // under the shifted objective, every block tensor it encoded
        }
        if (head) {  // the errors under its objective (with --sequential, the shifted one)
            j["output_head"] = {{"type", head->type}, {"rows", head->rows}, {"rows_changed", head->rows_improved},
                                {"error_before", head->loss_diagonal}, {"error", head->loss_final}};
        }
        j["norms_refit"] = r.norms_refit;
        j["norm_gain"] = r.norm_gain;
        std::printf("%s\n", j.dump(2).c_str());
    }
}

Imatrix collect_for_target(QuantizeCommand & o, engine::BlockErrors * block_errors) {
    engine::CollectOptions c;
    c.model = o.q.model;
    c.text_file = o.text;
    c.output = o.q.output;  // names a checkpoint, which is never written
    c.chunk_size = o.ctx;
    c.threads = o.q.threads;
    c.n_gpu_layers = o.n_gpu_layers;
    c.max_chunks = o.collect_chunks;
    c.verbose = o.verbose;
    c.gate_weights = o.gate_weights;
    // block by block where the runner takes the architecture (the model read once); the search reads every
    // tensor's covariance after the collection (errors, probes, output), so they are all held at once and the
    // budget is for all of them: by default the memory this machine has free, less 4 GiB for the rest of the run
    c.by_blocks = engine::block_streaming_supported(engine::TensorTable(o.q.model));
    const uint64_t gib = 1ull << 30, free_memory = available_memory();
    const uint64_t budget = o.block_budget_given || free_memory == 0 || block_errors
                                ? (uint64_t) (o.block_budget_mib * 1048576.0)
                                : std::max(gib, free_memory - std::min(free_memory, 4 * gib));
    c.covariance_budget = o.method == "hessian" ? budget : 0;
    // with block_errors each block's covariances go into its errors and are freed (one block's held at a time);
    // their shapes are kept for the summary
    Imatrix shapes;
    uint64_t most_held = 0;
    if (block_errors) {
        c.on_block = [&](int b, Imatrix & block) {
            uint64_t held = 0;
            for (Covariance & cv : block.covariances) {
                std::vector<double> values = std::move(cv.values), cross = std::move(cv.cross);
                held += covariance_bytes(cv.n_cols, cv.block, cv.n_mat) * (cross.empty() ? 1 : 2);
                shapes.covariances.push_back(cv);
                cv.values = std::move(values);
                cv.cross = std::move(cross);
            }
            for (const auto & [name, t] : block.tensors) {
                shapes.tensors[name] = t;
            }
            most_held = std::max(most_held, held);
            (*block_errors)(b, block);
        };
    }
    // the output head's statistics too, where the output re-encodes it with its covariance (kept by block_errors
    // beside the blocks'; not in the search's imatrix, whose measurements and saved file stay as they were)
    c.process_output = block_errors && c.by_blocks && o.method == "hessian";
    c.tied_head = c.process_output;
    if (!o.save_imatrix.empty()) {
        prepare_outputs({o.save_imatrix});
    }
    Progress bar("imx quantize: collect");
    const auto on_progress = [&](const engine::CollectProgress & p) {
        char detail[48] = "";
        if (p.blocks > 0) {
            std::snprintf(detail, sizeof detail, "block %d/%d", p.block + 1, p.blocks);
        }
        bar.update(p.chunks_done, p.chunks_total, "chunks", detail);
    };
    engine::CollectResult r = c.by_blocks ? engine::collect_by_blocks(c, on_progress) : engine::collect(c, on_progress);
    if (c.process_output) {
        block_errors->keep_head(r.imatrix);
    }
    if (!o.save_imatrix.empty()) {
        save_imatrix(r.imatrix, o.save_imatrix, ImatrixFormat::gguf);
    }
    std::fprintf(stderr, "imx quantize: collected %u chunks of %s%s in %s\n", r.imatrix.meta.chunk_count, o.text.c_str(),
                 block_errors ? " with covariances, each block's candidate errors measured as it was done"
                 : c.covariance_budget > 0 ? " with covariances" : "", clock_str(bar.seconds()).c_str());
    if (block_errors) {
        std::fprintf(stderr, "imx quantize: covariances, block by block: %s; at most %.0f MiB held at once (budget for "
                             "a block %.0f MiB); errors of %d tensors in %.1f s; %s\n",
                     covariance_summary(shapes, "over all blocks").c_str(), most_held / 1048576.0,
                     c.covariance_budget / 1048576.0, block_errors->tensors(), block_errors->seconds(),
                     block_errors->spill_note().c_str());
    } else if (c.covariance_budget > 0) {  // what the budget held, and what whole ones everywhere would have needed
        const uint64_t whole = whole_covariance_bytes(r.imatrix);
        std::fprintf(stderr, "imx quantize: covariances: %s (budget %.0f MiB; whole for every input: %.0f MiB%s)\n",
                     covariance_summary(r.imatrix).c_str(), c.covariance_budget / 1048576.0, whole / 1048576.0,
                     whole > c.covariance_budget ? ", over the budget: --covariance-budget MiB on a machine that has it"
                                                 : "");
    }
    return std::move(r.imatrix);
}

}  // namespace imx::cli
