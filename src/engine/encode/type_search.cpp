#include "engine/encode/type_search.h"

#include "engine/encode/candidate_errors.h"
#include "engine/encode/model_writer.h"
#include "engine/encode/stream_quantize.h"
#include "engine/stream/block_model.h"
#include "engine/stream/head_statistics.h"
#include "core/math/quant_weights.h"
#include "engine/evaluate/evaluate.h"
#include "engine/model/tensor_file.h"
#include "core/format/atomic_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/interrupt.h"
#include "core/math/parallel.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

namespace imx::engine {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr size_t kMostTensorProbes = 64;

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// a type name this search wrote itself (cache, recipe, llama-quantize's dry run)
ggml_type type_named(const std::string & name) { return parse_ggml_type(name, "type search"); }

double bits_per_weight(ggml_type t) { return 8.0 * (double) ggml_type_size(t) / (double) ggml_blck_size(t); }

// llama-quantize refuses these without imatrix data for the tensor (tensor_requires_imatrix at the pinned
// commit), except for the token embedding and the output head...
bool llama_needs_imatrix(ggml_type t) {
    return t == GGML_TYPE_IQ3_XXS || t == GGML_TYPE_IQ2_XXS || t == GGML_TYPE_IQ2_XS || t == GGML_TYPE_IQ2_S ||
           t == GGML_TYPE_IQ1_M || t == GGML_TYPE_IQ1_S;
}

bool is_embedding_or_head(const std::string & name) {
    return name == "output.weight" || (name.size() >= 17 && name.compare(name.size() - 17, 17, "token_embd.weight") == 0);
}

// ...which ggml's own quantizers of some of them then abort on (ggml_quantize_requires_imatrix).
bool can_take(const std::string & name, int64_t n_per_row, ggml_type t, const QuantWeights * weights) {
    const bool has_imatrix = weights && weights->tensors.count(name);
    return n_per_row % ggml_blck_size(t) == 0 && (has_imatrix || !ggml_quantize_requires_imatrix(t)) &&
           (has_imatrix || !llama_needs_imatrix(t) || is_embedding_or_head(name));
}

// "blk.0.attn_q.weight" → "^blk\.0\.attn_q\.weight$": this tensor and no other (llama-quantize searches).
std::string exact_pattern(const std::string & name) {
    std::string p = "^";
    for (char c : name) {
        if (std::string(".[]()*+?^$|{}\\").find(c) != std::string::npos) {
            p += '\\';
        }
        p += c;
    }
    return p + "$";
}

struct Tensor {
    std::string            name;
    ggml_type              source = GGML_TYPE_F16;
    int64_t                n_per_row = 0, rows = 0, rows_per_matrix = 0;
    uint64_t               source_bytes = 0;
    std::vector<ggml_type> valid;  // candidate types llama-quantize would write as asked (no fallback)
    uint64_t bytes(ggml_type t) const { return (uint64_t) rows * ggml_row_size(t, n_per_row); }
};

// The measurements: errors per tensor and type, sensitivities per tensor. Saved atomically after each step so
// an interrupted search resumes where it stopped.
struct Cache {
    std::string path;
    json        j;

    Cache(const std::string & dir, const std::string & key) {
        if (dir.empty()) {
            return;
        }
        char hex[17];
        std::snprintf(hex, sizeof hex, "%016llx", (unsigned long long) fnv1a(kFnv1aOffset, key.data(), key.size()));
        path = dir + "/types-" + hex + ".json";
        std::error_code ec;
        if (fs::exists(path, ec)) {
            try {
                const std::vector<uint8_t> b = read_file(path);
                j = json::parse(b.begin(), b.end());
                if (j.value("key", "") != key) {
                    j = json::object();  // a hash collision: start over
                }
            } catch (const std::exception &) {
                j = json::object();  // unreadable: measure again
            }
        }
        j["key"] = key;
    }
    void save() const {
        if (path.empty()) {
            return;
        }
        std::error_code ec;
        fs::create_directories(fs::path(path).parent_path(), ec);
        write_text_atomic(path, j.dump());
    }
    json & tensor(const std::string & name) { return j["tensors"][name]; }
    bool has_error(const std::string & name, ggml_type t) const {
        return j.contains("tensors") && j["tensors"].contains(name) && j["tensors"][name].contains("errors") &&
               j["tensors"][name]["errors"].contains(ggml_type_name(t));
    }
};

std::string file_stamp(const std::string & path) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    const auto time = fs::last_write_time(path, ec).time_since_epoch().count();
    return fs::weakly_canonical(path, ec).string() + ":" + std::to_string(size) + ":" + std::to_string(time);
}

