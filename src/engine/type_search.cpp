#include "type_search.h"

#include "evaluate.h"
#include "tensor_file.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/interrupt.h"
#include "core/parallel.h"

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

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), ::tolower);
    return s;
}

ggml_type type_named(const std::string & name) {
    for (int i = 0; i < GGML_TYPE_COUNT; ++i) {
        const char * n = ggml_type_name((ggml_type) i);
        if (n && lower(n) == lower(name) && ggml_get_type_traits((ggml_type) i)->blck_size > 0) {
            return (ggml_type) i;
        }
    }
    throw Error("--candidates: unknown ggml type '" + name + "'");
}

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
        const std::string s = j.dump();
        write_file_atomic(path, std::span(reinterpret_cast<const uint8_t *>(s.data()), s.size()));
    }
    json & tensor(const std::string & name) { return j["tensors"][name]; }
    bool has_error(const std::string & name, ggml_type t) const {
        return j.contains("tensors") && j["tensors"].contains(name) && j["tensors"][name].contains("errors") &&
               j["tensors"][name]["errors"].contains(ggml_type_name(t));
    }
    bool has_probe(const std::string & name) const {
        return j.contains("tensors") && j["tensors"].contains(name) && j["tensors"][name].contains("probe");
    }
};

std::string file_stamp(const std::string & path) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    const auto time = fs::last_write_time(path, ec).time_since_epoch().count();
    return fs::weakly_canonical(path, ec).string() + ":" + std::to_string(size) + ":" + std::to_string(time);
}

