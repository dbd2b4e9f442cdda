#include "engine/encode/hessian_encoder.h"

#include "engine/encode/matrix_hessian.h"

#include "core/error.h"
#include "core/math/linear_algebra.h"
#include "engine/model/tensor_file.h"

#include "ggml.h"
#include "gguf.h"


#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <limits>
#include <malloc.h>
#include <memory>
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
    for (const Covariance & c : im.covariances) {
        std::vector<Job> jobs;
        for (const std::string & r : c.readers) {
            const ggml_tensor * t = dst.find(r);
            if (!t || !hessian_reencodes(c, im, r, t->ne, t->type, o.per_head, o.tensors)) {
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
            j.report.compared = !o.fresh;
            jobs.push_back(std::move(j));
        }
        if (!jobs.empty()) {
            total += (int) (jobs.size() * jobs[0].dst->ne[2]);
            work.emplace_back(&c, std::move(jobs));
        }
    }
    return work;
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
void encode_matrix(Job & job, int64_t m, const HessianRounder & rounder, const TargetShift & shift,
                   TensorIo & in, TensorIo & out, const HessianOptions & o, int threads) {
    const ggml_type type = job.dst->type;
    const int64_t n = rounder.n(), rows = job.dst->ne[1];
    const size_t row_bytes = ggml_row_size(type, n), src_row_bytes = ggml_row_size(job.src->type, n);
    const size_t dst_offset = (size_t) (m * rows) * row_bytes;  // matrix m's rows within the tensor
    std::vector<uint8_t> q = o.fresh ? std::vector<uint8_t>(row_bytes * rows) : out.read(job.name, dst_offset, row_bytes * rows);
    const std::vector<uint8_t> w_bytes = in.read(job.name, (size_t) (m * rows) * src_row_bytes, src_row_bytes * rows);
    std::vector<float> w((size_t) (rows * n)), diag(o.fresh ? 0 : (size_t) (rows * n));
    for (int64_t r = 0; r < rows; ++r) {
        to_float(job.src->type, w_bytes.data() + r * src_row_bytes, w.data() + r * n, n);
        if (!o.fresh) {
            to_float(type, q.data() + r * row_bytes, diag.data() + r * n, n);
        }
    }
    if (!shift.empty()) {
        shift_targets(rounder, shift, w.data(), rows);  // the rows the output holds are judged by it too
    }
    // with nothing to compare against, every row takes the Hessian encoding
    std::vector<double> before((size_t) rows, std::numeric_limits<double>::infinity()), after((size_t) rows);
    const auto t1 = std::chrono::steady_clock::now();
    if (!o.fresh) {
        rounder.losses(w.data(), diag.data(), rows, before.data(), threads);
    }
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
        job.report.loss_diagonal += o.fresh ? 0.0 : before[r];
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
    if (o.fresh && o.row_scales) {
        throw Error("the output scales compare against the diagonal encoding, which a fresh encoding does not make");
    }
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
        // pooled over experts: one matrix collected, one H per expert made from it and the expert's imatrix
        const int64_t n_mats = jobs[0].dst->ne[2];
        const MatrixHessians hessians(c, im.tensors.at(c.readers[0]), n_mats, o.prior_weight);
        if (!hessians.seen()) {  // nothing seen: nothing to improve on
            done += (int) (jobs.size() * n_mats);
            progress(done, total);
            continue;
        }
        const bool pooled = c.n_mat == 1 && n_mats > 1;
        int64_t reader_rows = 0;  // of one matrix, over the readers
        for (const Job & job : jobs) {
            reader_rows += job.dst->ne[1];
        }
        // matrix by matrix (an expert, a head): one factorisation serves every reader (q/k/v, gate/up)
        for (int64_t m = 0; m < n_mats; ++m) {
            const MatrixHessian h = hessians.of(m);
            TargetShift shift = pooled ? TargetShift{} : cross_shift(c, m, o.prior_weight, o.sequential_step);
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
                    if (reader_rows > c.n_cols) {  // S from the first rounder: every one holds the same H
                        premultiply_shift(*rounder, shift);
                    }
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