// A file type whose name llama-quantize knows for a base type (Q3_K → Q3_K_M).
std::string file_type_for(ggml_type t) {
    std::string name = ggml_type_name(t);
    std::transform(name.begin(), name.end(), name.begin(), ::toupper);
    for (const std::string & known : quant_type_names()) {
        if (known == name) {
            return name;
        }
    }
    return "Q8_0";
}

}  // namespace

std::vector<std::string> default_candidate_types() {
    return {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "q2_K", "iq3_xxs", "iq3_s", "q3_K",
            "iq4_xs", "q4_K", "q5_K", "q6_K", "q8_0"};
}

namespace {

// One search, stage by stage: the tensors and their candidates, the check of the target, the measurements
// (cached), the allocation, llama-quantize's mixes for comparison, and the output.
class TargetSearch {
public:
    explicit TargetSearch(const TargetOptions & o)
        : o_(o), model_(o.quantize.model), src_(o.quantize.model),
          threads_(o.quantize.threads > 0 ? o.quantize.threads : (int) std::max(1u, std::thread::hardware_concurrency())),
          by_bpw_(o.target_bpw > 0), align_(src_.alignment()), cache_("", "") {}

    TargetResult run();
    // step 1 for the tensors of one block collected by blocks (BlockErrors); the number measured, and the
    // distinct types measured in all blocks so far into `types`
    int measure_block(Imatrix & stats, std::set<ggml_type> & types);
    // step 1 for the output head after the blocks (BlockErrors::keep_head): its statistics as the output's
    // encoder takes them (a tied head's with the lookup's term); the number measured (0 or 1)
    int measure_head(const Imatrix & head, std::set<ggml_type> & types);

private:
    void select_tensors();
    void store_errors(const std::string & name, const std::map<ggml_type, CandidateError> & errors);
    std::vector<ggml_type> candidates_and_probe() const;
    CandidateTensor unmeasured(const Tensor & t, const std::vector<ggml_type> & of, const QuantWeights * weights,
                               std::set<ggml_type> & types) const;
    void measure(const std::vector<CandidateTensor> & todo, const QuantWeights * weights, const Imatrix * hessian,
                 const std::function<void()> & each = {});
    void check_target() const;
    void open_cache();
    void choose_probes();
    void measure_errors();
    uint64_t fixed_file_bytes() const;
    void measure_sensitivities(const Evaluator & eval);
    std::string group_of(const Tensor & t) const;
    bool hessian_metric(const Tensor & t) const;
    double error_of(const Tensor & t, ggml_type c) const;
    double probe_error_of(const Tensor & t, ggml_type p) const;
    bool by_role() const;
    int probe_chunks() const;
    double damage(const Tensor & t, ggml_type c) const;
    std::vector<TensorTypeOptions> options(bool with_damage) const;
    void allocate();
    void add_stock_mixes();
    void write_output(const Evaluator & eval);
    void write_by_blocks();

    uint64_t stored(uint64_t bytes) const { return by_bpw_ ? bytes : (uint64_t) GGML_PAD(bytes, align_); }
    double target_bytes() const { return by_bpw_ ? o_.target_bpw * (double) n_elements_ / 8.0 : o_.target_bytes; }
    std::string show(double bytes) const {
        char s[64];
        if (by_bpw_) {
            std::snprintf(s, sizeof s, "%.3f bpw", bytes * 8.0 / (double) n_elements_);
        } else {
            std::snprintf(s, sizeof s, "%.2f MiB", bytes / 1048576.0);
        }
        return s;
    }
    bool takes(const Tensor & t, ggml_type c) const { return can_take(t.name, t.n_per_row, c, o_.quantize.weights); }
    QuantizeOptions scratch_options() const;
    HessianOptions hessian_options() const {
        HessianOptions h = o_.hessian_options;
        h.threads = threads_;
        return h;
    }

