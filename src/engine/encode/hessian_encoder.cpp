#include "engine/encode/hessian_encoder.h"

#include "engine/encode/fixed_scale_rounding.h"
#include "engine/encode/lattice_rounding.h"

#include "core/error.h"
#include "core/math/linear_algebra.h"
#include "engine/model/tensor_file.h"

#include "ggml.h"
#include "gguf.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <fstream>
#include <malloc.h>
#include <memory>
#include <regex>
#include <thread>

namespace imx::engine {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One tensor to re-encode: a reader of covariance `cov`, with its shapes in the model and the quantized file.
struct Job {
    std::string         name;
    const ggml_tensor * src;  // in the model (F32/F16/BF16)
    const ggml_tensor * dst;  // in the quantized file
    HessianTensorReport report;
};

// H of matrix m as the rounder takes it: the covariance's values (layout of core/covariance.h) and a scale.
// H_m = (XᵀX_m + W·C̄)/(n_m + W); an expert without tokens gets C̄. Only a blend needs a copy.
struct MatrixHessian {
    const double *      values = nullptr;
    double              scale = 1;
    bool                pooled = false;
    std::vector<double> blended;
};

MatrixHessian matrix_hessian(const Covariance & c, int64_t m, double prior_weight, const std::vector<double> & pooled) {
    const size_t size = (size_t) (c.n_cols * c.block);
    const double * own = c.values.data() + m * (int64_t) size;
    const double count = (double) c.counts[m];
    MatrixHessian h;
    if (count == 0) {
        h.values = pooled.data();
        h.pooled = true;
    } else if (prior_weight == 0 || pooled.empty()) {
        h.values = own;
        h.scale = 1.0 / count;
    } else {
        h.blended.resize(size);
        for (size_t i = 0; i < size; ++i) {
            h.blended[i] = (own[i] + prior_weight * pooled[i]) / (count + prior_weight);
        }
        h.values = h.blended.data();
    }
    return h;
}

// Expert e's H from a covariance pooled over the experts (core/covariance.h): the pooled correlation scaled
// by the expert's own diagonal, H_e = D_e^½ R D_e^½ with D_e = (Σx²_e + W·c̄)/(n_e + W) from the imatrix sums.
MatrixHessian expert_from_pooled(const Covariance & c, const TensorStats & ts, int64_t e, double prior_weight) {
    const int64_t n = c.n_cols, b = c.block;
    const double total = (double) c.counts[0], count = (double) ts.counts[e];
    MatrixHessian h;
    h.pooled = count == 0;
    h.blended.resize((size_t) (n * b));
    std::vector<double> pooled_diag((size_t) n), scale((size_t) n);
    for (int64_t i = 0; i < n; ++i) {
        pooled_diag[i] = c.values[i * b + i - c.block_start(i)] / total;
        const double own = count > 0 ? (ts.sums[e * n + i] + prior_weight * pooled_diag[i]) / (count + prior_weight)
                                     : pooled_diag[i];
        scale[i] = pooled_diag[i] > 0 ? std::sqrt(own / pooled_diag[i]) : 0.0;
    }
    // (tried: keeping the pooled off-diagonal and replacing only the diagonal, C̄ + diag(d_e − c̄): 54% of the
    // per-expert KLD gain on qwen3moe-tiny Q2_K, against 87% for this scaling)
    for (int64_t i = 0; i < n; ++i) {
        const int64_t s = c.block_start(i);
        for (int64_t k = 0; k < b; ++k) {
            h.blended[i * b + k] = c.values[i * b + k] / total * scale[i] * scale[s + k];
        }
    }
    h.values = h.blended.data();
    return h;
}

// Sequential quantization (core/covariance.h): D_m = γ·(X̃ᵀX − X̃ᵀX̃)_m / (n_m + W) in float, row-major n×n, γ the
// step; empty without a cross term or tokens (the targets stay the weights). The prior W shrinks it toward none.
std::vector<float> cross_shift(const Covariance & c, int64_t m, double prior_weight, double step) {
    if (c.cross.empty() || !c.full() || c.counts[m] == 0) {
        return {};
    }
    const size_t size = (size_t) (c.n_cols * c.n_cols);
    const double * cross = c.cross.data() + m * (int64_t) size;
    const double * h = c.values.data() + m * (int64_t) size;
    const double scale = step / ((double) c.counts[m] + prior_weight);
    std::vector<float> d(size);
    for (size_t i = 0; i < size; ++i) {
        d[i] = (float) ((cross[i] - h[i]) * scale);
    }
    return d;
}

// The rows' targets w* = w + H⁻¹·D·w (H damped, as the rounder holds it): with γ = 1, what best reproduces the
// target model's outputs on the inputs the quantized model gives.
void shift_targets(const HessianRounder & rounder, const std::vector<float> & d, float * w, int64_t rows) {
    const int64_t n = rounder.n();
    std::vector<float> y((size_t) (rows * n));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int) rows, (int) n, (int) n, 1.0f, w, (int) n, d.data(),
                (int) n, 0.0f, y.data(), (int) n);
    rounder.solve(y.data(), rows);
    for (size_t i = 0; i < y.size(); ++i) {
        w[i] += y[i];
    }
}

