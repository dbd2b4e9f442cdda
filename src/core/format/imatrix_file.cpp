#include "core/format/imatrix_file.h"

#include "core/format/atomic_file.h"
#include "core/format/mapped_file.h"
#include "core/error.h"
#include "core/format/gguf_file.h"

#include <algorithm>
#include <numeric>
#include <cmath>
#include <cstring>

namespace imx {

namespace {

const char * const kKeyType       = "general.type";
const char * const kKeyDatasets   = "imatrix.datasets";
const char * const kKeyChunkCount = "imatrix.chunk_count";
const char * const kKeyChunkSize  = "imatrix.chunk_size";
const std::string  kSumsSuffix    = ".in_sum2";
const std::string  kCountsSuffix  = ".counts";
// F32 counts are exact only below 2^24 tokens, which merged shards pass. imx then adds "<name>.counts_exact":
// F32 [2, n_mat] holding each count as (count / 2^24, count % 2^24), both exact; upstream skips it.
const std::string  kCountsExactSuffix = ".counts_exact";
constexpr int64_t  kExactF32 = int64_t{1} << 24;
const std::string  kCovSuffix     = ".in_cov";
// collect --target-model (core/covariance.h): "<first reader>.in_cross" F32 [n_cols, n_cols, n_mat], X̃ᵀX
// beside the covariance X̃ᵀX̃ of the same name (F64 in a shard).
const std::string  kCrossSuffix   = ".in_cross";
// A shard (imx collect --shard I/N) also stores its sums in double, "<name>.in_sum2_exact" F64 [n_cols, n_mat],
// and its covariances as F64: the parts then add up to one run's doubles before the one rounding to F32.
const std::string  kSumsExactSuffix = ".in_sum2_exact";
// collect --all-experts (core/imatrix.h AllExpertStats): "<name>.in_sum2_all" F32 [n_cols, n_rows] (F64 in a
// shard, so that parts add up to one run's doubles, as their other sums) and "<name>.tokens_all" F64 [1];
// upstream skips both.
const std::string  kAllSumsSuffix = ".in_sum2_all";
const std::string  kAllTokensSuffix = ".tokens_all";
const char * const kKeyShardCount = "imx.shard.count";
const char * const kKeyShardParts = "imx.shard.parts";
const char * const kKeyCovTensors = "imx.in_cov.tensors";  // collect --covariance-tensors: the subset held
const char * const kKeyCovGateWeighted = "imx.in_cov.gate_weighted";  // collect --gate-weights: experts' tokens by g²
const char * const kKeyCovReaders = "imx.in_cov.readers";


bool remove_suffix(std::string & s, const std::string & suffix) {
    if (s.size() < suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0) {
        return false;
    }
    s.resize(s.size() - suffix.size());
    return true;
}

std::string shape_str(const std::vector<int64_t> & ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) {
        s += (i ? ", " : "") + std::to_string(ne[i]);
    }
    return s + "]";
}

uint32_t read_u32(const gguf::Value * v, const char * key, const std::string & source) {
    if (!v) {
        return 0;
    }
    if (v->type != gguf::Type::u32) {
        throw Error(source + ": " + key + " must be u32");
    }
    uint32_t x;
    std::memcpy(&x, v->raw.data(), 4);
    return x;
}

void check_sums(const std::vector<double> & sums, const std::string & source, const std::string & name) {
    for (size_t i = 0; i < sums.size(); ++i) {
        if (!std::isfinite(sums[i]) || sums[i] < 0) {
            throw Error(source + ": tensor " + name + ": value " + std::to_string(i) + " is " +
                        std::to_string(sums[i]) + " (sums of squares must be finite and >= 0)");
        }
    }
}

std::vector<std::string> split_commas(const std::string & s) {
    std::vector<std::string> out;
    size_t start = 0;
    for (size_t p; (p = s.find(',', start)) != std::string::npos; start = p + 1) {
        out.push_back(s.substr(start, p - start));
    }
    out.push_back(s.substr(start));
    return out;
}

std::string join_commas(const std::vector<std::string> & v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) {
        s += (i ? "," : "") + v[i];
    }
    return s;
}

