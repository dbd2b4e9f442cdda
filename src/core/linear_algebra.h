// The BLAS/LAPACK behind imx's dense linear algebra (OpenBLAS + LAPACKE, from Debian): covariance products in
// collect (core/covariance) and the Hessian encoder's factorisations and batched feedback (core/hessian_rounding).
#pragma once

namespace imx {

// Threads that BLAS calls use from now on (at least 1).
void set_linear_algebra_threads(int threads);

}  // namespace imx