// C̄ = Σ_m XᵀX_m / Σ_m n_m, in the covariance's layout.
std::vector<double> pooled_hessian(const Covariance & c, int64_t total_counts) {
    const size_t size = (size_t) (c.n_cols * c.block);
    std::vector<double> pooled(size, 0.0);
    for (int64_t m = 0; m < c.n_mat; ++m) {
        const double * v = c.values.data() + m * (int64_t) size;
        for (size_t i = 0; i < size; ++i) {
            pooled[i] += v[i] / (double) total_counts;
        }
    }
    return pooled;
}

// Freed buffers stay with the process for the next tensor instead of going back to the kernel: the encoder
// allocates and frees hundreds of MB per tensor (factors, rows, targets), and on the VM the benchmarks ran on,
// memory fresh from the kernel cost ~1.6 s per GB to touch (the 8B layer's Q2_K: 66.9 → 64.1 s). glibc would
// otherwise serve each of them with its own mmap and give it back on free.
void keep_freed_memory() {
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
}

// The work: per covariance, its readers that the output holds in a quantized type (and the options allow).
std::vector<std::pair<const Covariance *, std::vector<Job>>> plan_jobs(const TensorTable & src, const TensorTable & dst,
                                                                       const Imatrix & im, const HessianOptions & o,
                                                                       int & total) {
    std::vector<std::pair<const Covariance *, std::vector<Job>>> work;
    total = 0;
    const std::regex only(o.tensors.empty() ? std::string(".*") : o.tensors);
    for (const Covariance & c : im.covariances) {
        std::vector<Job> jobs;
        for (const std::string & r : c.readers) {
            const auto ts = im.tensors.find(r);
            const bool per_head = ts != im.tensors.end() && ts->second.n_mat() == 1 && c.n_mat > 1;
            if (!std::regex_search(r, only) || (per_head && !o.per_head)) {
                continue;
            }
            const ggml_tensor * t = dst.find(r);
            const bool pooled = c.n_mat == 1 && ts != im.tensors.end() && ts->second.n_mat() > 1;
            if (!t || !ggml_is_quantized(t->type) || t->ne[0] != c.n_cols ||
                t->ne[2] != (pooled ? ts->second.n_mat() : c.n_mat) || t->ne[3] != 1 ||
                c.block % ggml_blck_size(t->type) != 0) {
                continue;
            }
            const ggml_tensor * st = src.find(r);
            if (!st || st->ne[0] != t->ne[0] || st->ne[1] != t->ne[1] || st->ne[2] != t->ne[2]) {
                throw Error(src.path() + ": tensor " + r + " is missing or has another shape than in " + dst.path());
            }
            Job j{r, st, t, {}};
            j.report.name = r;
            j.report.type = ggml_type_name(t->type);
            j.report.rows = t->ne[1] * t->ne[2];
            jobs.push_back(std::move(j));
        }
        if (!jobs.empty()) {
            total += (int) (jobs.size() * jobs[0].dst->ne[2]);
            work.emplace_back(&c, std::move(jobs));
        }
    }
    return work;
}