// The covariances of an imx file: "<first reader>.in_cov" F32 [block, n_cols, n_mat], and in
// imx.in_cov.readers one comma-separated list of readers per such tensor, in tensor order.
void decode_all_experts(const gguf::File & f, Imatrix & im, const std::string & source) {
    std::map<std::string, const gguf::Tensor *> tokens;
    for (const auto & t : f.tensors) {
        std::string base = t.name;
        if (remove_suffix(base, kAllTokensSuffix)) {
            tokens[base] = &t;
        }
    }
    for (const auto & t : f.tensors) {
        std::string name = t.name;
        if (!remove_suffix(name, kAllSumsSuffix)) {
            continue;
        }
        const auto tk = tokens.find(name);
        const auto ts = im.tensors.find(name);
        if (tk == tokens.end() || tk->second->type != gguf::kGgmlTypeF64 || tk->second->nelements() != 1) {
            throw Error(source + ": tensor " + t.name + " needs " + name + kAllTokensSuffix + ", F64 [1]");
        }
        const int64_t n_rows = t.ne.size() > 1 ? t.ne[1] : 1;
        if ((t.type != gguf::kGgmlTypeF64 && t.type != gguf::kGgmlTypeF32) || t.ne.empty() || ts == im.tensors.end() ||
            t.ne[0] != ts->second.n_cols() ||
            (n_rows != 1 && n_rows != ts->second.n_mat()) || t.nelements() != t.ne[0] * n_rows) {
            throw Error(source + ": tensor " + t.name + " must be F32 or F64 [n_cols, 1 or n_expert] of a tensor in the "
                        "file");
        }
        const double n = tk->second->data64[0];
        if (!(n >= 1) || n != std::nearbyint(n)) {
            throw Error(source + ": tensor " + tk->second->name + " is not a whole number of tokens");
        }
        AllExpertStats a{t.type == gguf::kGgmlTypeF64 ? t.data64 : std::vector<double>(t.data.begin(), t.data.end()),
                         n_rows, (int64_t) n};
        check_sums(a.sums, source, t.name);
        im.all_experts.emplace(name, std::move(a));
    }
}

std::vector<double> read_values(const gguf::Tensor & t) {
    std::vector<double> v((size_t) t.nelements());
    const uint8_t * raw = t.in_place.data();
    if (t.type == gguf::kGgmlTypeF64) {
        std::memcpy(v.data(), raw, v.size() * sizeof(double));
    } else {
        for (size_t i = 0; i < v.size(); ++i) {
            float x;
            std::memcpy(&x, raw + 4 * i, 4);
            v[i] = x;
        }
    }
    return v;
}

// "<first reader>.in_cross" beside each whole covariance that has one (core/covariance.h).
void decode_cross(const gguf::File & f, Imatrix & im, const std::string & source) {
    for (const auto & t : f.tensors) {
        std::string base = t.name;
        if (!remove_suffix(base, kCrossSuffix)) {
            continue;
        }
        auto c = std::find_if(im.covariances.begin(), im.covariances.end(),
                              [&](const Covariance & x) { return x.readers[0] == base; });
        if (c == im.covariances.end() || !c->full() || (t.type != gguf::kGgmlTypeF32 && t.type != gguf::kGgmlTypeF64) ||
            t.ne.size() < 2 || t.ne[0] != c->n_cols || t.ne[1] != c->n_cols || t.nelements() != (int64_t) c->values.size()) {
            throw Error(source + ": tensor " + t.name + " must be F32 (or F64) [n_cols, n_cols, n_mat] beside a whole " +
                        base + kCovSuffix);
        }
        c->cross = read_values(t);
        for (double x : c->cross) {
            if (!std::isfinite(x)) {
                throw Error(source + ": tensor " + t.name + " holds a non-finite value");
            }
        }
    }
}

