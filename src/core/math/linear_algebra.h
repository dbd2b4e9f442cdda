// The BLAS/LAPACK behind imx's dense linear algebra (OpenBLAS + LAPACKE, from Debian): covariance products in
// collect (core/covariance) and the Hessian encoder's factorisations and batched feedback (core/hessian_rounding).
#pragma once

#include <string>

namespace imx {

// The kernels OpenBLAS chose when it was loaded (its core name: "SkylakeX", "Haswell", "Prescott", ...).
std::string blas_kernels();

// Better kernels than those for this CPU, by name for OPENBLAS_CORETYPE, or "" where OpenBLAS chose well.
// OpenBLAS picks its kernels by CPU model number, and one newer than its release knows gets the SSE3 kernels
// of 2004's Prescott: Debian 12's 0.3.21 on Emerald Rapids (model 207) ran every covariance product and the
// Hessian encoder's BLAS calls at half the speed the CPU's AVX-512 gives (docs/scale.md). The name is chosen
// from what the CPU and the OS support (AVX-512: SkylakeX; AVX2 with FMA: Haswell). OpenBLAS reads it once,
// when the library loads, so only a new process can take it (cli/main.cpp).
std::string better_blas_kernels();

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