// ggml's quantizer of a type as the rounder's block encoder, with the re-rounding of its refinement rounds.
BlockQuantizer block_quantizer(ggml_type type, bool refine_rescale) {
    ggml_quantize_init(type);
    BlockQuantizer bq;
    bq.block = ggml_blck_size(type);
    bq.block_bytes = ggml_type_size(type);
    const int64_t block = bq.block;
    bq.encode = [type, block](const float * target, const float * importance, uint8_t * bytes, float * decoded) {
        ggml_quantize_chunk(type, target, bytes, 0, 1, block, importance);
        ggml_get_type_traits(type)->to_float(bytes, decoded, block);
    };
    if (!refine_rescale) {
        bq.reround = fixed_scale_reround(type);
        if (!bq.reround) {
            bq.reround = lattice_reround(type);
        }
    }
    return bq;
}

// --output-scales: Σ wᵀHq and qᵀHq of both encodings and wᵀHw, from losses against zero
// (wᵀHq = (wᵀHw + qᵀHq − (w − q)ᵀH(w − q)) / 2, the last term each encoding's known loss).
void add_output_scales(const HessianRounder & rounder, const std::vector<float> & w, const std::vector<float> & diag,
                       const std::vector<uint8_t> & q, ggml_type type, int64_t rows, const std::vector<double> & before,
                       const std::vector<double> & after, int threads, HessianTensorReport & report) {
    const int64_t n = rounder.n();
    const size_t row_bytes = ggml_row_size(type, n);
    const std::vector<float> zero((size_t) (rows * n), 0.0f);
    std::vector<float> fin((size_t) (rows * n));
    for (int64_t r = 0; r < rows; ++r) {
        to_float(type, q.data() + r * row_bytes, fin.data() + r * n, n);
    }
    std::vector<double> ww((size_t) rows), qq_d((size_t) rows), qq_f((size_t) rows);
    rounder.losses(zero.data(), w.data(), rows, ww.data(), threads);
    rounder.losses(zero.data(), diag.data(), rows, qq_d.data(), threads);
    rounder.losses(zero.data(), fin.data(), rows, qq_f.data(), threads);
    for (int64_t r = 0; r < rows; ++r) {
        report.wq_diagonal += (ww[r] + qq_d[r] - before[r]) / 2;
        report.qq_diagonal += qq_d[r];
        report.wq_final += (ww[r] + qq_f[r] - std::min(before[r], after[r])) / 2;
        report.qq_final += qq_f[r];
        report.ww += ww[r];
    }
}

// Matrix m of one reader: its rows encoded again under the rounder's H (toward the shifted targets where the
// covariance has a cross term), each row kept from whichever encoding has the lower loss.
void encode_matrix(Job & job, int64_t m, const HessianRounder & rounder, const std::vector<float> & shift,
                   TensorIo & in, TensorIo & out, const HessianOptions & o, int threads) {
    const ggml_type type = job.dst->type;
    const int64_t n = rounder.n(), rows = job.dst->ne[1];
    const size_t row_bytes = ggml_row_size(type, n), src_row_bytes = ggml_row_size(job.src->type, n);
    const size_t dst_offset = (size_t) (m * rows) * row_bytes;  // matrix m's rows within the tensor
    std::vector<uint8_t> q = out.read(job.name, dst_offset, row_bytes * rows);
    const std::vector<uint8_t> w_bytes = in.read(job.name, (size_t) (m * rows) * src_row_bytes, src_row_bytes * rows);
    std::vector<float> w((size_t) (rows * n)), diag((size_t) (rows * n));
    for (int64_t r = 0; r < rows; ++r) {
        to_float(job.src->type, w_bytes.data() + r * src_row_bytes, w.data() + r * n, n);
        to_float(type, q.data() + r * row_bytes, diag.data() + r * n, n);
    }
    if (!shift.empty()) {
        shift_targets(rounder, shift, w.data(), rows);  // the rows the output holds are judged by it too
    }
    std::vector<double> before((size_t) rows), after((size_t) rows);
    const auto t1 = std::chrono::steady_clock::now();
    rounder.losses(w.data(), diag.data(), rows, before.data(), threads);
    job.report.seconds_loss += seconds_since(t1);

    const BlockQuantizer bq = block_quantizer(type, o.refine_rescale);
    std::vector<uint8_t> code(row_bytes * rows);
    const auto t2 = std::chrono::steady_clock::now();
    rounder.round_rows(w.data(), rows, bq, code.data(), nullptr, after.data(), threads);
    job.report.seconds_round += seconds_since(t2);
    for (int64_t r = 0; r < rows; ++r) {
        const bool better = after[r] < before[r];  // per row: never worse than the encoding it replaces
        if (better) {
            std::copy_n(code.data() + r * row_bytes, row_bytes, q.data() + r * row_bytes);
        }
        job.report.rows_improved += better ? 1 : 0;
        job.report.loss_diagonal += before[r];
        job.report.loss_final += std::min(before[r], after[r]);
    }
    if (o.row_scales) {
        add_output_scales(rounder, w, diag, q, type, rows, before, after, threads, job.report);
    }
    out.write(job.name, dst_offset, q.data(), q.size());
}

}  // namespace

