#include "core/imatrix.h"

#include "core/error.h"

#include <algorithm>

namespace imx {

int64_t TensorStats::n_unseen() const {
    int64_t n = 0;
    for (int64_t c : counts) {
        n += c == 0;
    }
    return n;
}

// Expands a single shared count to one per matrix, so that per-expert counts can be added to it.
static void broadcast_counts(TensorStats & t, int64_t n_mat) {
    if (t.n_mat() == 1 && n_mat > 1) {
        t.counts.assign(n_mat, t.counts[0]);
    }
}

const Covariance * Imatrix::covariance_of(const std::string & weight) const {
    for (const Covariance & c : covariances) {
        if (std::find(c.readers.begin(), c.readers.end(), weight) != c.readers.end()) {
            return &c;
        }
    }
    return nullptr;
}

namespace {

// Two files of one run with different covariance subsets: the same sums, covariances side by side.
void join_covariances(Imatrix & into, const Imatrix & other, const std::string & what) {
    const ImatrixMeta & m = into.meta, & o = other.meta;
    if (m.datasets != o.datasets || m.chunk_count != o.chunk_count || m.chunk_size != o.chunk_size ||
        m.shards != o.shards || into.tensors.size() != other.tensors.size()) {
        throw Error(what + ": holds covariances of " + o.covariance_tensors + " but not over the same chunks as the "
                    "files before it (join the covariance sets of one run first, then merge runs)");
    }
    for (const auto & [name, ts] : other.tensors) {
        const auto it = into.tensors.find(name);
        if (it == into.tensors.end() || it->second.counts != ts.counts || it->second.sums != ts.sums) {
            throw Error(what + ": tensor " + name + " differs from the files before it: a covariance set can only "
                        "join one of the same run");
        }
    }
    for (const Covariance & c : other.covariances) {
        if (into.covariance_of(c.readers[0])) {
            throw Error(what + ": the covariance of " + c.readers[0] + " is already in the files before it (" +
                        o.covariance_tensors + " overlaps " + m.covariance_tensors + ")");
        }
        into.covariances.push_back(c);
    }
    std::sort(into.covariances.begin(), into.covariances.end(),
              [](const Covariance & a, const Covariance & b) { return a.readers[0] < b.readers[0]; });
    into.meta.covariance_tensors = "(" + m.covariance_tensors + ")|(" + o.covariance_tensors + ")";
}

// Sums of the same text would add twice otherwise; statistics only one side has cover part of the text.
void merge_all_experts(Imatrix & into, const Imatrix & other, const std::string & what) {
    for (auto it = into.all_experts.begin(); it != into.all_experts.end();) {
        const auto o = other.all_experts.find(it->first);
        if (o == other.all_experts.end()) {
            it = into.all_experts.erase(it);
            continue;
        }
        AllExpertStats & a = it->second;
        if (a.sums.size() != o->second.sums.size() || a.n_rows != o->second.n_rows) {
            throw Error(what + ": the all-experts statistics of " + it->first + " differ in shape from the files before it");
        }
        for (size_t i = 0; i < a.sums.size(); ++i) {
            a.sums[i] += o->second.sums[i];
        }
        a.tokens += o->second.tokens;
        ++it;
    }
}

}  // namespace

std::vector<std::string> merge_into(Imatrix & into, const Imatrix & other, const std::string & what) {
    if (!into.covariances.empty() && !other.covariances.empty() &&
        into.meta.experts_gate_weighted != other.meta.experts_gate_weighted) {
        throw Error(what + ": its expert covariances are " + (other.meta.experts_gate_weighted ? "" : "not ") +
                    "weighted by the router's gates, those of the files before it are" +
                    (into.meta.experts_gate_weighted ? "" : " not") + " (collect both with or both without "
                    "--gate-weights)");
    }
    if (!into.meta.covariance_tensors.empty() && !other.meta.covariance_tensors.empty()) {
        join_covariances(into, other, what);
        if (into.all_experts.empty()) {  // the same run: the same statistics where both hold them
            into.all_experts = other.all_experts;
        }
        return {};
    }
    std::vector<std::string> dropped;
    std::vector<Covariance> kept;
    for (Covariance & c : into.covariances) {
        const Covariance * o = other.covariance_of(c.readers[0]);
        if (o) {
            add_covariance(c, *o, what);
            kept.push_back(std::move(c));
        } else {
            dropped.push_back(c.readers[0]);
        }
    }
    into.covariances = std::move(kept);
    merge_all_experts(into, other, what);

    for (const auto & [name, src] : other.tensors) {
        auto it = into.tensors.find(name);
        if (it == into.tensors.end()) {
            into.tensors.emplace(name, src);
            continue;
        }
        TensorStats & dst = it->second;
        if (dst.sums.size() != src.sums.size()) {
            throw Error(what + ": tensor " + name + " has " + std::to_string(src.sums.size()) +
                        " values, but " + std::to_string(dst.sums.size()) + " in the files before it");
        }
        TensorStats add = src;
        if (dst.n_mat() != add.n_mat()) {
            const int64_t n = std::max(dst.n_mat(), add.n_mat());
            broadcast_counts(dst, n);
            broadcast_counts(add, n);
            if (dst.n_mat() != add.n_mat()) {
                throw Error(what + ": tensor " + name + " has " + std::to_string(src.n_mat()) +
                            " matrices, but " + std::to_string(it->second.n_mat()) + " in the files before it");
            }
        }
        for (size_t i = 0; i < dst.sums.size(); ++i) {
            dst.sums[i] += add.sums[i];
        }
        for (size_t i = 0; i < dst.counts.size(); ++i) {
            dst.counts[i] += add.counts[i];
        }
    }

    ImatrixMeta & m = into.meta;
    const ImatrixMeta & o = other.meta;
    const bool parts = m.shard_count > 0 && m.shard_count == o.shard_count && m.datasets == o.datasets &&
                       m.chunk_size == o.chunk_size;
    if (parts) {  // the text once, as one run over all its chunks names it
        for (uint32_t s : o.shards) {
            if (std::find(m.shards.begin(), m.shards.end(), s) != m.shards.end()) {
                throw Error(what + ": shard " + std::to_string(s) + "/" + std::to_string(m.shard_count) +
                            " is already in the files before it");
            }
            m.shards.push_back(s);
        }
        std::sort(m.shards.begin(), m.shards.end());
        if (m.shards.size() == m.shard_count) {
            m.shard_count = 0;  // all parts: a whole run
            m.shards.clear();
        }
    } else {
        m.datasets.insert(m.datasets.end(), o.datasets.begin(), o.datasets.end());
        m.shard_count = 0;  // parts of different runs make no part of any
        m.shards.clear();
    }
    if (m.chunk_size == 0) {
        m.chunk_size = o.chunk_size;
    }
    if (o.chunk_size == m.chunk_size) {
        m.chunk_count += o.chunk_count;
    } else {
        // Different chunk sizes: chunks are no common unit, tokens are. Express the total in our chunk size.
        m.chunk_count += (uint32_t) (((uint64_t) o.chunk_count * o.chunk_size) / m.chunk_size);
    }
    into.counts_per_expert_known = into.counts_per_expert_known && other.counts_per_expert_known;
    return dropped;
}

std::string block_name(const std::string & block0_name, int block) {
    const std::string prefix = "blk.0.";
    return block0_name.rfind(prefix, 0) == 0 ? "blk." + std::to_string(block) + "." + block0_name.substr(prefix.size())
                                             : block0_name;
}

void add_block(Imatrix & into, Imatrix && block0, int block) {
    for (auto & [name, ts] : block0.tensors) {
        into.tensors[block_name(name, block)] = std::move(ts);
    }
    for (auto & [name, a] : block0.all_experts) {
        into.all_experts[block_name(name, block)] = std::move(a);
    }
    for (Covariance & c : block0.covariances) {
        for (std::string & r : c.readers) {
            r = block_name(r, block);
        }
        into.covariances.push_back(std::move(c));
    }
    std::sort(into.covariances.begin(), into.covariances.end(),
              [](const Covariance & a, const Covariance & b) { return a.readers[0] < b.readers[0]; });
}

}  // namespace imx
