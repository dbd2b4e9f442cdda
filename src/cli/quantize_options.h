// imx quantize's options, shared by the command (cmd_quantize.cpp) and its --target-size path
// (cmd_quantize_target.cpp).
#pragma once

#include "eval_options.h"
#include "core/format/imatrix_file.h"
#include "core/math/quant_weights.h"
#include "engine/encode/hessian_encoder.h"
#include "engine/encode/quantize.h"
#include "engine/encode/stream_quantize.h"
#include "engine/encode/type_search.h"

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

namespace imx::cli {

struct QuantizeCommand {
    engine::QuantizeOptions q;
    std::string             imatrix;
    std::vector<std::string> imatrix_parts;  // --imatrix given more than once: parts of one text, added
    std::string             prior_target = "one";
    std::string             prior_weight_text = "0";
    double                  prior_weight = 0;
    std::map<std::string, Prior> chosen_priors;  // --prior-weight auto
    uint32_t                legacy_chunk_size = kDefaultLegacyChunkSize;
    bool                    json = false;
    bool                    verbose = false;
    std::string             method = "diagonal";
    engine::HessianOptions  hessian;
    // --sequential: layer by layer again through the quantized file (engine/sequential_encoder.h), on -f's text
    bool                    sequential = false;
    int                     sequential_chunks = -1;
    double                  sequential_budget_mib = 8192;
    // block by block (-f TEXT without --imatrix: engine/stream/stream_quantize.h)
    int                     collect_chunks = -1;       // --chunks: of -f's text
    int                     save_every = 0;            // > 0: a checkpoint after every block
    bool                    resume = false;
    std::string             save_imatrix;              // also write the collected imatrix
    bool                    refit_norms = false;       // --refit-norms
    // --gate-weights: expert covariances collected here weighted by the router (ActivationCollector)
    bool                    gate_weights = false;
    double                  block_budget_mib = 8192;   // --covariance-budget: one block's covariances
    bool                    block_budget_given = false;
    int                     n_gpu_layers = 99;
    // --target-size / --target-bpw
    double                   target_mib = 0;
    double                   target_bpw = 0;
    std::vector<std::string> candidates = engine::default_candidate_types();
    std::string              text;
    uint32_t                 ctx = 512;
    int                      chunks = 0;  // --sensitivity-chunks; 0: by the probe groups (type_search.h)
    std::string              probe_type = "q3_K";
    std::string              probe_groups = "auto";
    int64_t                  error_rows = engine::kErrorRows;
    std::string              cache_dir = default_cache_dir();
    std::string              recipe_file;
    std::string              html;
};

// --target-size / --target-bpw: the search's options (`im`: the imatrix its weights and covariances come from,
// collected or read), and the search, the output and the recipe that makes the same file upstream.
engine::TargetOptions target_options(const QuantizeCommand & o, const Imatrix & im);
void run_target(QuantizeCommand & o, const Imatrix & im, const engine::BlockErrors * block_errors);

// The Hessian pass's totals over its tensors, and those totals as --json fields.
struct HessianSummary {
    int64_t tensors = 0, rows = 0, rows_improved = 0, pooled = 0;
    double  loss_diagonal = 0, loss_final = 0;
    bool    compared = true;  // every tensor against a diagonal encoding (not --sequential's first encoding)
};
HessianSummary summarize(const std::vector<engine::HessianTensorReport> & reports);
void add_hessian_json(nlohmann::ordered_json & j, const HessianSummary & hs);

// The Hessian pass's summary line on stderr, and with `verbose` a line per tensor.
void print_hessian_reports(const std::vector<engine::HessianTensorReport> & reports, bool verbose, bool row_scales);

// -f TEXT without --imatrix: collection and quantization in one run, block by block.
void run_by_blocks(QuantizeCommand & o);
// The block-by-block quantization's options from the command's (no progress, checkpoints or --save-imatrix).
engine::StreamQuantizeOptions stream_options(const QuantizeCommand & o);
// What the block-by-block quantization does not take (alone, or as the type search's output), one line each,
// before any work.
void refuse_for_blocks(const QuantizeCommand & o);
// --target-size without --imatrix and --method hessian, an architecture the block runner takes: the search
// block by block (engine/encode/type_search.h), one block's covariances held at a time.
bool search_by_blocks(const QuantizeCommand & o);
// --target-size without --imatrix: the statistics (with covariances for --method hessian) collected from -f's
// text first, block by block where the architecture allows; --chunks and --save-imatrix apply. With
// block_errors (search_by_blocks), each block's candidate errors are measured as the block is done and its
// covariances freed: the result holds none.
Imatrix collect_for_target(QuantizeCommand & o, engine::BlockErrors * block_errors);

}  // namespace imx::cli