    const TargetOptions &            o_;
    const std::string &              model_;
    const TensorTable                src_;
    const int                        threads_;
    const bool                       by_bpw_;
    const size_t                     align_;
    std::vector<ggml_type>           candidates_;
    std::vector<Tensor>              tensors_;
    int64_t                          n_elements_ = 0;
    uint64_t                         all_source_bytes_ = 0;
    Cache                            cache_;
    std::map<std::string, ggml_type> probe_of_;
    std::vector<ggml_type>           measured_;  // the candidates and the probe types
    std::string                      scratch_;
    std::vector<TensorTypeOptions>   items_;
    std::map<std::string, double>    group_probe_error_;  // Σ of the group's errors at their probe types
    TargetResult                     res_;
    bool                             collecting_ = false;  // in BlockErrors: no imatrix weights yet
    ModelShapes                      shapes_;
};

TargetResult TargetSearch::run() {
    const auto t_start = std::chrono::steady_clock::now();
    select_tensors();
    check_target();
    open_cache();
    choose_probes();
    scratch_ = temporary_path(o_.quantize.output);

    const auto t_errors = std::chrono::steady_clock::now();
    measure_errors();
    res_.seconds_errors = seconds_since(t_errors) + o_.block_error_seconds;

    EvalOptions eo;
    eo.text_file = o_.text_file;
    eo.ctx = o_.ctx;
    eo.max_chunks = probe_chunks();
    eo.threads = threads_;
    eo.cache_dir = o_.cache_dir;
    const Evaluator eval(model_, eo);
    res_.chunks = (int) eval.chunks();
    const auto t_sens = std::chrono::steady_clock::now();
    measure_sensitivities(eval);
    res_.seconds_sensitivity = seconds_since(t_sens);

    const auto t_solve = std::chrono::steady_clock::now();
    allocate();
    res_.seconds_solve = seconds_since(t_solve);
    add_stock_mixes();
    write_output(eval);
    res_.seconds_total = seconds_since(t_start);
    return res_;
}

// What llama-quantize would quantize (its own dry run says), and the candidates each tensor takes as asked.
void TargetSearch::select_tensors() {
    for (const std::string & c : o_.candidates) {
        const ggml_type t = parse_ggml_type(c, "--candidates");
        if (!ggml_is_quantized(t) && t != GGML_TYPE_F16 && t != GGML_TYPE_BF16) {
            throw Error("--candidates: " + c + " is not a type a weight is stored in");
        }
        if (std::find(candidates_.begin(), candidates_.end(), t) == candidates_.end()) {
            candidates_.push_back(t);
        }
    }
    if (candidates_.empty()) {
        throw Error("--candidates: no type given");
    }
    parse_ggml_type(o_.probe_type, "--probe-type");  // a bad name fails now
    QuantizeOptions plan = o_.quantize;
    plan.type = "Q8_0";
    plan.tensor_types.clear();
    plan.weights = nullptr;
    const std::map<std::string, std::string> quantized = planned_types(plan);
    for (const std::string & name : src_.names()) {
        const ggml_tensor * st = src_.find(name);
        n_elements_ += ggml_nelements(st);
        all_source_bytes_ += ggml_nbytes(st);
        if (!quantized.count(st->name)) {
            continue;
        }
        Tensor t;
        t.name = st->name;
        t.source = st->type;
        t.n_per_row = st->ne[0];
        t.rows = ggml_nrows(st);
        t.rows_per_matrix = st->ne[1];
        t.source_bytes = ggml_nbytes(st);
        for (ggml_type c : candidates_) {
            if (takes(t, c)) {
                t.valid.push_back(c);
            }
        }
        if (t.valid.empty() && !collecting_) {
            throw Error(model_ + ": tensor " + t.name + " (rows of " + std::to_string(t.n_per_row) +
                        ") takes none of the candidate types as it is");
        }
        tensors_.push_back(std::move(t));
    }
    if (tensors_.empty()) {
        throw Error(model_ + ": no tensor llama-quantize would quantize");
    }
}

// Before any measurement: the file is what stays as it is plus the chosen tensors, each padded to the file's
// alignment; the header's few bytes of new metadata are not known yet, the rest is.
void TargetSearch::check_target() const {
    uint64_t fixed = by_bpw_ ? all_source_bytes_ : src_.file_bytes();
    for (const Tensor & t : tensors_) {
        fixed -= stored(t.source_bytes);
    }
    const auto items = options(false);
    const double least = (double) (fixed + smallest_allocation(items));
    const double most = (double) (fixed + largest_allocation(items));
    if (target_bytes() < least || target_bytes() > most) {
        throw Error("target " + show(target_bytes()) + " is outside what the candidate types can make of " + model_ +
                    ": " + show(least) + " (all at their smallest) to " + show(most) + " (all at their largest)");
    }
}

// The measurements depend on the model, the imatrix and the encoder's settings (a probe group's name says what it
// holds: a tensor's name, or a role without "blk.N.", so both kinds share one cache). The probes' chunk count is
// not in the key but in each probe's entry, beside its probe types: the errors do not depend on it, and on a
// large model they are the longest step to measure again.
void TargetSearch::open_cache() {
    // by blocks the imatrix is collected here and named by cache_key (its file, if saved, is written after)
    std::string key = "v5|rows " + std::to_string(o_.error_rows) + "|" + file_stamp(model_) + "|" +
                      (o_.by_blocks ? std::string("collected") : file_stamp(o_.quantize.imatrix_file)) + "|" + o_.cache_key +
                      "|text " + file_stamp(o_.text_file) + "|ctx " + std::to_string(o_.ctx);
    if (o_.hessian) {
        const auto & h = o_.hessian_options;
        key += "|hessian damp " + std::to_string(h.rounding.damp) + " prior " + std::to_string(h.prior_weight) +
               " refinements " + std::to_string(h.rounding.refinements) + " tol " +
               std::to_string(h.rounding.refine_tolerance) + " per-head " + std::to_string(h.per_head) + " only " +
               h.tensors;
    }
    cache_ = Cache(o_.cache_dir, key);
    res_.cache_file = cache_.path;
}

// The probe type, or for a tensor that cannot take it the candidate nearest to it in bits per weight.
void TargetSearch::choose_probes() {
    const ggml_type asked = parse_ggml_type(o_.probe_type, "--probe-type");
    measured_ = candidates_;
    for (const Tensor & t : tensors_) {
        ggml_type p = t.valid[0];
        for (ggml_type c : t.valid) {
            if (std::fabs(bits_per_weight(c) - bits_per_weight(asked)) <
                std::fabs(bits_per_weight(p) - bits_per_weight(asked))) {
                p = c;
            }
        }
        if (takes(t, asked)) {
            p = asked;
            if (std::find(measured_.begin(), measured_.end(), p) == measured_.end()) {
                measured_.push_back(p);
            }
        }
        probe_of_[t.name] = p;
    }
}

QuantizeOptions TargetSearch::scratch_options() const {
    QuantizeOptions q = o_.quantize;
    q.type = "Q8_0";  // a quantized file type, so that overrides apply; tensors not overridden get Q8_0
    q.output = scratch_;
    q.keep_split = false;  // one scratch file, whatever the output is
    q.progress = nullptr;
    q.tensor_types.clear();
    return q;
}

// 1. Every tensor at every measured type, in memory (engine/encode/candidate_errors.h), each tensor saved to
// the cache as it is done; then the bytes that do not depend on the types.
void TargetSearch::measure_errors() {
    std::vector<CandidateTensor> todo;
    std::set<ggml_type> types;
    for (const Tensor & t : tensors_) {
        CandidateTensor c = unmeasured(t, measured_, o_.quantize.weights, types);
        if (!c.types.empty()) {
            todo.push_back(std::move(c));
        }
    }
    int done = 0;
    if (o_.progress) {
        o_.progress("errors", 0, (int) todo.size());
    }
    measure(todo, o_.quantize.weights, o_.hessian, [&] {
        if (o_.progress) {
            o_.progress("errors", ++done, (int) todo.size());
        }
    });
    res_.error_types = (int) std::max(types.size(), (size_t) o_.block_error_types);  // the blocks' hold the rest's
    res_.error_tensors = (int) todo.size() + o_.block_error_tensors;
    if (!cache_.j.contains("fixed_bytes")) {
        cache_.j["fixed_bytes"] = fixed_file_bytes();
        cache_.save();
    }
}

void TargetSearch::store_errors(const std::string & name, const std::map<ggml_type, CandidateError> & errors) {
    for (const auto & [type, e] : errors) {
        json j;
        j["diag"] = e.diag;
        if (e.hessian >= 0) {
            j["hessian"] = e.hessian;
            j["hessian_of_diag"] = e.hessian_of_diag;
        }
        cache_.tensor(name)["errors"][ggml_type_name(type)] = j;
    }
    cache_.save();
}

// What step 1 measures during a block-by-block collection, before choose_probes: every candidate and the probe type.
std::vector<ggml_type> TargetSearch::candidates_and_probe() const {
    std::vector<ggml_type> types = candidates_;
    const ggml_type probe = parse_ggml_type(o_.probe_type, "--probe-type");
    if (std::find(types.begin(), types.end(), probe) == types.end()) {
        types.push_back(probe);
    }
    return types;
}

// The types of `of` that t takes with these imatrix weights and the cache does not hold yet; each into `types`.
CandidateTensor TargetSearch::unmeasured(const Tensor & t, const std::vector<ggml_type> & of, const QuantWeights * weights,
                                         std::set<ggml_type> & types) const {
    CandidateTensor c{t.name, {}};
    for (ggml_type m : of) {
        if (can_take(t.name, t.n_per_row, m, weights) && !cache_.has_error(t.name, m)) {
            c.types.push_back(m);
            types.insert(m);
        }
    }
    return c;
}

// Step 1 in memory for `todo`, with these imatrix weights and covariances; each tensor stored in the cache as it
// is done, then `each` called.
void TargetSearch::measure(const std::vector<CandidateTensor> & todo, const QuantWeights * weights,
                           const Imatrix * hessian, const std::function<void()> & each) {
    CandidateErrorOptions eo;
    eo.weights = weights;
    eo.hessian = hessian;
    eo.hessian_options = hessian_options();
    eo.sample_rows = o_.error_rows;
    eo.threads = threads_;
    measure_candidate_errors(src_, todo, eo, [&](const std::string & name, const std::map<ggml_type, CandidateError> & errors) {
        store_errors(name, errors);
        if (each) {
            each();
        }
    });
}

// Step 1 for one collected block: its tensors at the candidates and the probe type, with the block's covariances
// and the imatrix weights of its own sums (the prior's targets are per tensor, so they are the whole run's); the
// covariances are freed after.
int TargetSearch::measure_block(Imatrix & stats, std::set<ggml_type> & types) {
    if (!collecting_) {
        collecting_ = true;
        select_tensors();
        open_cache();
        shapes_ = model_tensor_shapes(model_);
    }
    const QuantWeights weights = quant_weights(stats, o_.by_blocks->prior, shapes_);
    const std::vector<ggml_type> wanted = candidates_and_probe();
    std::vector<CandidateTensor> todo;
    for (const Tensor & t : tensors_) {
        if (!stats.tensors.count(t.name)) {
            continue;
        }
        CandidateTensor c = unmeasured(t, wanted, &weights, types);
        if (!c.types.empty()) {
            todo.push_back(std::move(c));
        }
    }
    measure(todo, &weights, &stats);
    stats.covariances.clear();
    stats.covariances.shrink_to_fit();
    return (int) todo.size();
}

// The head's types are those the final search measures (the candidates and the probe type, as the search's
// imatrix — which does not hold the head — lets it take them), each encoded as the output will be: llama-quantize's
// encoding without imatrix weights (the output's first pass, and the probe's), then the Hessian encoder's where
// it does better. Measured with llama-quantize's encoding alone, the search priced the head as if the re-encoding
// did not happen, and kept bytes in it that other tensors could use.
int TargetSearch::measure_head(const Imatrix & head, std::set<ggml_type> & types) {
    const std::string & name = head.covariances.at(0).readers.at(0);
    const auto t = std::find_if(tensors_.begin(), tensors_.end(), [&](const Tensor & x) { return x.name == name; });
    if (t == tensors_.end()) {
        return 0;  // llama-quantize keeps it as it is
    }
    const CandidateTensor c = unmeasured(*t, candidates_and_probe(), nullptr, types);
    if (c.types.empty()) {
        return 0;
    }
    measure({c}, nullptr, &head);
    return 1;
}

// The output's header and the tensors it keeps as they are, exactly: a sparse scratch file laid out as
// llama_model_quantize lays out its output (engine/encode/model_writer.h), less the quantized tensors' padded
// bytes. Nothing but the header is written.
uint64_t TargetSearch::fixed_file_bytes() const {
    const QuantizeOptions q = scratch_options();
    if (!q.weights) {
        throw Error("the type search needs imatrix weights (an --imatrix, or -f TEXT to collect them)");
    }
    const QuantizedHeader header{q.type, q.imatrix_file, q.imatrix_datasets.empty() ? "" : q.imatrix_datasets[0],
                                 q.imatrix_chunks};
    const TemporaryFile scratch_file(scratch_);
    uint64_t fixed = 0;
    {
        QuantizedModelWriter writer(src_, plan_quantization(q), header, scratch_);
        fixed = fs::file_size(scratch_);
        for (const Tensor & t : tensors_) {
            fixed -= (uint64_t) GGML_PAD(writer.bytes_of(t.name), align_);
        }
    }
    std::error_code ec;
    fs::remove(scratch_, ec);
    return fixed;
}

bool TargetSearch::by_role() const {
    return o_.probe_groups == "role" || (o_.probe_groups == "auto" && tensors_.size() > kMostTensorProbes);
}

int TargetSearch::probe_chunks() const {
    return o_.chunks > 0 ? o_.chunks : by_role() ? kProbeChunksByRole : kProbeChunksByTensor;
}

// A tensor's probe group: itself, or its role (the name without "blk.N."); auto: by role past 64 tensors, where
// a probe per tensor would be hours of forward passes (a 28-layer dense model has ~200 tensors).
std::string TargetSearch::group_of(const Tensor & t) const {
    if (!by_role() || t.name.rfind("blk.", 0) != 0) {
        return t.name;
    }
    const size_t dot = t.name.find('.', 4);
    return dot == std::string::npos ? t.name : t.name.substr(dot + 1);
}

// 2. Each group (a tensor, or a role over all layers) alone at its probe types as llama-quantize encodes them,
// everything else as in the model: KLD on the calibration chunks.
void TargetSearch::measure_sensitivities(const Evaluator & eval) {
    std::set<ggml_type> sources;
    std::map<std::string, std::vector<const Tensor *>> groups;
    for (const Tensor & t : tensors_) {
        sources.insert(t.source);
        groups[group_of(t)].push_back(&t);
    }
    int done = 0;
    for (const auto & [group, members] : groups) {
        if (o_.progress) {
            o_.progress("sensitivity", done++, (int) groups.size());
        }
        std::string probes;  // what the cached value was measured with
        double error = 0;
        for (const Tensor * t : members) {
            probes += std::string(probes.empty() ? "" : ",") + ggml_type_name(probe_of_[t->name]);
            error += probe_error_of(*t, probe_of_[t->name]);
        }
        group_probe_error_[group] = error;
        json & cached = cache_.j["groups"][group];
        if (cached.is_object() && cached.value("probes", "") == probes && cached.value("chunks", -1) == probe_chunks()) {
            continue;
        }
        QuantizeOptions q = scratch_options();
        for (const Tensor * t : members) {
            q.tensor_types.push_back(exact_pattern(t->name) + "=" + ggml_type_name(probe_of_[t->name]));
        }
        if (sources.size() == 1) {
            q.tensor_types.push_back(std::string(".*=") + ggml_type_name(*sources.begin()));
        } else {
            for (const Tensor & other : tensors_) {
                q.tensor_types.push_back(exact_pattern(other.name) + "=" + ggml_type_name(other.source));
            }
        }
        const TemporaryFile scratch_file(scratch_);
        quantize_model(q);
        const QualitySummary s = summarize(eval.score(scratch_));
        std::error_code ec;
        fs::remove(scratch_, ec);
        res_.probes += 1;
        cached = {{"probes", probes}, {"chunks", probe_chunks()}, {"kld", s.kld_mean.value}};
        cache_.save();
    }
}

// One metric per tensor: the Hessian error where every measured type of it has one, else the diagonal one —
// except the output head of a block-by-block search with --sequential, priced with llama-quantize's encoding
// (its diagonal errors, measured beside the Hessian ones): with its Hessian errors the search moved bytes from
// the head to the token embedding, which won without the sequential pass (deepseek3-tiny at the Q2_K size,
// held-out KLD −5.1%) and lost with it (+2.2%), whose quantized stream starts from the embedding's own errors and
// fits every block to them (docs/allocation.md).
bool TargetSearch::hessian_metric(const Tensor & t) const {
    if (o_.by_blocks && o_.by_blocks->sequential && t.name == head_weight(src_)) {
        return false;
    }
    bool hessian = true;
    for (const auto & [type, e] : cache_.j["tensors"][t.name]["errors"].items()) {
        hessian = hessian && e.contains("hessian");
    }
    return hessian;
}

double TargetSearch::error_of(const Tensor & t, ggml_type c) const {
    return cache_.j["tensors"][t.name]["errors"][ggml_type_name(c)][hessian_metric(t) ? "hessian" : "diag"].get<double>();
}

// The same metric of the probe's own encoding, llama-quantize's: the probes skip the Hessian pass, which would
// cost one more Hessian encoding of the whole model over all groups (a third of the probes' time at the
// Qwen3-1.7B shape), and KLD is taken as proportional to the output error whichever encoder made it.
double TargetSearch::probe_error_of(const Tensor & t, ggml_type p) const {
    return cache_.j["tensors"][t.name]["errors"][ggml_type_name(p)][hessian_metric(t) ? "hessian_of_diag" : "diag"].get<double>();
}

// damage_t(T) = KLD_g(P) · err_t(T) / Σ_{u in g} err_u(P), g the tensor's probe group (for one tensor:
// KLD_t(P) · err_t(T) / err_t(P))
double TargetSearch::damage(const Tensor & t, ggml_type c) const {
    const std::string g = group_of(t);
    const double at_probe = group_probe_error_.at(g);
    return at_probe > 0 ? cache_.j["groups"][g]["kld"].get<double>() * error_of(t, c) / at_probe : 0.0;
}

std::vector<TensorTypeOptions> TargetSearch::options(bool with_damage) const {
    std::vector<TensorTypeOptions> items;
    for (const Tensor & t : tensors_) {
        TensorTypeOptions it{t.name, {}};
        for (ggml_type c : t.valid) {
            it.options.push_back({ggml_type_name(c), stored(t.bytes(c)), with_damage ? damage(t, c) : 0.0});
        }
        items.push_back(std::move(it));
    }
    return items;
}

// 3. The allocation, and the recipe that names it.
void TargetSearch::allocate() {
    uint64_t fixed = cache_.j["fixed_bytes"].get<uint64_t>();
    if (by_bpw_) {  // bits per weight count tensor data only
        fixed = all_source_bytes_;
        for (const Tensor & t : tensors_) {
            fixed -= t.source_bytes;
        }
    }
    items_ = options(true);
    if (target_bytes() < (double) (fixed + smallest_allocation(items_))) {
        throw Error("target " + show(target_bytes()) + " is below the smallest file the candidates make of " + model_ +
                    " (" + show((double) (fixed + smallest_allocation(items_))) + ")");
    }
    res_.budget_bytes = (uint64_t) std::floor(target_bytes()) - fixed;
    const TypeAllocation a = allocate_types(items_, res_.budget_bytes);
    res_.predicted_kld = a.damage;
    res_.lower_bound = a.lower_bound;
    std::map<std::string, uint64_t> bytes_by_type;
    const uint64_t fixed_file = cache_.j["fixed_bytes"].get<uint64_t>();
    res_.predicted_file_bytes = fixed_file;
    for (size_t i = 0; i < items_.size(); ++i) {
        const TypeOption & chosen = items_[i].options[a.choice[i]];
        res_.tensors.push_back({items_[i].name, chosen.type, chosen.bytes, chosen.damage});
        res_.recipe.push_back(exact_pattern(items_[i].name) + "=" + chosen.type);
        bytes_by_type[chosen.type] += chosen.bytes;
        res_.predicted_file_bytes += GGML_PAD(tensors_[i].bytes(type_named(chosen.type)), align_);
    }
    // the file type named in the output's metadata: that of the type holding the most bytes
    const auto most = std::max_element(bytes_by_type.begin(), bytes_by_type.end(),
                                       [](const auto & x, const auto & y) { return x.second < y.second; });
    res_.base_type = file_type_for(type_named(most->first));
    for (const FrontierPoint & p : allocation_frontier(items_)) {
        res_.frontier.push_back({fixed_file + p.bytes, p.damage});  // file bytes (by bpw: give or take padding)
    }
}

// llama-quantize's own mixes, predicted from the same measurements where all their types were measured.
void TargetSearch::add_stock_mixes() {
    const uint64_t fixed_file = cache_.j["fixed_bytes"].get<uint64_t>();
    for (const char * mix : {"Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ2_XXS",
                             "IQ2_XS", "IQ2_M", "IQ3_XXS", "IQ3_M", "IQ4_XS"}) {
        QuantizeOptions stock = o_.quantize;
        stock.type = mix;
        stock.tensor_types.clear();
        stock.weights = nullptr;
        std::map<std::string, std::string> types;
        try {
            types = planned_types(stock);
        } catch (const Error &) {
            continue;
        }
        StockMix s{mix, fixed_file, 0};
        bool known = true;
        for (const Tensor & t : tensors_) {
            const auto it = types.find(t.name);
            const ggml_type c = it == types.end() ? t.source : type_named(it->second);
            known = std::find(t.valid.begin(), t.valid.end(), c) != t.valid.end() && cache_.has_error(t.name, c);
            if (!known) {
                break;
            }
            s.file_bytes += stored(t.bytes(c));
            s.damage += damage(t, c);
        }
        if (known) {
            res_.stock.push_back(s);
        }
    }
}

// 4. The output: llama_model_quantize with the choice as overrides, then the Hessian pass (block by block:
// write_by_blocks); its KLD measured.
void TargetSearch::write_output(const Evaluator & eval) {
    if (o_.progress) {
        o_.progress("quantize", 0, 1);
    }
    QuantizeOptions q = o_.quantize;
    q.type = res_.base_type;
    q.tensor_types = res_.recipe;
    if (o_.by_blocks) {
        write_by_blocks();
    } else {
        if (o_.hessian) {
            q.finish = [&, h = hessian_options()](const std::string & written) {
                res_.hessian_reports = hessian_reencode(model_, written, *o_.hessian, h, [](int, int) {});
                if (o_.sequential) {
                    if (o_.progress) {
                        o_.progress("sequential", 0, 1);
                    }
                    res_.sequential_reports = sequential_reencode(model_, written, h, *o_.sequential, [&](int done, int total) {
                        if (o_.progress) {
                            o_.progress("sequential", done, total);
                        }
                    });
                }
            };
        }
        quantize_model(q);
    }
    const TensorTable out(quantized_paths(q)[0]);
    res_.file_bytes = out.file_bytes();
    uint64_t data = 0;
    for (const std::string & name : out.names()) {
        data += ggml_nbytes(out.find(name));
    }
    res_.bpw = (double) data * 8.0 / (double) n_elements_;
    if (o_.progress) {
        o_.progress("measure", 0, 1);
    }
    res_.measured_kld = summarize(eval.score(out.path())).kld_mean.value;
}

// Step 4 block by block: the chosen types through quantize_by_blocks, from the blocks' statistics the spill
// kept, else (dropped, or --sequential) from its own pass over the text, which collects the same numbers again
// (and with --sequential runs its O(L) passes).
void TargetSearch::write_by_blocks() {
    StreamQuantizeOptions s = *o_.by_blocks;
    s.quantize = o_.quantize;
    s.quantize.type = res_.base_type;
    s.quantize.tensor_types = res_.recipe;
    s.quantize.weights = nullptr;  // from the block statistics, the same numbers the errors were measured with
    s.hessian = true;
    const int blocks = block_count(src_);
    const bool kept = o_.spill && !s.sequential && o_.spill->holds(blocks);
    if (kept) {
        s.collected = [&](int b) { return o_.spill->get(b); };
        if (o_.spill->holds(blocks + 1)) {  // and the output head's, after them (BlockErrors::keep_head)
            s.collected_head = [&] { return o_.spill->get(blocks); };
        }
    }
    s.progress = [&](int, int, uint64_t done, uint64_t total) {
        if (o_.progress) {
            o_.progress(kept ? "encode" : "quantize", (int) done, (int) total);
        }
    };
    const StreamQuantizeResult r = quantize_by_blocks(s);
    res_.hessian_reports = r.reports;
    res_.norms_refit = r.norms_refit;
    for (const HessianTensorReport & t : r.sequential_reports) {  // as the two-step pass reports them: per layer
        const int b = block_of(t.name);
        if (b < 0) {  // the output head, after the blocks: re-encoded, in no layer
            res_.hessian_reports.push_back(t);
            continue;
        }
        if (res_.sequential_reports.empty() || res_.sequential_reports.back().layer != b) {
            res_.sequential_reports.push_back({b, 0, {}});
        }
        res_.sequential_reports.back().tensors.push_back(t);
    }
}

}  // namespace