// The covariance tensors are read where they lie in the file's bytes (a covariance is ~1 GB per 8B layer).
void decode_covariances(const gguf::File & f, Imatrix & im, const std::string & source) {
    const gguf::Value * readers = f.find(kKeyCovReaders);
    std::vector<const gguf::Tensor *> tensors;
    for (const auto & t : f.tensors) {
        std::string base = t.name;
        if (remove_suffix(base, kCovSuffix)) {
            tensors.push_back(&t);
        }
    }
    if (!readers && tensors.empty()) {
        return;
    }
    if (!readers || readers->type != gguf::Type::array || readers->elem_type != gguf::Type::string ||
        readers->strings.size() != tensors.size()) {
        throw Error(source + ": " + kKeyCovReaders + " must list the readers of each of the " +
                    std::to_string(tensors.size()) + " " + kCovSuffix + " tensors");
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
        const gguf::Tensor & t = *tensors[i];
        Covariance c;
        c.readers = split_commas(readers->strings[i]);
        if (t.name != c.readers[0] + kCovSuffix) {
            throw Error(source + ": tensor " + t.name + " is listed with readers " + readers->strings[i]);
        }
        const auto it = im.tensors.find(c.readers[0]);
        if ((t.type != gguf::kGgmlTypeF32 && t.type != gguf::kGgmlTypeF64) || t.ne.size() < 2 ||
            it == im.tensors.end()) {
            throw Error(source + ": tensor " + t.name + " must be F32 (or F64) and belong to a tensor with sums and "
                        "counts");
        }
        c.block = t.ne[0];
        c.n_cols = t.ne[1];
        c.n_mat = t.ne.size() > 2 ? t.ne[2] : 1;
        const TensorStats & ts = it->second;
        // per-head 3-D weights keep one count for all heads (ts.n_mat() == 1, sums of n_cols × heads)
        const bool per_head = ts.n_mat() == 1 && c.n_mat > 1;
        // pooled over experts (core/covariance.h): one matrix for all of the reader's experts
        const bool pooled = c.n_mat == 1 && ts.n_mat() > 1;
        const int64_t reader_mats = pooled ? ts.n_mat() : c.n_mat;
        if ((int64_t) ts.sums.size() != c.n_cols * reader_mats || (c.n_mat != ts.n_mat() && !per_head && !pooled) ||
            c.block < 1 || c.n_cols % c.block != 0) {
            throw Error(source + ": tensor " + t.name + ": shape " + shape_str(t.ne) + " does not fit the sums " +
                        "of " + c.readers[0] + " (" + std::to_string(ts.n_cols()) + " columns, " +
                        std::to_string(ts.n_mat()) + " matrices)");
        }
        for (const std::string & r : c.readers) {
            const auto rt = im.tensors.find(r);
            if (rt == im.tensors.end() || (int64_t) rt->second.sums.size() != c.n_cols * reader_mats) {
                throw Error(source + ": tensor " + t.name + " names reader " + r + ", which has no sums of " +
                            std::to_string(c.n_cols) + " columns");
            }
        }
        c.values = read_values(t);  // from the parsed bytes (gguf::parse's in_place)
        for (int64_t m = 0; m < c.n_mat; ++m) {
            for (int64_t j = 0; j < c.n_cols; ++j) {
                const double d = c.values[(m * c.n_cols + j) * c.block + (j - c.block_start(j))];
                if (!std::isfinite(d) || d < 0) {
                    throw Error(source + ": tensor " + t.name + ": diagonal value " + std::to_string(j) +
                                " of matrix " + std::to_string(m) + " is " + std::to_string(d));
                }
            }
        }
        c.counts = per_head ? std::vector<int64_t>((size_t) c.n_mat, ts.counts[0])
                   : pooled ? std::vector<int64_t>{std::accumulate(ts.counts.begin(), ts.counts.end(), int64_t{0})}
                            : ts.counts;
        im.covariances.push_back(std::move(c));
    }
    decode_cross(f, im, source);
}

