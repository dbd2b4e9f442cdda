// imx quantize --target-size / --target-bpw: the type of every tensor chosen by measurement, at a file size.
//
// 1. Errors. Every tensor at every candidate type T, in memory (engine/encode/candidate_errors.h: the weights
//    read once, a sample of each matrix's rows encoded by the encoder that writes the file): its output error
//    (w − q)ᵀ H (w − q) summed over rows, with H the input covariance where the Hessian encoder uses one and the
//    imatrix diagonal elsewhere (unit weights where there is no imatrix: the token embedding).
// 2. Sensitivity. Each tensor alone is quantized at a probe type P (all others as in the model) and the
//    KL-divergence of that model against the original is measured on a few chunks of the calibration text
//    (--probe-groups role: each role over all layers at once, its KLD shared in proportion to the errors).
//    Damage is taken as proportional to the output error, so tensor t at type T is predicted to cost
//        damage_t(T) = KLD_t(P) · err_t(T) / err_t(P)
//    and the model's KLD is predicted as the sum over tensors.
// 3. Allocation (core/type_allocation): the least predicted damage within the size, with its optimality gap.
// 4. The output is written by llama_model_quantize with the choice as --tensor-type overrides (plus the
//    Hessian pass, and with --sequential the layer-by-layer pass), so llama-quantize given the printed recipe
//    makes the same types (not the Hessian bytes); its KLD is measured on the same calibration chunks.
// Block by block (`by_blocks`: the statistics collected here by engine/collect/stream_collect.h): no covariance
// is held past its block — step 1 runs for each block's tensors as the collection finishes the block
// (BlockErrors), and step 4 is quantize_by_blocks with the choice — from each block's statistics kept on disk
// meanwhile (core/format/block_spill.h: 10.5 GiB at the Qwen3-1.7B shape), or where the disk cannot take them
// and with --sequential from its own pass over the text (--sequential in O(L) block passes) — so a whole
// model's search needs one block's covariances in memory, not all of them (an 8B model's are 61 GiB).
// Steps 1 and 2 are cached per model, imatrix, encoder settings and text: a second target size costs one
// quantization.
#pragma once