// Σ over rows of Σ_j imp_j (w_j − q_j)², imp from the imatrix weights (per expert) or 1 where there are none.
double diagonal_error(const Tensor & t, const TensorTable & src, std::fstream & src_in, const TensorTable & q,
                      std::fstream & q_in, const std::vector<float> * weights, int threads) {
    const ggml_tensor * qt = q.find(t.name);
    const size_t src_row = ggml_row_size(t.source, t.n_per_row), q_row = ggml_row_size(qt->type, t.n_per_row);
    const std::vector<uint8_t> a = read_bytes(src_in, src.path, src.offset(t.name), src_row * t.rows);
    const std::vector<uint8_t> b = read_bytes(q_in, q.path, q.offset(t.name), q_row * t.rows);
    std::vector<double> per_thread((size_t) threads, 0.0);
    const int64_t n = t.n_per_row;
    parallel_for(t.rows, threads, [&](int64_t r, int tid) {
        std::vector<float> w((size_t) n), d((size_t) n);
        to_float(t.source, a.data() + r * src_row, w.data(), n);
        to_float(qt->type, b.data() + r * q_row, d.data(), n);
        const float * imp = nullptr;
        if (weights) {
            const int64_t m = weights->size() == (size_t) n ? 0 : r / t.rows_per_matrix;
            imp = weights->data() + m * n;
        }
        double e = 0;
        for (int64_t k = 0; k < n; ++k) {
            const double diff = (double) w[k] - d[k];
            e += (imp ? imp[k] : 1.0) * diff * diff;
        }
        per_thread[tid] += e;
    });
    double sum = 0;
    for (double e : per_thread) {
        sum += e;
    }
    return sum;
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

TargetResult quantize_to_target(const TargetOptions & o) {
    const auto t_start = std::chrono::steady_clock::now();
    TargetResult res;
    const std::string & model = o.quantize.model;
    const int threads = o.quantize.threads > 0 ? o.quantize.threads
                                               : (int) std::max(1u, std::thread::hardware_concurrency());

    // what llama-quantize would quantize, and the candidates each tensor takes as asked
    std::vector<ggml_type> candidates;
    for (const std::string & c : o.candidates) {
        const ggml_type t = type_named(c);
        if (!ggml_is_quantized(t) && t != GGML_TYPE_F16 && t != GGML_TYPE_BF16) {
            throw Error("--candidates: " + c + " is not a type a weight is stored in");
        }
        if (std::find(candidates.begin(), candidates.end(), t) == candidates.end()) {
            candidates.push_back(t);
        }
    }
    if (candidates.empty()) {
        throw Error("--candidates: no type given");
    }
    const ggml_type probe_asked = type_named(o.probe_type);
    QuantizeOptions plan = o.quantize;
    plan.type = "Q8_0";
    plan.tensor_types.clear();
    plan.weights = nullptr;
    const std::map<std::string, std::string> quantized = planned_types(plan);
    const TensorTable src(model);
    std::vector<Tensor> tensors;
    int64_t n_elements = 0;
    uint64_t all_source_bytes = 0;
    for (int64_t i = 0; i < gguf_get_n_tensors(src.ctx); ++i) {
        const ggml_tensor * st = src.find(gguf_get_tensor_name(src.ctx, i));
        n_elements += ggml_nelements(st);
        all_source_bytes += ggml_nbytes(st);
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
        for (ggml_type c : candidates) {
            if (can_take(t.name, t.n_per_row, c, o.quantize.weights)) {
                t.valid.push_back(c);
            }
        }
        if (t.valid.empty()) {
            throw Error(model + ": tensor " + t.name + " (rows of " + std::to_string(t.n_per_row) +
                        ") takes none of the candidate types as it is");
        }
        tensors.push_back(std::move(t));
    }
    if (tensors.empty()) {
        throw Error(model + ": no tensor llama-quantize would quantize");
    }

    // the file = what stays as it is + the chosen tensors, each padded to the file's alignment
    const size_t align = gguf_get_alignment(src.ctx);
    const bool by_bpw = o.target_bpw > 0;
    auto stored = [&](uint64_t bytes) { return by_bpw ? bytes : (uint64_t) GGML_PAD(bytes, align); };
    uint64_t fixed_estimate = by_bpw ? all_source_bytes : fs::file_size(model);
    for (const Tensor & t : tensors) {
        fixed_estimate -= stored(t.source_bytes);
    }
    auto options_for = [&](const std::function<double(const Tensor &, ggml_type)> & damage) {
        std::vector<TensorTypeOptions> items;
        for (const Tensor & t : tensors) {
            TensorTypeOptions it{t.name, {}};
            for (ggml_type c : t.valid) {
                it.options.push_back({ggml_type_name(c), stored(t.bytes(c)), damage ? damage(t, c) : 0.0});
            }
            items.push_back(std::move(it));
        }
        return items;
    };
    auto target_in_bytes = [&]() -> double {
        return by_bpw ? o.target_bpw * (double) n_elements / 8.0 : o.target_bytes;
    };
    auto show = [&](double bytes) {
        char s[64];
        if (by_bpw) {
            std::snprintf(s, sizeof s, "%.3f bpw", bytes * 8.0 / (double) n_elements);
        } else {
            std::snprintf(s, sizeof s, "%.2f MiB", bytes / 1048576.0);
        }
        return std::string(s);
    };
    {
        const auto items = options_for(nullptr);
        const double least = (double) (fixed_estimate + smallest_allocation(items));
        const double most = (double) (fixed_estimate + largest_allocation(items));
        const double target = target_in_bytes();
        if (target < least || target > most) {
            throw Error("target " + show(target) + " is outside what the candidate types can make of " + model +
                        ": " + show(least) + " (all at their smallest) to " + show(most) + " (all at their largest)");
        }
    }

    // 1. errors of every tensor at every candidate (and probe) type
    std::string key = "v1|" + file_stamp(model) + "|" + file_stamp(o.quantize.imatrix_file) + "|" + o.cache_key +
                      "|text " + file_stamp(o.text_file) + "|ctx " + std::to_string(o.ctx) + "|chunks " +
                      std::to_string(o.chunks);
    if (o.hessian) {
        const auto & h = o.hessian_options;
        key += "|hessian damp " + std::to_string(h.rounding.damp) + " prior " + std::to_string(h.prior_weight) +
               " refinements " + std::to_string(h.rounding.refinements) + " tol " +
               std::to_string(h.rounding.refine_tolerance) + " per-head " + std::to_string(h.per_head) + " only " +
               h.tensors;
    }
    Cache cache(o.cache_dir, key);
    res.cache_file = cache.path;
    std::map<std::string, ggml_type> probe_of;
    std::vector<ggml_type> measured = candidates;
    for (const Tensor & t : tensors) {
        ggml_type p = t.valid[0];
        for (ggml_type c : t.valid) {  // the probe, or the candidate nearest to it in bits per weight
            if (std::fabs(bits_per_weight(c) - bits_per_weight(probe_asked)) <
                std::fabs(bits_per_weight(p) - bits_per_weight(probe_asked))) {
                p = c;
            }
        }
        if (can_take(t.name, t.n_per_row, probe_asked, o.quantize.weights)) {
            p = probe_asked;
            if (std::find(measured.begin(), measured.end(), p) == measured.end()) {
                measured.push_back(p);
            }
        }
        probe_of[t.name] = p;
    }
    const std::string scratch = temporary_path(o.quantize.output);
    const auto t_errors = std::chrono::steady_clock::now();
    int done = 0;
    for (ggml_type c : measured) {
        std::vector<const Tensor *> todo;
        bool all = true;
        for (const Tensor & t : tensors) {
            const bool takes = can_take(t.name, t.n_per_row, c, o.quantize.weights);
            all = all && takes;
            if (takes && !cache.has_error(t.name, c)) {
                todo.push_back(&t);
            }
        }
        if (o.progress) {
            o.progress("errors", done++, (int) measured.size());
        }
        if (todo.empty() && cache.j.contains("fixed_bytes")) {
            continue;
        }
        QuantizeOptions q = o.quantize;
        q.type = "Q8_0";  // tensors not taking c get Q8_0; only the others are measured
        q.output = scratch;
        q.progress = nullptr;
        q.tensor_types.clear();
        if (all) {
            q.tensor_types.push_back(std::string(".*=") + ggml_type_name(c));
        } else {
            for (const Tensor & t : tensors) {
                if (can_take(t.name, t.n_per_row, c, o.quantize.weights)) {
                    q.tensor_types.push_back(exact_pattern(t.name) + "=" + ggml_type_name(c));
                }
            }
        }
        std::vector<HessianTensorReport> reports;
        if (o.hessian) {
            HessianOptions h = o.hessian_options;
            h.threads = threads;
            q.finish = [&, h](const std::string & written) {  // h: a copy, it outlives this block
                reports = hessian_reencode(model, written, *o.hessian, h, [](int, int) {});
            };
        }
        const TemporaryFile scratch_file(scratch);
        quantize_model(q);
        res.candidate_files += 1;
        {
            const TensorTable qt(scratch);
            std::fstream src_in(model, std::ios::binary | std::ios::in), q_in(scratch, std::ios::binary | std::ios::in);
            uint64_t fixed = fs::file_size(scratch);
            for (const Tensor & t : tensors) {
                fixed -= (uint64_t) GGML_PAD(ggml_nbytes(qt.find(t.name)), align);
            }
            cache.j["fixed_bytes"] = fixed;
            for (const Tensor * t : todo) {
                const auto w = o.quantize.weights ? o.quantize.weights->tensors.find(t->name)
                                                  : std::map<std::string, std::vector<float>>::const_iterator{};
                const std::vector<float> * weights =
                    o.quantize.weights && w != o.quantize.weights->tensors.end() ? &w->second : nullptr;
                json e;
                e["diag"] = diagonal_error(*t, src, src_in, qt, q_in, weights, threads);
                for (const auto & r : reports) {
                    if (r.name == t->name) {
                        e["hessian"] = r.loss_final;
                    }
                }
                cache.tensor(t->name)["errors"][ggml_type_name(c)] = e;
            }
        }
        std::error_code ec;
        fs::remove(scratch, ec);
        cache.save();
    }
    res.seconds_errors = seconds_since(t_errors);
    const uint64_t fixed = by_bpw ? [&] {
        uint64_t f = all_source_bytes;
        for (const Tensor & t : tensors) {
            f -= t.source_bytes;
        }
        return f;
    }() : cache.j["fixed_bytes"].get<uint64_t>();

    // one metric per tensor: the Hessian error where every measured type of it has one, else the diagonal one
    auto error_of = [&](const Tensor & t, ggml_type c) {
        const json & errors = cache.j["tensors"][t.name]["errors"];
        bool hessian = true;
        for (const auto & [type, e] : errors.items()) {
            hessian = hessian && e.contains("hessian");
        }
        return errors[ggml_type_name(c)][hessian ? "hessian" : "diag"].get<double>();
    };

    // 2. sensitivities: each tensor alone at its probe type, KLD on the calibration chunks
    EvalOptions eo;
    eo.text_file = o.text_file;
    eo.ctx = o.ctx;
    eo.max_chunks = o.chunks;
    eo.threads = threads;
    eo.cache_dir = o.cache_dir;
    const Evaluator eval(model, eo);
    res.chunks = (int) eval.chunks();
    std::set<ggml_type> sources;
    for (const Tensor & t : tensors) {
        sources.insert(t.source);
    }
    const auto t_sens = std::chrono::steady_clock::now();
    done = 0;
    for (const Tensor & t : tensors) {
        if (o.progress) {
            o.progress("sensitivity", done++, (int) tensors.size());
        }
        if (cache.has_probe(t.name) && cache.tensor(t.name)["probe"]["type"] == ggml_type_name(probe_of[t.name])) {
            continue;
        }
        QuantizeOptions q = o.quantize;
        q.type = "Q8_0";
        q.output = scratch;
        q.progress = nullptr;
        q.tensor_types = {exact_pattern(t.name) + "=" + ggml_type_name(probe_of[t.name])};
        if (sources.size() == 1) {  // everything else as it is in the model
            q.tensor_types.push_back(std::string(".*=") + ggml_type_name(*sources.begin()));
        } else {
            for (const Tensor & other : tensors) {
                q.tensor_types.push_back(exact_pattern(other.name) + "=" + ggml_type_name(other.source));
            }
        }
        if (o.hessian) {
            HessianOptions h = o.hessian_options;
            h.threads = threads;
            h.tensors = exact_pattern(t.name);
            q.finish = [&, h](const std::string & written) {  // h: a copy, it outlives this block
                hessian_reencode(model, written, *o.hessian, h, [](int, int) {});
            };
        }
        const TemporaryFile scratch_file(scratch);
        quantize_model(q);
        const QualitySummary s = summarize(eval.score(scratch));
        std::error_code ec;
        fs::remove(scratch, ec);
        res.probes += 1;
        cache.tensor(t.name)["probe"] = {{"type", ggml_type_name(probe_of[t.name])}, {"kld", s.kld_mean.value}};
        cache.save();
    }
    res.seconds_sensitivity = seconds_since(t_sens);

    // 3. the allocation
    const auto t_solve = std::chrono::steady_clock::now();
    auto damage = [&](const Tensor & t, ggml_type c) {
        const json & probe = cache.j["tensors"][t.name]["probe"];
        const double at_probe = error_of(t, type_named(probe["type"].get<std::string>()));
        return at_probe > 0 ? probe["kld"].get<double>() * error_of(t, c) / at_probe : 0.0;
    };
    const std::vector<TensorTypeOptions> items = options_for(damage);
    const double target = target_in_bytes();
    if (target < (double) (fixed + smallest_allocation(items))) {
        throw Error("target " + show(target) + " is below the smallest file the candidates make of " + model + " (" +
                    show((double) (fixed + smallest_allocation(items))) + ")");
    }
    res.budget_bytes = (uint64_t) std::floor(target) - fixed;
    const TypeAllocation a = allocate_types(items, res.budget_bytes);
    res.seconds_solve = seconds_since(t_solve);
    res.predicted_kld = a.damage;
    res.lower_bound = a.lower_bound;
    std::map<std::string, uint64_t> bytes_by_type;
    for (size_t i = 0; i < items.size(); ++i) {
        const TypeOption & chosen = items[i].options[a.choice[i]];
        res.tensors.push_back({items[i].name, chosen.type, chosen.bytes, chosen.damage});
        res.recipe.push_back(exact_pattern(items[i].name) + "=" + chosen.type);
        bytes_by_type[chosen.type] += chosen.bytes;
    }
    const auto most = std::max_element(bytes_by_type.begin(), bytes_by_type.end(),
                                       [](const auto & x, const auto & y) { return x.second < y.second; });
    res.base_type = file_type_for(type_named(most->first));
    // in file bytes, also when the budget is in bits per weight (tensor data, unpadded)
    const uint64_t fixed_file = cache.j["fixed_bytes"].get<uint64_t>();
    auto file_bytes_of = [&](const std::vector<size_t> & choice) {
        uint64_t b = fixed_file;
        for (size_t i = 0; i < items.size(); ++i) {
            b += GGML_PAD(tensors[i].bytes(type_named(items[i].options[choice[i]].type)), align);
        }
        return b;
    };
    res.predicted_file_bytes = file_bytes_of(a.choice);
    for (const FrontierPoint & p : allocation_frontier(items)) {
        res.frontier.push_back({fixed_file + p.bytes, p.damage});  // file bytes (by bpw: give or take padding)
    }
    // llama-quantize's own mixes, predicted from the same measurements where their types were measured
    for (const char * mix : {"Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ2_XXS",
                             "IQ2_XS", "IQ2_M", "IQ3_XXS", "IQ3_M", "IQ4_XS"}) {
        QuantizeOptions stock = plan;
        stock.type = mix;
        std::map<std::string, std::string> types;
        try {
            types = planned_types(stock);
        } catch (const Error &) {
            continue;
        }
        StockMix s{mix, fixed_file, 0};
        bool known = true;
        for (const Tensor & t : tensors) {
            const auto it = types.find(t.name);
            const ggml_type c = it == types.end() ? t.source : type_named(it->second);
            known = known && std::find(t.valid.begin(), t.valid.end(), c) != t.valid.end() &&
                    cache.has_error(t.name, c);
            if (!known) {
                break;
            }
            s.file_bytes += stored(t.bytes(c));
            s.damage += damage(t, c);
        }
        if (known) {
            res.stock.push_back(s);
        }
    }

    // 4. the output, by llama_model_quantize with the choice as overrides, then the Hessian pass
    if (o.progress) {
        o.progress("quantize", 0, 1);
    }
    QuantizeOptions q = o.quantize;
    q.type = res.base_type;
    q.tensor_types = res.recipe;
    if (o.hessian) {
        HessianOptions h = o.hessian_options;
        h.threads = threads;
        q.finish = [&, h](const std::string & written) {  // h: a copy, it outlives this block
            res.hessian_reports = hessian_reencode(model, written, *o.hessian, h, [](int, int) {});
        };
    }
    quantize_model(q);
    res.file_bytes = fs::file_size(q.output);
    {
        const TensorTable out(q.output);
        uint64_t data = 0;
        for (int64_t i = 0; i < gguf_get_n_tensors(out.ctx); ++i) {
            data += ggml_nbytes(out.find(gguf_get_tensor_name(out.ctx, i)));
        }
        res.bpw = (double) data * 8.0 / (double) n_elements;
    }
    if (o.progress) {
        o.progress("measure", 0, 1);
    }
    res.measured_kld = summarize(eval.score(q.output)).kld_mean.value;
    res.seconds_total = seconds_since(t_start);
    return res;
}

}  // namespace imx::engine