Imatrix decode_gguf(std::span<const uint8_t> bytes, const std::string & source) {
    const gguf::File f =
        gguf::parse(bytes, source, [](const std::string & name) { return name.ends_with(kCovSuffix) || name.ends_with(kCrossSuffix); });

    const gguf::Value * type = f.find(kKeyType);
    if (!type || type->type != gguf::Type::string) {
        throw Error(source + ": not an imatrix file (no general.type; is this a model?)");
    }
    if (type->strings[0] != "imatrix") {
        throw Error(source + ": not an imatrix file (general.type is '" + type->strings[0] + "')");
    }

    Imatrix im;
    im.source_format = ImatrixFormat::gguf;
    if (const gguf::Value * ds = f.find(kKeyDatasets)) {
        if (ds->type != gguf::Type::array || ds->elem_type != gguf::Type::string) {
            throw Error(source + ": " + kKeyDatasets + " must be an array of strings");
        }
        im.meta.datasets = ds->strings;
    }
    im.meta.chunk_count = read_u32(f.find(kKeyChunkCount), kKeyChunkCount, source);
    im.meta.chunk_size = read_u32(f.find(kKeyChunkSize), kKeyChunkSize, source);
    if (const gguf::Value * ct = f.find(kKeyCovTensors)) {
        if (ct->type != gguf::Type::string) {
            throw Error(source + ": " + kKeyCovTensors + " must be a string");
        }
        im.meta.covariance_tensors = ct->strings[0];
    }
    if (const gguf::Value * gw = f.find(kKeyCovGateWeighted)) {
        if (gw->type != gguf::Type::boolean || gw->raw.size() != 1) {
            throw Error(source + ": " + kKeyCovGateWeighted + " must be a bool");
        }
        im.meta.experts_gate_weighted = gw->raw[0] != 0;
    }
    im.meta.shard_count = read_u32(f.find(kKeyShardCount), kKeyShardCount, source);
    if (im.meta.shard_count > 0) {
        const gguf::Value * parts = f.find(kKeyShardParts);
        if (!parts || parts->type != gguf::Type::array || parts->elem_type != gguf::Type::u32 || parts->raw.empty()) {
            throw Error(source + ": " + kKeyShardCount + " needs " + kKeyShardParts + ", an array of u32");
        }
        im.meta.shards.resize(parts->raw.size() / 4);
        std::memcpy(im.meta.shards.data(), parts->raw.data(), parts->raw.size());
        for (uint32_t p : im.meta.shards) {
            if (p < 1 || p > im.meta.shard_count) {
                throw Error(source + ": shard " + std::to_string(p) + " of " + std::to_string(im.meta.shard_count) +
                            " is out of range");
            }
        }
    }

    struct Pair { const gguf::Tensor * sums = nullptr; const gguf::Tensor * counts = nullptr; };
    std::map<std::string, Pair> pairs;
    std::map<std::string, const gguf::Tensor *> exact, exact_sums;
    for (const auto & t : f.tensors) {
        std::string base = t.name;
        if (remove_suffix(base, kSumsExactSuffix)) {
            exact_sums[base] = &t;
        } else if (remove_suffix(base, kSumsSuffix)) {
            pairs[base].sums = &t;
        } else if (remove_suffix(base, kCountsSuffix)) {
            pairs[base].counts = &t;
        } else if (remove_suffix(base, kCountsExactSuffix)) {
            exact[base] = &t;
        }  // other tensors (extensions of later tools) are not ours to interpret
    }

    for (const auto & [name, p] : pairs) {
        if (!p.sums || !p.counts) {
            throw Error(source + ": tensor " + name + " has " + (p.sums ? "sums but no counts" : "counts but no sums"));
        }
        if (p.sums->type != gguf::kGgmlTypeF32 || p.counts->type != gguf::kGgmlTypeF32) {
            throw Error(source + ": tensor " + name + ": sums and counts must be F32");
        }
        const int64_t n_cols = p.sums->ne[0];
        const int64_t n_rows = n_cols ? p.sums->nelements() / n_cols : 0;
        const int64_t n_mat = p.counts->nelements();
        if (n_cols < 1 || p.counts->ne[0] != 1 || n_mat < 1 || n_rows != n_mat) {
            throw Error(source + ": tensor " + name + ": shape mismatch between sums " + shape_str(p.sums->ne) +
                        " and counts " + shape_str(p.counts->ne));
        }
        TensorStats ts;
        ts.sums.assign(p.sums->data.begin(), p.sums->data.end());
        if (const auto it = exact_sums.find(name); it != exact_sums.end()) {  // preferred: the sums in double
            const gguf::Tensor & e = *it->second;
            if (e.type != gguf::kGgmlTypeF64 || e.ne[0] != n_cols || e.nelements() != p.sums->nelements()) {
                throw Error(source + ": tensor " + e.name + " must be F64 of the shape of " + name + kSumsSuffix);
            }
            for (size_t i = 0; i < e.data64.size(); ++i) {
                if ((float) e.data64[i] != p.sums->data[i]) {
                    throw Error(source + ": tensor " + e.name + ": value " + std::to_string(i) + " does not match " +
                                name + kSumsSuffix);
                }
            }
            ts.sums = e.data64;
        }
        check_sums(ts.sums, source, name);
        for (float c : p.counts->data) {
            // F32 holds whole numbers exactly up to 2^24; beyond that a count is still whole, just rounded
            if (!std::isfinite(c) || c < 0 || c != std::nearbyint(c) || c > 1e15f) {
                throw Error(source + ": tensor " + name + ": count " + std::to_string(c) +
                            " is not a whole number of tokens");
            }
            ts.counts.push_back((int64_t) c);
        }
        if (const auto it = exact.find(name); it != exact.end()) {  // preferred: the exact counts
            const gguf::Tensor & e = *it->second;
            if (e.type != gguf::kGgmlTypeF32 || e.ne[0] != 2 || e.nelements() != 2 * n_mat) {
                throw Error(source + ": tensor " + e.name + " must be F32 [2, " + std::to_string(n_mat) + "]");
            }
            for (int64_t m = 0; m < n_mat; ++m) {
                const float hi = e.data[2 * m], lo = e.data[2 * m + 1];
                const int64_t c = (int64_t) hi * kExactF32 + (int64_t) lo;
                if (!(hi >= 0 && lo >= 0 && lo < (float) kExactF32 && hi == std::nearbyint(hi) &&
                      lo == std::nearbyint(lo)) || (float) c != p.counts->data[m]) {
                    throw Error(source + ": tensor " + e.name + ": count of matrix " + std::to_string(m) +
                                " does not match " + name + kCountsSuffix);
                }
                ts.counts[m] = c;
            }
        }
        im.tensors.emplace(name, std::move(ts));
    }
    if (im.tensors.empty()) {
        throw Error(source + ": imatrix file holds no tensors");
    }
    decode_covariances(f, im, source);
    decode_all_experts(f, im, source);
    return im;
}

