#include "engine/encode/candidate_errors.h"

#include "engine/encode/matrix_hessian.h"
#include "engine/encode/model_writer.h"

#include "core/error.h"
#include "core/math/linear_algebra.h"

#include <algorithm>
#include <memory>

namespace imx::engine {

namespace {

// Rows r_i = ⌊i·rows/k⌋, i < k: evenly spaced over the matrix, all of them where k ≥ rows.
std::vector<int64_t> sampled_rows(int64_t rows, int64_t sample) {
    const int64_t k = sample <= 0 ? rows : std::min(rows, sample);
    std::vector<int64_t> r((size_t) k);
    for (int64_t i = 0; i < k; ++i) {
        r[(size_t) i] = i * rows / k;
    }
    return r;
}

const Covariance * covariance_of(const Imatrix * im, const std::string & name) {
    if (!im) {
        return nullptr;
    }
    for (const Covariance & c : im->covariances) {
        if (std::find(c.readers.begin(), c.readers.end(), name) != c.readers.end()) {
            return &c;
        }
    }
    return nullptr;
}

// One matrix's sampled rows at every type: the diagonal encoding, the Hessian one where `hessian` says so, and
// the errors of what the encoder keeps, added (scaled to all the matrix's rows) into `errors`.
class MatrixErrors {
public:
    MatrixErrors(const float * w, int64_t k, int64_t n, double scale, const float * imp, int threads)
        : w_(w), k_(k), n_(n), scale_(scale), imp_(imp), threads_(threads) {}

