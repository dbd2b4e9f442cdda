#include "core/format/checkpoint.h"

#include "core/format/atomic_file.h"
#include "core/error.h"

#include <cstring>

namespace imx {

namespace {

const char kMagicV1[8] = {'I', 'M', 'X', 'C', 'K', 'P', 'T', '1'};
const char kMagicV2[8] = {'I', 'M', 'X', 'C', 'K', 'P', 'T', '2'};  // v1 + covariances
const char kMagicV3[8] = {'I', 'M', 'X', 'C', 'K', 'P', 'T', '3'};  // v2 + all-experts statistics
const char kMagic[8] = {'I', 'M', 'X', 'C', 'K', 'P', 'T', '4'};  // v3 + cross covariances (--target-model)

struct Out {
    std::vector<uint8_t> b;
    template <typename T> void put(T v) {
        const auto * p = reinterpret_cast<const uint8_t *>(&v);
        b.insert(b.end(), p, p + sizeof v);
    }
    void str(const std::string & s) {
        put<uint64_t>(s.size());
        b.insert(b.end(), s.begin(), s.end());
    }
};

struct In {
    const std::vector<uint8_t> & b;
    const std::string &          path;
    size_t                       pos = 0;

    void need(uint64_t n) const {
        if (n > b.size() - pos) {
            throw Error(path + ": truncated checkpoint");
        }
    }
    template <typename T> T get() {
        need(sizeof(T));
        T v;
        std::memcpy(&v, b.data() + pos, sizeof v);
        pos += sizeof v;
        return v;
    }
    std::string str() {
        const uint64_t n = get<uint64_t>();
        need(n);
        std::string s(reinterpret_cast<const char *>(b.data() + pos), n);
        pos += n;
        return s;
    }
    template <typename T> void array(std::vector<T> & v) {
        const uint64_t n = get<uint64_t>();
        need(n > (b.size() - pos) / sizeof(T) ? b.size() : n * sizeof(T));
        v.resize(n);
        if (n) {
            std::memcpy(v.data(), b.data() + pos, n * sizeof(T));
        }
        pos += n * sizeof(T);
    }
};

}  // namespace

std::vector<uint8_t> checkpoint_bytes(const Checkpoint & c) {
    Out o;
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
        o.put<uint64_t>(ts.counts.size());
        for (int64_t x : ts.counts) {
            o.put<int64_t>(x);
        }
        o.put<uint64_t>(ts.sums.size());
        for (double x : ts.sums) {
            o.put<double>(x);
        }
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
        o.put<uint64_t>(cov.counts.size());
        for (int64_t x : cov.counts) {
            o.put<int64_t>(x);
        }
        o.put<uint64_t>(cov.values.size());
        o.b.insert(o.b.end(), reinterpret_cast<const uint8_t *>(cov.values.data()),
                   reinterpret_cast<const uint8_t *>(cov.values.data() + cov.values.size()));
    }
    o.put<uint32_t>((uint32_t) c.data.all_experts.size());
    for (const auto & [name, a] : c.data.all_experts) {
        o.str(name);
        o.put<int64_t>(a.n_rows);
        o.put<int64_t>(a.tokens);
        o.put<uint64_t>(a.sums.size());
        for (double x : a.sums) {
            o.put<double>(x);
        }
    }
    for (const Covariance & cov : c.data.covariances) {
        o.put<uint64_t>(cov.cross.size());
        o.b.insert(o.b.end(), reinterpret_cast<const uint8_t *>(cov.cross.data()),
                   reinterpret_cast<const uint8_t *>(cov.cross.data() + cov.cross.size()));
    }
    return std::move(o.b);
}

void save_checkpoint(const Checkpoint & c, const std::string & path) { write_file_atomic(path, checkpoint_bytes(c)); }

Checkpoint load_checkpoint(const std::string & path) { return parse_checkpoint(read_file(path), path); }

Checkpoint parse_checkpoint(const std::vector<uint8_t> & bytes, const std::string & path) {
    In in{bytes, path};
    in.need(8);
    const bool v1 = std::memcmp(bytes.data(), kMagicV1, 8) == 0;
    const bool v2 = std::memcmp(bytes.data(), kMagicV2, 8) == 0;
    const bool v3 = std::memcmp(bytes.data(), kMagicV3, 8) == 0;
    if (!v1 && !v2 && !v3 && std::memcmp(bytes.data(), kMagic, 8) != 0) {
        throw Error(path + ": not an imx checkpoint");
    }
    in.pos = 8;
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
