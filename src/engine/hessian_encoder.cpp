#include "hessian_encoder.h"

#include "core/error.h"

#include "ggml.h"
#include "gguf.h"

#include <algorithm>
#include <atomic>
#include <fstream>
#include <memory>
#include <regex>
#include <thread>

namespace imx::engine {

namespace {

// A GGUF file's tensor table (header only).
struct TensorTable {
    ggml_context * meta = nullptr;
    gguf_context * ctx = nullptr;
    std::string    path;

    explicit TensorTable(const std::string & p) : path(p) {
        ctx = gguf_init_from_file(p.c_str(), {true, &meta});
        if (!ctx) {
            throw Error(p + ": not a GGUF file (or unreadable)");
        }
    }
    ~TensorTable() {
        gguf_free(ctx);
        ggml_free(meta);
    }
    const ggml_tensor * find(const std::string & name) const { return ggml_get_tensor(meta, name.c_str()); }
    size_t offset(const std::string & name) const {
        return gguf_get_data_offset(ctx) + gguf_get_tensor_offset(ctx, gguf_find_tensor(ctx, name.c_str()));
    }
};

std::vector<uint8_t> read_bytes(std::fstream & f, const std::string & path, size_t offset, size_t n) {
    std::vector<uint8_t> b(n);
    f.seekg((std::streamoff) offset);
    f.read(reinterpret_cast<char *>(b.data()), (std::streamsize) n);
    if (!f) {
        throw Error(path + ": truncated (reading " + std::to_string(n) + " bytes at " + std::to_string(offset) + ")");
    }
    return b;
}

void to_float(ggml_type type, const uint8_t * src, float * dst, int64_t n) {
    if (type == GGML_TYPE_F32) {
        std::copy_n(reinterpret_cast<const float *>(src), n, dst);
    } else {
        ggml_get_type_traits(type)->to_float(src, dst, n);
    }
}

// Runs f(i) for i in [0, n) on `threads` threads, dynamically scheduled.
template <typename F> void parallel_for(int64_t n, int threads, F && f) {
    std::atomic<int64_t> next{0};
    auto work = [&] {
        for (int64_t i; (i = next++) < n;) {
            f(i);
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < std::min<int64_t>(threads, n); ++t) {
        pool.emplace_back(work);
    }
    work();
    for (auto & t : pool) {
        t.join();
    }
}

// H_m per token for each matrix of a covariance, with the prior toward the pooled covariance (see the header).
std::vector<double> matrix_hessian(const Covariance & c, int64_t m, double prior_weight, const std::vector<double> & pooled,
                                   bool & is_pooled) {
    const int64_t n = c.n_cols;
    const double count = (double) c.counts[m];
    is_pooled = count == 0;
    if (count == 0) {
        return pooled;
    }
    std::vector<double> h = c.dense(m);
    for (size_t i = 0; i < h.size(); ++i) {
        h[i] = (h[i] + prior_weight * pooled[i]) / (count + prior_weight);
    }
    (void) n;
    return h;
}

}  // namespace

std::vector<HessianTensorReport> hessian_reencode(const std::string & model, const std::string & quantized,
                                                  const Imatrix & im, const HessianOptions & o,
                                                  const std::function<void(int, int)> & progress) {
    const TensorTable src(model), dst(quantized);
    const int threads = o.threads > 0 ? o.threads : (int) std::max(1u, std::thread::hardware_concurrency());
    std::fstream in(model, std::ios::binary | std::ios::in);
    std::fstream out(quantized, std::ios::binary | std::ios::in | std::ios::out);
    if (!in || !out) {
        throw Error((in ? quantized : model) + ": cannot open");
    }

    // the work: readers of each covariance that the output holds in a quantized type
    struct Job { const Covariance * cov; std::string name; };
    std::vector<Job> jobs;
    const std::regex only(o.tensors.empty() ? std::string(".*") : o.tensors);
    for (const Covariance & c : im.covariances) {
        for (const std::string & r : c.readers) {
            const auto ts = im.tensors.find(r);
            const bool per_head = ts != im.tensors.end() && ts->second.n_mat() == 1 && c.n_mat > 1;
            if (!std::regex_search(r, only) || (per_head && !o.per_head)) {
                continue;
            }
            const ggml_tensor * t = dst.find(r);
            if (t && ggml_is_quantized(t->type) && t->ne[0] == c.n_cols && t->ne[0] % ggml_blck_size(t->type) == 0 &&
                t->ne[2] == c.n_mat && t->ne[3] == 1) {
                jobs.push_back({&c, r});
            }
        }
    }

    std::vector<HessianTensorReport> reports;
    const Covariance * built_for = nullptr;
    int64_t built_block = 0;
    std::vector<std::unique_ptr<HessianRounder>> rounders;
    std::vector<uint8_t> pooled_matrix;  // not vector<bool>: written from several threads
    int done = 0;
    for (const Job & job : jobs) {
        const Covariance & c = *job.cov;
        const ggml_tensor * qt = dst.find(job.name);
        const ggml_tensor * st = src.find(job.name);
        if (!st || st->ne[0] != qt->ne[0] || st->ne[1] != qt->ne[1] || st->ne[2] != qt->ne[2]) {
            throw Error(model + ": tensor " + job.name + " is missing or has another shape than in " + quantized);
        }
        const ggml_type type = qt->type;
        const int64_t n = c.n_cols, rows = qt->ne[1], n_mat = qt->ne[2], block = ggml_blck_size(type);
        const int64_t total_counts = [&] { int64_t s = 0; for (auto x : c.counts) s += x; return s; }();
        if (total_counts == 0) {
            progress(++done, (int) jobs.size());
            continue;
        }
        // rounders are shared by the readers of one input (q/k/v, gate/up) when their types share a block size
        if (built_for != &c || built_block != block) {
            std::vector<double> pooled((size_t) (n * n), 0.0);
            for (int64_t m = 0; m < c.n_mat; ++m) {
                const auto h = c.dense(m);
                for (size_t i = 0; i < h.size(); ++i) {
                    pooled[i] += h[i] / (double) total_counts;
                }
            }
            rounders.clear();
            rounders.resize((size_t) n_mat);
            pooled_matrix.assign((size_t) n_mat, 0);
            parallel_for(n_mat, threads, [&](int64_t m) {
                bool is_pooled = false;
                const auto h = matrix_hessian(c, m, o.prior_weight, pooled, is_pooled);
                rounders[m] = std::make_unique<HessianRounder>(h, n, block, o.rounding);
                pooled_matrix[m] = is_pooled ? 1 : 0;
            });
            built_for = &c;
            built_block = block;
        }

        const size_t row_bytes = ggml_row_size(type, n), src_row_bytes = ggml_row_size(st->type, n);
        const size_t dst_offset = dst.offset(job.name);
        std::vector<uint8_t> q = read_bytes(out, quantized, dst_offset, row_bytes * rows * n_mat);
        const std::vector<uint8_t> w = read_bytes(in, model, src.offset(job.name), src_row_bytes * rows * n_mat);

        ggml_quantize_init(type);
        BlockQuantizer bq;
        bq.block = block;
        bq.block_bytes = ggml_type_size(type);
        bq.encode = [type, block](const float * target, const float * importance, uint8_t * bytes, float * decoded) {
            ggml_quantize_chunk(type, target, bytes, 0, 1, block, importance);
            ggml_get_type_traits(type)->to_float(bytes, decoded, block);
        };

        HessianTensorReport rep;
        rep.name = job.name;
        rep.type = ggml_type_name(type);
        rep.rows = rows * n_mat;
        for (int64_t m = 0; m < n_mat; ++m) {
            rep.pooled_matrices += pooled_matrix[m] ? 1 : 0;
        }
        std::vector<double> loss_before((size_t) (rows * n_mat)), loss_after((size_t) (rows * n_mat));
        std::vector<uint8_t> improved((size_t) (rows * n_mat), 0);
        parallel_for(rows * n_mat, threads, [&](int64_t r) {
            const HessianRounder & hr = *rounders[r / rows];
            std::vector<float> wf((size_t) n), diag((size_t) n), hess((size_t) n);
            std::vector<uint8_t> code(row_bytes);
            to_float(st->type, w.data() + r * src_row_bytes, wf.data(), n);
            uint8_t * row = q.data() + r * row_bytes;
            to_float(type, row, diag.data(), n);
            const double before = hr.loss(wf.data(), diag.data());
            const double after = hr.round_row(wf.data(), bq, code.data(), hess.data());
            loss_before[r] = before;
            loss_after[r] = std::min(before, after);
            if (after < before) {
                std::copy(code.begin(), code.end(), row);
                improved[r] = 1;
            }
        });
        for (int64_t r = 0; r < rows * n_mat; ++r) {
            rep.loss_diagonal += loss_before[r];
            rep.loss_final += loss_after[r];
            rep.rows_improved += improved[r];
        }
        out.seekp((std::streamoff) dst_offset);
        out.write(reinterpret_cast<const char *>(q.data()), (std::streamsize) q.size());
        if (!out) {
            throw Error(quantized + ": cannot write tensor " + job.name);
        }
        reports.push_back(rep);
        progress(++done, (int) jobs.size());
    }
    out.flush();
    if (!out) {
        throw Error(quantized + ": write failed");
    }
    return reports;
}

}  // namespace imx::engine