    // rounder: H's factors at T's block size (null: diagonal only); targets: the rows the Hessian loss is taken
    // against (the shifted targets, or w)
    void add(ggml_type type, const HessianRounder * rounder, const float * targets, bool refine_rescale,
             CandidateError & e) const {
        const size_t row_bytes = ggml_row_size(type, n_);
        const std::vector<uint8_t> diag = quantize_rows(type, w_, n_, k_, k_, imp_, threads_);
        std::vector<float> dec((size_t) (k_ * n_));
        for (int64_t r = 0; r < k_; ++r) {
            to_float(type, diag.data() + r * row_bytes, dec.data() + r * n_, n_);
        }
        if (rounder) {
            std::vector<double> before((size_t) k_), after((size_t) k_);
            rounder->losses(targets, dec.data(), k_, before.data(), threads_);
            std::vector<uint8_t> code(row_bytes * (size_t) k_);
            std::vector<float> hess((size_t) (k_ * n_));
            rounder->round_rows(targets, k_, block_quantizer(type, refine_rescale), code.data(), hess.data(),
                                after.data(), threads_);
            double loss = 0, diag_loss = 0;
            for (int64_t r = 0; r < k_; ++r) {
                if (after[r] < before[r]) {  // the row the encoder keeps
                    std::copy_n(hess.data() + r * n_, n_, dec.data() + r * n_);
                }
                loss += std::min(before[r], after[r]);
                diag_loss += before[r];
            }
            e.hessian = std::max(e.hessian, 0.0) + loss * scale_;
            e.hessian_of_diag = std::max(e.hessian_of_diag, 0.0) + diag_loss * scale_;
        }
        double sum = 0;
        for (int64_t i = 0; i < k_ * n_; ++i) {
            const double d = (double) w_[i] - dec[i];
            sum += (imp_ ? imp_[i % n_] : 1.0) * d * d;
        }
        e.diag += sum * scale_;
    }

private:
    const float * w_;
    int64_t       k_, n_;
    double        scale_;
    const float * imp_;
    int           threads_;
};

}  // namespace

void measure_candidate_errors(const TensorTable & model, const std::vector<CandidateTensor> & tensors,
                              const CandidateErrorOptions & o,
                              const std::function<void(const std::string &, const std::map<ggml_type, CandidateError> &)> & done) {
    set_linear_algebra_threads(o.threads);
    TensorIo in(model, false);
    const HessianOptions & ho = o.hessian_options;
    for (const CandidateTensor & t : tensors) {
        const ggml_tensor * st = model.find(t.name);
        if (!st) {
            throw Error(model.path() + ": no tensor " + t.name);
        }
        const int64_t n = st->ne[0], rows = st->ne[1], n_mats = ggml_nrows(st) / rows;
        const size_t src_row = ggml_row_size(st->type, n);
        const std::vector<float> * weights = nullptr;
        if (o.weights) {
            const auto w = o.weights->tensors.find(t.name);
            weights = w == o.weights->tensors.end() ? nullptr : &w->second;
        }
        // the types the Hessian encoder would re-encode the tensor at, and its H per matrix
        const Covariance * c = covariance_of(o.hessian, t.name);
        std::vector<char> hessian(t.types.size(), 0);
        std::unique_ptr<MatrixHessians> hessians;
        if (c) {
            for (size_t i = 0; i < t.types.size(); ++i) {
                hessian[i] = hessian_reencodes(*c, *o.hessian, t.name, st->ne, t.types[i], ho.per_head, ho.tensors);
            }
            if (std::find(hessian.begin(), hessian.end(), 1) != hessian.end()) {
                hessians = std::make_unique<MatrixHessians>(*c, o.hessian->tensors.at(c->readers[0]), n_mats,
                                                            ho.prior_weight);
                if (!hessians->seen()) {  // the encoder leaves such a tensor as llama-quantize wrote it
                    hessians.reset();
                    std::fill(hessian.begin(), hessian.end(), 0);
                }
            }
        }
        std::map<ggml_type, CandidateError> errors;
        for (ggml_type type : t.types) {
            errors[type] = CandidateError{};
        }
        const std::vector<int64_t> picked = sampled_rows(rows, o.sample_rows);
        const int64_t k = (int64_t) picked.size();
        std::vector<float> w((size_t) (k * n));
        for (int64_t m = 0; m < n_mats; ++m) {
            if ((size_t) k == (size_t) rows) {  // every row: one read
                const std::vector<uint8_t> b = in.read(t.name, (size_t) (m * rows) * src_row, src_row * rows);
                for (int64_t r = 0; r < k; ++r) {
                    to_float(st->type, b.data() + r * src_row, w.data() + r * n, n);
                }
            } else {
                for (int64_t r = 0; r < k; ++r) {
                    const std::vector<uint8_t> b = in.read(t.name, (size_t) (m * rows + picked[r]) * src_row, src_row);
                    to_float(st->type, b.data(), w.data() + r * n, n);
                }
            }
            const float * imp = weights ? weights->data() + (weights->size() == (size_t) n ? 0 : m * n) : nullptr;
            const MatrixErrors me(w.data(), k, n, (double) rows / (double) k, imp, o.threads);
            // the encoder's H for this matrix, factorised once per block size; the shifted targets once
            MatrixHessian h;
            TargetShift shift;
            std::vector<float> targets;
            std::map<int64_t, std::unique_ptr<HessianRounder>> rounders;
            if (hessians) {
                h = hessians->of(m);
                const bool pooled = c->n_mat == 1 && n_mats > 1;
                shift = pooled ? TargetShift{} : cross_shift(*c, m, ho.prior_weight, ho.sequential_step);
            }
            for (size_t i = 0; i < t.types.size(); ++i) {
                const HessianRounder * rounder = nullptr;
                if (hessian[i]) {
                    const int64_t block = ggml_blck_size(t.types[i]);
                    auto & r = rounders[block];
                    if (!r) {
                        r = std::make_unique<HessianRounder>(h.values, h.scale, c->n_cols, c->block, block, ho.rounding);
                    }
                    rounder = r.get();
                    if (targets.empty()) {
                        targets = w;
                        if (!shift.empty()) {
                            shift_targets(*rounder, shift, targets.data(), k, picked.data());
                        }
                    }
                }
                me.add(t.types[i], rounder, targets.empty() ? w.data() : targets.data(), ho.refine_rescale,
                       errors[t.types[i]]);
            }
        }
        done(t.name, errors);
    }
}

}  // namespace imx::engine