#include "core/format/block_spill.h"
#include "core/imatrix.h"
#include "core/math/type_allocation.h"
#include "engine/encode/candidate_errors.h"
#include "engine/encode/hessian_encoder.h"
#include "engine/encode/quantize.h"
#include "engine/encode/sequential_encoder.h"
#include "engine/encode/stream_quantize.h"

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace imx::engine {

// Calibration chunks a probe runs where --sensitivity-chunks is not given: 8 with a probe per tensor (4 lost 2% of
// KLD on WikiText-2 there), 4 with probes by role (each over every layer: level with 8 on both shared models'
// held-out text, docs/allocation.md).
constexpr int kProbeChunksByTensor = 8;
constexpr int kProbeChunksByRole = 4;

// The candidate set when none is given: k-quants and IQ types from 1.56 to 8.5 bits per weight.
std::vector<std::string> default_candidate_types();

struct TargetOptions {
    QuantizeOptions quantize;  // model, output, threads, weights and imatrix metadata; type and tensor_types unused
    double          target_bytes = 0;  // the whole file, or
    double          target_bpw = 0;    // bits per weight as llama-quantize prints them (tensor data / elements)
    std::vector<std::string> candidates;  // ggml type names
    std::string     probe_type = "q3_K";
    // "tensor": one probe per tensor; "role": one per role (blk.N.ffn_down.weight → ffn_down, all layers at
    // once), its KLD shared among the role's tensors in proportion to their errors at the probe type — a few
    // probes instead of hundreds for a real model; "auto": "tensor" up to 64 tensors, else "role".
    std::string     probe_groups = "auto";
    int64_t         error_rows = kErrorRows;  // rows of each matrix encoded for the errors (0: all; candidate_errors.h)
    const Imatrix * hessian = nullptr;    // set: --method hessian with this imatrix's covariances
    HessianOptions  hessian_options;
    // set (with hessian): the output, once written, is encoded again layer by layer (--sequential,
    // engine/encode/sequential_encoder.h). The measurements stay the Hessian encoder's: the sequential pass is
    // applied to the chosen mix only.
    std::optional<SequentialOptions> sequential;
    // set (with hessian): block by block, as above; `hessian` then holds no covariance (BlockErrors measured the
    // blocks' tensors with theirs) and the output is quantize_by_blocks(*by_blocks) with the chosen types, whose
    // `sequential` replaces the field above
    std::optional<StreamQuantizeOptions> by_blocks;
    std::string     text_file;  // calibration text for the sensitivities
    uint32_t        ctx = 512;
    // chunks a probe (and the output's measurement); 0: kProbeChunksByTensor with a probe per tensor,
    // kProbeChunksByRole with probes by role
    int             chunks = 0;
    std::string     cache_dir;
    std::string     cache_key;  // what else the measurements depend on (the prior's settings)
    // stage ("errors", "sensitivity", "quantize", "measure"), done, total
    std::function<void(const std::string &, int, int)> progress;
    // set (by blocks, without sequential): every block's statistics as the collection left them
    // (BlockErrors::spill), which the output reads instead of collecting them again
    const BlockSpill * spill = nullptr;
    // what BlockErrors measured during the collection, added to the result's figures
    double          block_error_seconds = 0;
    int             block_error_tensors = 0, block_error_types = 0;
};

struct TensorChoice {
    std::string name;
    std::string type;
    uint64_t    bytes = 0;
    double      damage = 0;  // predicted KLD share
};

struct StockMix {
    std::string name;  // a llama-quantize file type
    uint64_t    file_bytes = 0;
    double      damage = 0;  // predicted from the same measurements
};

struct TargetResult {
    std::vector<TensorChoice> tensors;
    std::string               base_type;  // the file type given to llama_model_quantize with the recipe
    std::vector<std::string>  recipe;     // --tensor-type arguments, REGEX=TYPE
    uint64_t    budget_bytes = 0, file_bytes = 0, predicted_file_bytes = 0;
    double      bpw = 0;  // as llama-quantize prints it
    double      predicted_kld = 0, lower_bound = 0, measured_kld = 0;
    int         chunks = 0;
    double      seconds_errors = 0, seconds_sensitivity = 0, seconds_solve = 0, seconds_total = 0;
    // measured in this run (the rest came from the cache): candidate types and tensors for the errors, probes
    int         error_types = 0, error_tensors = 0, probes = 0;
    std::string cache_file;
    std::vector<FrontierPoint> frontier;  // file bytes, predicted KLD
    std::vector<StockMix>      stock;
    std::vector<HessianTensorReport> hessian_reports;
    std::vector<SequentialLayerReport> sequential_reports;
    int         norms_refit = 0;  // by blocks with --refit-norms
};

// Checks the target against the candidates' smallest and largest sizes before any work (imx::Error, one line),
// then measures, allocates and writes o.quantize.output.
TargetResult quantize_to_target(const TargetOptions & o);

// Step 1 for one block during a block-by-block collection (CollectOptions::on_block): the candidate errors of the
// block's tensors, with the block's whole covariances and the imatrix weights of its own sums (the prior's targets
// are per tensor), into the search's cache — which quantize_to_target then reads (its cache key must not depend on
// the collected numbers: TargetOptions::cache_key names the collection's settings instead); then the covariances
// are freed.
class BlockErrors {
public:
    explicit BlockErrors(const TargetOptions & o);
    ~BlockErrors();
    void operator()(int block, Imatrix & stats);
    // Moves the output head's statistics out of the collection (collect --process-output, tied_head), measures
    // the head's candidate errors with them as the output will encode it (written without imatrix weights, then
    // re-encoded under its input's covariance; a head tied to token_embd under the lookup's term too), and keeps
    // them after the blocks' for that output; not left in the search's imatrix or its saved file.
    void keep_head(Imatrix & collection);
    // the blocks' statistics kept on disk for the output (without --sequential, whose passes collect anew); null
    // where not kept, or dropped: spill_note() says why
    const BlockSpill * spill() const { return spill_ && spill_->why().empty() ? spill_.get() : nullptr; }
    std::string spill_note() const;
    double seconds() const { return seconds_; }
    int    tensors() const { return tensors_; }
    int    types() const { return types_; }

private:
    class Search;
    TargetOptions           o_;
    std::unique_ptr<Search> search_;
    std::unique_ptr<BlockSpill> spill_;
    double                  seconds_ = 0;
    int                     tensors_ = 0, types_ = 0;
};

}  // namespace imx::engine