// Bounds-checked little-endian reads for the legacy format.
struct LegacyReader {
    std::span<const uint8_t> bytes;
    const std::string &      source;
    size_t                   pos = 0;

    size_t left() const { return bytes.size() - pos; }
    int32_t i32(const char * what) {
        if (left() < 4) {
            throw Error(source + ": truncated file (reading " + what + " at byte " + std::to_string(pos) + ")");
        }
        int32_t v;
        std::memcpy(&v, bytes.data() + pos, 4);
        pos += 4;
        return v;
    }
    std::string str(int32_t len, const char * what) {
        if (len < 0 || (size_t) len > left()) {
            throw Error(source + ": truncated or corrupt file (" + what + " of length " + std::to_string(len) +
                        " at byte " + std::to_string(pos) + ")");
        }
        std::string s(reinterpret_cast<const char *>(bytes.data() + pos), len);
        pos += len;
        return s;
    }
};

Imatrix decode_legacy(std::span<const uint8_t> bytes, const std::string & source, uint32_t chunk_size) {
    LegacyReader r{bytes, source};
    Imatrix im;
    im.source_format = ImatrixFormat::legacy;
    im.counts_per_expert_known = false;
    im.meta.chunk_size = chunk_size;

    const int32_t n_entries = r.i32("the entry count");
    // each entry takes at least 16 bytes
    if (n_entries < 1 || (size_t) n_entries > bytes.size() / 16) {
        throw Error(source + ": not an imatrix file (neither GGUF nor legacy imatrix.dat: " +
                    std::to_string(n_entries) + " entries)");
    }
    for (int32_t i = 0; i < n_entries; ++i) {
        const int32_t len = r.i32("a name length");
        if (len < 1) {
            throw Error(source + ": corrupt file (entry " + std::to_string(i) + " has a name of length " +
                        std::to_string(len) + ")");
        }
        std::string name = r.str(len, "a tensor name");
        const int32_t ncall = r.i32("a call count");
        const int32_t nval = r.i32("a value count");
        if (ncall < 0 || nval < 1 || (size_t) nval > r.left() / 4) {
            throw Error(source + ": tensor " + name + ": corrupt or truncated entry (" + std::to_string(nval) +
                        " values, " + std::to_string(ncall) + " chunks)");
        }
        TensorStats ts;
        ts.sums.resize(nval);
        for (int32_t j = 0; j < nval; ++j) {
            float v;
            std::memcpy(&v, bytes.data() + r.pos + 4 * (size_t) j, 4);
            // stored: mean(x²) × ncall; sums over tokens are that × tokens per chunk
            ts.sums[j] = (double) v * chunk_size;
        }
        r.pos += 4 * (size_t) nval;
        check_sums(ts.sums, source, name);
        ts.counts = {(int64_t) ncall * chunk_size};
        if (!im.tensors.emplace(name, std::move(ts)).second) {
            throw Error(source + ": duplicate tensor " + name);
        }
    }
    if (r.left() > 0) {
        const int32_t chunks = r.i32("the chunk count");
        im.meta.chunk_count = chunks > 0 ? (uint32_t) chunks : 0;
        const int32_t len = r.i32("the dataset name length");
        const std::string dataset = r.str(len, "the dataset name");
        if (!dataset.empty()) {
            im.meta.datasets.push_back(dataset);
        }
    }
    return im;
}

