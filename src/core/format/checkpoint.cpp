#include "core/format/checkpoint.h"

#include "core/format/atomic_file.h"
#include "core/error.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace imx {

namespace fs = std::filesystem;

namespace {

const char kMagicV1[8] = {'I', 'M', 'X', 'C', 'K', 'P', 'T', '1'};
const char kMagicV2[8] = {'I', 'M', 'X', 'C', 'K', 'P', 'T', '2'};  // v1 + covariances
const char kMagicV3[8] = {'I', 'M', 'X', 'C', 'K', 'P', 'T', '3'};  // v2 + all-experts statistics
const char kMagic[8] = {'I', 'M', 'X', 'C', 'K', 'P', 'T', '4'};  // v3 + cross covariances (--target-model)

// Small fields gathered in a buffer; a large array (a covariance: 300 MB at n = 6144) handed to the sink from
// where it lies, not copied first (fresh pages are what a copy costs most on a virtual machine).
struct Out {
    const CheckpointSink & sink;
    std::vector<uint8_t>   b;
    template <typename T> void put(T v) {
        const auto * p = reinterpret_cast<const uint8_t *>(&v);
        b.insert(b.end(), p, p + sizeof v);
    }
    void str(const std::string & s) {
        put<uint64_t>(s.size());
        b.insert(b.end(), s.begin(), s.end());
    }
    template <typename T> void array(const std::vector<T> & v) {
        put<uint64_t>(v.size());
        const auto * p = reinterpret_cast<const uint8_t *>(v.data());
        const size_t n = v.size() * sizeof(T);
        if (n < (64u << 10)) {
            b.insert(b.end(), p, p + n);
            return;
        }
        flush();
        sink(p, n);
    }
    void flush() {
        if (!b.empty()) {
            sink(b.data(), b.size());
            b.clear();
        }
    }
};

// Reads through a source that knows how many bytes are left; arrays straight into their vectors.
struct In {
    const CheckpointSource & source;
    uint64_t                 left;
    const std::string &      path;

    void need(uint64_t n) const {
        if (n > left) {
            throw Error(path + ": truncated checkpoint");
        }
    }
    void read(void * to, uint64_t n) {
        need(n);
        if (n == 0) {
            return;
        }
        source(static_cast<uint8_t *>(to), n);
        left -= n;
    }
    template <typename T> T get() {
        T v;
        read(&v, sizeof v);
        return v;
    }
    std::string str() {
        const uint64_t n = get<uint64_t>();
        need(n);
        std::string s(n, '\0');
        read(s.data(), n);
        return s;
    }
    template <typename T> void array(std::vector<T> & v) {
        const uint64_t n = get<uint64_t>();
        need(n > left / sizeof(T) ? left + 1 : n * sizeof(T));
        v.resize(n);
        read(v.data(), n * sizeof(T));
    }
};

}  // namespace

void write_checkpoint(const Checkpoint & c, const CheckpointSink & sink) {
    Out o{sink, {}};
    o.b.insert(o.b.end(), kMagic, kMagic + 8);
    o.str(c.fingerprint);
    o.put<uint32_t>(c.next_chunk);
    o.put<uint32_t>((uint32_t) c.data.meta.datasets.size());
    for (const auto & d : c.data.meta.datasets) {
        o.str(d);
    }
    o.put<uint32_t>(c.data.meta.chunk_size);
    o.put<uint32_t>((uint32_t) c.data.tensors.size());
    for (const auto & [name, ts] : c.data.tensors) {
        o.str(name);
        o.array(ts.counts);
        o.array(ts.sums);
    }
    o.put<uint32_t>((uint32_t) c.data.covariances.size());
    for (const Covariance & cov : c.data.covariances) {
        o.put<uint64_t>(cov.readers.size());
        for (const auto & r : cov.readers) {
            o.str(r);
        }
        o.put<int64_t>(cov.n_cols);
        o.put<int64_t>(cov.block);
        o.put<int64_t>(cov.n_mat);
        o.array(cov.counts);
        o.array(cov.values);
    }
    o.put<uint32_t>((uint32_t) c.data.all_experts.size());
    for (const auto & [name, a] : c.data.all_experts) {
        o.str(name);
        o.put<int64_t>(a.n_rows);
        o.put<int64_t>(a.tokens);
        o.array(a.sums);
    }
    for (const Covariance & cov : c.data.covariances) {
        o.array(cov.cross);
    }
    o.flush();
}

