// The BLAS/LAPACK behind imx's dense linear algebra (OpenBLAS + LAPACKE, from Debian): covariance products in
// collect (core/covariance) and the Hessian encoder's factorisations and batched feedback (core/hessian_rounding).
#pragma once

namespace imx {

// Threads that BLAS calls use from now on (at least 1).
void set_linear_algebra_threads(int threads);

// While it lives, BLAS runs each call on the calling thread: for work that the caller splits over its own
// threads. (Between threaded calls, OpenBLAS's idle workers spin in sched_yield for ~0.1 s: with ggml's
// quantizers running between the products, that spinning took a third of the two cores at the 8B layer.)
class BlasOnCallingThread {
public:
    BlasOnCallingThread();
    ~BlasOnCallingThread();
    BlasOnCallingThread(const BlasOnCallingThread &) = delete;
    BlasOnCallingThread & operator=(const BlasOnCallingThread &) = delete;

private:
    int saved_;
};

}  // namespace imx