TargetResult quantize_to_target(const TargetOptions & o) { return TargetSearch(o).run(); }

class BlockErrors::Search {
public:
    explicit Search(const TargetOptions & o) : search(o) {}
    TargetSearch        search;
    std::set<ggml_type> types;
};

BlockErrors::BlockErrors(const TargetOptions & o) : o_(o) {
    if (!o_.by_blocks) {
        throw Error("BlockErrors: for a block-by-block search");
    }
    if (!o_.by_blocks->sequential) {
        spill_ = std::make_unique<BlockSpill>(temporary_path(o_.quantize.output) + ".covariances");
    }
}

std::string BlockErrors::spill_note() const {
    if (!spill_) {
        return "not kept for the output: --sequential collects its own";
    }
    if (!spill_->why().empty()) {
        return "not kept for the output (" + spill_->why() + "): it collects them again";
    }
    char s[64];
    std::snprintf(s, sizeof s, "%.0f MiB", spill_->bytes() / 1048576.0);
    return std::string("kept for the output on disk: ") + s + " in " + spill_->path();
}

BlockErrors::~BlockErrors() = default;

void BlockErrors::keep_head(Imatrix & collection) {
    const TensorTable model(o_.quantize.model);
    const std::string weight = head_weight(model);
    Imatrix head;
    if (auto it = collection.tensors.find(weight); it != collection.tensors.end()) {
        head.tensors.insert(collection.tensors.extract(it));
    }
    auto & covs = collection.covariances;
    for (auto it = covs.begin(); it != covs.end();) {
        if (it->readers.front() == weight) {
            head.covariances.push_back(std::move(*it));
            it = covs.erase(it);
        } else {
            ++it;
        }
    }
    if (head.covariances.empty()) {
        return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    if (!search_) {
        search_ = std::make_unique<Search>(o_);
    }
    if (has_output_head(model)) {
        tensors_ += search_->search.measure_head(head, search_->types);
    } else if (head.covariances.front().full()) {  // tied: the objective the output encodes it under
        Imatrix tied = head;
        add_lookup_term(tied);
        tensors_ += search_->search.measure_head(tied, search_->types);
    }
    types_ = (int) search_->types.size();
    seconds_ += seconds_since(t0);
    if (spill_) {
        spill_->put(block_count(model), head);  // after the last block
    }
}

void BlockErrors::operator()(int block, Imatrix & stats) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!search_) {
        search_ = std::make_unique<Search>(o_);
    }
    if (spill_ && spill_->put(block, stats) && block == 0) {  // before measure_block frees the covariances
        spill_->room_for(block_count(TensorTable(o_.quantize.model)) - 1);  // the rest, at block 0's size
    }
    tensors_ += search_->search.measure_block(stats, search_->types);
    types_ = (int) search_->types.size();
    seconds_ += seconds_since(t0);
}

}  // namespace imx::engine