// Streamed into the temporary file (a covariance checkpoint is ~2 GB per 8B layer: no copy of it in memory).
void save_checkpoint(const Checkpoint & c, const std::string & path) {
    AtomicFile file(path);
    write_checkpoint(c, [&](const uint8_t * p, size_t n) { file.write({p, n}); });
    file.commit();
}

// Read straight into the vectors, as written.
Checkpoint load_checkpoint(const std::string & path) {
    std::ifstream f(path, std::ios::binary);
    std::error_code ec;
    const uint64_t size = f ? (uint64_t) fs::file_size(path, ec) : 0;
    if (!f || ec) {
        throw Error(path + ": cannot read (" + std::strerror(errno) + ")");
    }
    return read_checkpoint(size, [&](uint8_t * to, size_t n) {
        if (!f.read(reinterpret_cast<char *>(to), (std::streamsize) n)) {
            throw Error(path + ": cannot read (shorter than it says)");
        }
    }, path);
}

Checkpoint read_checkpoint(uint64_t size, const CheckpointSource & source, const std::string & path) {
    In in{source, size, path};
    char magic[8];
    in.read(magic, 8);
    const bool v1 = std::memcmp(magic, kMagicV1, 8) == 0;
    const bool v2 = std::memcmp(magic, kMagicV2, 8) == 0;
    const bool v3 = std::memcmp(magic, kMagicV3, 8) == 0;
    if (!v1 && !v2 && !v3 && std::memcmp(magic, kMagic, 8) != 0) {
        throw Error(path + ": not an imx checkpoint");
    }
    Checkpoint c;
    c.fingerprint = in.str();
    c.next_chunk = in.get<uint32_t>();
    const uint32_t n_datasets = in.get<uint32_t>();
    for (uint32_t i = 0; i < n_datasets; ++i) {
        c.data.meta.datasets.push_back(in.str());
    }
    c.data.meta.chunk_size = in.get<uint32_t>();
    c.data.meta.chunk_count = c.next_chunk;
    const uint32_t n_tensors = in.get<uint32_t>();
    for (uint32_t i = 0; i < n_tensors; ++i) {
        const std::string name = in.str();
        TensorStats ts;
        in.array(ts.counts);
        in.array(ts.sums);
        if (ts.counts.empty() || ts.sums.size() % ts.counts.size() != 0) {
            throw Error(path + ": corrupt checkpoint (tensor " + name + ")");
        }
        c.data.tensors.emplace(name, std::move(ts));
    }
    const uint32_t n_cov = v1 ? 0 : in.get<uint32_t>();
    for (uint32_t i = 0; i < n_cov; ++i) {
        Covariance cov;
        const uint64_t n_readers = in.get<uint64_t>();
        in.need(n_readers);
        for (uint64_t r = 0; r < n_readers; ++r) {
            cov.readers.push_back(in.str());
        }
        cov.n_cols = in.get<int64_t>();
        cov.block = in.get<int64_t>();
        cov.n_mat = in.get<int64_t>();
        in.array(cov.counts);
        in.array(cov.values);
        if (cov.readers.empty() || cov.block < 1 || cov.n_cols < 1 || cov.n_mat < 1 ||
            (int64_t) cov.counts.size() != cov.n_mat ||
            cov.values.size() != (uint64_t) (cov.n_cols * cov.block * cov.n_mat)) {
            throw Error(path + ": corrupt checkpoint (covariance " + std::to_string(i) + ")");
        }
        c.data.covariances.push_back(std::move(cov));
    }
    const uint32_t n_all = v1 || v2 ? 0 : in.get<uint32_t>();
    for (uint32_t i = 0; i < n_all; ++i) {
        const std::string name = in.str();
        AllExpertStats a;
        a.n_rows = in.get<int64_t>();
        a.tokens = in.get<int64_t>();
        in.array(a.sums);
        if (a.n_rows < 1 || a.sums.size() % (uint64_t) a.n_rows != 0 || !c.data.tensors.count(name)) {
            throw Error(path + ": corrupt checkpoint (all-experts statistics of " + name + ")");
        }
        c.data.all_experts.emplace(name, std::move(a));
    }
    for (size_t i = 0; !v1 && !v2 && !v3 && i < c.data.covariances.size(); ++i) {
        Covariance & cov = c.data.covariances[i];
        in.array(cov.cross);
        if (!cov.cross.empty() && (!cov.full() || cov.cross.size() != cov.values.size())) {
            throw Error(path + ": corrupt checkpoint (cross covariance " + std::to_string(i) + ")");
        }
    }
    return c;
}

}  // namespace imx