template <typename T> void put(std::vector<uint8_t> & out, T v) {
    const auto * p = reinterpret_cast<const uint8_t *>(&v);
    out.insert(out.end(), p, p + sizeof(T));
}

}  // namespace

Imatrix decode_imatrix(std::span<const uint8_t> bytes, const std::string & source, uint32_t legacy_chunk_size) {
    if (bytes.size() >= 4 && std::memcmp(bytes.data(), "GGUF", 4) == 0) {
        return decode_gguf(bytes, source);
    }
    if (bytes.size() < 4) {
        throw Error(source + ": not an imatrix file (" + std::to_string(bytes.size()) + " bytes)");
    }
    return decode_legacy(bytes, source, legacy_chunk_size);
}

namespace {

// The GGUF of an imatrix; large tensors (covariances) point into `im` instead of being copied.
gguf::File imatrix_gguf(const Imatrix & im) {
    gguf::File f;
    f.kvs.push_back({kKeyType, gguf::make_string("imatrix")});
    f.kvs.push_back({kKeyDatasets, gguf::make_string_array(im.meta.datasets)});
    f.kvs.push_back({kKeyChunkCount, gguf::make_u32(im.meta.chunk_count)});
    f.kvs.push_back({kKeyChunkSize, gguf::make_u32(im.meta.chunk_size)});
    const bool part = im.meta.shard_count > 0;
    if (part) {
        f.kvs.push_back({kKeyShardCount, gguf::make_u32(im.meta.shard_count)});
        f.kvs.push_back({kKeyShardParts, gguf::make_u32_array(im.meta.shards)});
    }
    for (const auto & [name, ts] : im.tensors) {
        if (ts.counts.empty()) {
            continue;
        }
        gguf::Tensor sums{.name = name + kSumsSuffix, .ne = {ts.n_cols(), ts.n_mat()}};
        sums.data.assign(ts.sums.begin(), ts.sums.end());  // double → float, rounded to nearest
        gguf::Tensor counts{.name = name + kCountsSuffix, .ne = {1, ts.n_mat()}};
        counts.data.assign(ts.counts.begin(), ts.counts.end());
        f.tensors.push_back(std::move(sums));
        f.tensors.push_back(std::move(counts));
    }
    // after upstream's tensors, which its tools read alone (they skip tensors of other names)
    for (const auto & [name, ts] : im.tensors) {
        if (ts.counts.empty() || *std::max_element(ts.counts.begin(), ts.counts.end()) < kExactF32) {
            continue;  // F32 is exact: the file stays byte for byte what upstream writes
        }
        gguf::Tensor e{.name = name + kCountsExactSuffix, .ne = {2, ts.n_mat()}};
        for (int64_t c : ts.counts) {
            e.data.push_back((float) (c / kExactF32));
            e.data.push_back((float) (c % kExactF32));
        }
        f.tensors.push_back(std::move(e));
    }
    for (const auto & [name, ts] : im.tensors) {
        if (part && !ts.counts.empty()) {
            gguf::Tensor e{.name = name + kSumsExactSuffix, .ne = {ts.n_cols(), ts.n_mat()}, .type = gguf::kGgmlTypeF64};
            e.data64 = ts.sums;
            f.tensors.push_back(std::move(e));
        }
    }
    for (const auto & [name, a] : im.all_experts) {
        gguf::Tensor sums{.name = name + kAllSumsSuffix, .ne = {a.n_cols(), a.n_rows}};
        if (part) {
            sums.type = gguf::kGgmlTypeF64;
            sums.data64 = a.sums;
        } else {
            sums.data.assign(a.sums.begin(), a.sums.end());
        }
        gguf::Tensor tokens{.name = name + kAllTokensSuffix, .ne = {1}, .data64 = {(double) a.tokens}, .type = gguf::kGgmlTypeF64};
        f.tensors.push_back(std::move(sums));
        f.tensors.push_back(std::move(tokens));
    }
    if (!im.covariances.empty()) {
        std::vector<const Covariance *> sorted;
        for (const Covariance & c : im.covariances) {
            sorted.push_back(&c);
        }
        std::sort(sorted.begin(), sorted.end(), [](auto * a, auto * b) { return a->readers[0] < b->readers[0]; });
        // in double in a shard (its parts add up to one run's doubles), else rounded to F32 as it is written
        auto matrices = [&](const std::string & name, std::vector<int64_t> ne, const std::vector<double> & values) {
            gguf::Tensor t{.name = name, .ne = std::move(ne)};
            if (part) {
                t.type = gguf::kGgmlTypeF64;
                t.data64 = values;
            } else {
                t.rounded_from = &values;
            }
            f.tensors.push_back(std::move(t));
        };
        std::vector<std::string> readers;
        for (const Covariance * c : sorted) {
            readers.push_back(join_commas(c->readers));
            matrices(c->readers[0] + kCovSuffix, {c->block, c->n_cols, c->n_mat}, c->values);
        }
        for (const Covariance * c : sorted) {
            if (!c->cross.empty()) {
                matrices(c->readers[0] + kCrossSuffix, {c->n_cols, c->n_cols, c->n_mat}, c->cross);
            }
        }
        f.kvs.push_back({kKeyCovReaders, gguf::make_string_array(readers)});
    }
    if (!im.meta.covariance_tensors.empty()) {
        f.kvs.push_back({kKeyCovTensors, gguf::make_string(im.meta.covariance_tensors)});
    }
    if (!im.covariances.empty() && im.meta.experts_gate_weighted) {
        f.kvs.push_back({kKeyCovGateWeighted, gguf::make_bool(true)});
    }
    return f;
}

}  // namespace