std::vector<HessianTensorReport> hessian_reencode(const std::string & model, const std::string & quantized,
                                                  const Imatrix & im, const HessianOptions & o,
                                                  const std::function<void(int, int)> & progress) {
    const TensorTable src(model), dst(quantized);
    const int threads = o.threads > 0 ? o.threads : (int) std::max(1u, std::thread::hardware_concurrency());
    set_linear_algebra_threads(threads);
    keep_freed_memory();
    TensorIo in(src, false), out(dst, true);
    int total = 0, done = 0;
    std::vector<std::pair<const Covariance *, std::vector<Job>>> work = plan_jobs(src, dst, im, o, total);
    std::vector<HessianTensorReport> reports;
    for (auto & [cov, jobs] : work) {
        const Covariance & c = *cov;
        int64_t total_counts = 0;
        for (int64_t x : c.counts) {
            total_counts += x;
        }
        // pooled over experts: one matrix collected, one H per expert made from it and the expert's imatrix
        const int64_t n_mats = jobs[0].dst->ne[2];
        const TensorStats & sums = im.tensors.at(c.readers[0]);
        const bool pooled = c.n_mat == 1 && n_mats > 1;
        if (total_counts == 0) {  // nothing seen: nothing to improve on
            done += (int) (jobs.size() * n_mats);
            progress(done, total);
            continue;
        }
        const bool needs_pooled = !pooled && c.n_mat > 1 && (o.prior_weight > 0 ||
                                                  std::find(c.counts.begin(), c.counts.end(), 0) != c.counts.end());
        const std::vector<double> pooled_h = needs_pooled ? pooled_hessian(c, total_counts) : std::vector<double>{};
        // matrix by matrix (an expert, a head): one factorisation serves every reader (q/k/v, gate/up)
        for (int64_t m = 0; m < n_mats; ++m) {
            const MatrixHessian h = pooled ? expert_from_pooled(c, sums, m, o.prior_weight)
                                           : matrix_hessian(c, m, o.prior_weight, pooled_h);
            const std::vector<float> shift =
                pooled ? std::vector<float>{} : cross_shift(c, m, o.prior_weight, o.sequential_step);
            std::unique_ptr<HessianRounder> rounder;
            int64_t rounder_block = 0;
            for (Job & job : jobs) {
                const int64_t block = ggml_blck_size(job.dst->type);
                if (!rounder || rounder_block != block) {
                    rounder.reset();  // free before the next one is made
                    const auto t0 = std::chrono::steady_clock::now();
                    rounder = std::make_unique<HessianRounder>(h.values, h.scale, c.n_cols, c.block, block, o.rounding);
                    job.report.seconds_factor += seconds_since(t0);
                    rounder_block = block;
                }
                job.report.pooled_matrices += h.pooled ? 1 : 0;
                encode_matrix(job, m, *rounder, shift, in, out, o, threads);
                progress(++done, total);
            }
        }
        for (Job & job : jobs) {
            reports.push_back(job.report);
        }
    }
    out.flush();
    return reports;
}

}  // namespace imx::engine
