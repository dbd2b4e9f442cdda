#include "core/math/norm_refit.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>

namespace imx {

NormRefit::NormRefit(int64_t n) : n_(n), a_((size_t) (n * n), 0.0), b_((size_t) n, 0.0) {}

void NormRefit::add(const float * w, const float * wq, int64_t rows, const double * h, const double * cross) {
    const int64_t n = n_;
    std::vector<float> qq((size_t) (n * n)), qw((size_t) (n * n));
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int) n, (int) n, (int) rows, 1.0f, wq, (int) n, wq, (int) n,
                0.0f, qq.data(), (int) n);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int) n, (int) n, (int) rows, 1.0f, wq, (int) n, w, (int) n,
                0.0f, qw.data(), (int) n);
    const double * c = cross ? cross : h;
    for (int64_t i = 0; i < n; ++i) {
        double bi = 0;
        for (int64_t j = 0; j < n; ++j) {
            a_[i * n + j] += (double) qq[i * n + j] * h[i * n + j];
            bi += (double) qw[i * n + j] * c[i * n + j];
        }
        b_[i] += bi;
    }
}

std::vector<double> NormRefit::solve(double damp, double * gain) const {
    const int64_t n = n_;
    std::vector<double> ones((size_t) n, 1.0);
    *gain = 0;
    double mean_diag = 0;
    for (int64_t i = 0; i < n; ++i) {
        mean_diag += a_[i * n + i];
    }
    mean_diag /= (double) n;
    if (!(mean_diag > 0)) {
        return ones;
    }
    // (A + λI) s = b + λ·1: the least-squares scales pulled toward 1
    std::vector<double> a = a_, s((size_t) n);
    const double lambda = damp * mean_diag;
    for (int64_t i = 0; i < n; ++i) {
        a[i * n + i] += lambda;
        s[i] = b_[i] + lambda;
    }
    if (LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', (lapack_int) n, 1, a.data(), (lapack_int) n, s.data(), 1) != 0) {
        return ones;
    }
    // f(s) = sᵀAs − 2bᵀs (+ a constant): the error's change from s = 1
    auto f = [&](const std::vector<double> & x) {
        double v = 0;
        for (int64_t i = 0; i < n; ++i) {
            double ax = 0;
            for (int64_t j = 0; j < n; ++j) {
                ax += a_[i * n + j] * x[j];
            }
            v += x[i] * ax - 2.0 * b_[i] * x[i];
        }
        return v;
    };
    const double g = f(ones) - f(s);
    if (!(g > 0)) {
        return ones;
    }
    *gain = g;
    return s;
}

}  // namespace imx