std::vector<uint8_t> encode_gguf(const Imatrix & im) { return gguf::serialize(imatrix_gguf(im)); }

std::vector<uint8_t> encode_legacy(const Imatrix & im, uint32_t fallback_chunk_size) {
    const int64_t chunk_size = im.meta.chunk_size ? im.meta.chunk_size : fallback_chunk_size;
    std::vector<const std::pair<const std::string, TensorStats> *> stored;
    for (const auto & entry : im.tensors) {
        if (!entry.second.counts.empty() && entry.second.has_data()) {
            stored.push_back(&entry);
        }
    }
    std::vector<uint8_t> out;
    put<int32_t>(out, (int32_t) stored.size());
    for (const auto * entry : stored) {
        const std::string & name = entry->first;
        const TensorStats & ts = entry->second;
        put<int32_t>(out, (int32_t) name.size());
        out.insert(out.end(), name.begin(), name.end());
        // ceiling division, as upstream: a tensor seen at all counts at least one chunk
        const int64_t max_count = *std::max_element(ts.counts.begin(), ts.counts.end());
        const int32_t ncall = (int32_t) ((max_count + chunk_size - 1) / chunk_size);
        put<int32_t>(out, ncall);
        put<int32_t>(out, (int32_t) ts.sums.size());
        const int64_t n_cols = ts.n_cols();
        for (size_t i = 0; i < ts.sums.size(); ++i) {
            // float arithmetic in upstream's order, so both tools write the same bytes
            float count = (float) ts.counts[i / n_cols];
            float value = (float) ts.sums[i];
            if (count == 0.0f) {
                value = 1.0f;  // upstream's mark for a matrix without data: mean 1, i.e. neutral weights
                count = 1.0f;
            }
            put<float>(out, (value / count) * (float) ncall);
        }
    }
    put<int32_t>(out, (int32_t) im.meta.chunk_count);
    const std::string dataset = im.meta.datasets.empty() ? "" : im.meta.datasets.back();
    put<int32_t>(out, (int32_t) dataset.size());
    out.insert(out.end(), dataset.begin(), dataset.end());
    return out;
}

Imatrix load_imatrix(const std::string & path, uint32_t legacy_chunk_size) {
    const MappedFile file(path);
    return decode_imatrix(file.bytes(), path, legacy_chunk_size);
}

void save_imatrix(const Imatrix & im, const std::string & path, ImatrixFormat format) {
    if (format == ImatrixFormat::legacy && im.meta.shard_count > 0) {
        throw Error(path + ": holds part of a sharded run, which needs the GGUF format (its sums in double)");
    }
    if (format == ImatrixFormat::legacy) {
        write_file_atomic(path, encode_legacy(im));
        return;
    }
    AtomicFile out(path);  // streamed: a covariance need not be copied (1 GB per 8B layer) to be written
    gguf::serialize(imatrix_gguf(im), [&](std::span<const uint8_t> piece) { out.write(piece); });
    out.commit();
}

ImatrixFormat format_from_path(const std::string & path) {
    const std::string ext = ".dat";
    const bool dat = path.size() >= ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0;
    return dat ? ImatrixFormat::legacy : ImatrixFormat::gguf;
}

}  // namespace imx
