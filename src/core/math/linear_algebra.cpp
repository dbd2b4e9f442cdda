#include "core/math/linear_algebra.h"

#include <algorithm>
#include <strings.h>

extern "C" void openblas_set_num_threads(int);  // OpenBLAS's own; cblas.h may be another BLAS's header
extern "C" int  openblas_get_num_threads(void);
extern "C" char * openblas_get_corename(void);

namespace imx {

void set_linear_algebra_threads(int threads) { openblas_set_num_threads(std::max(1, threads)); }

BlasOnCallingThread::BlasOnCallingThread() : saved_(openblas_get_num_threads()) { openblas_set_num_threads(1); }

BlasOnCallingThread::~BlasOnCallingThread() { openblas_set_num_threads(saved_); }

std::string blas_kernels() {
    const char * name = openblas_get_corename();
    return name ? name : "";
}

std::string better_blas_kernels() {
#if defined(__x86_64__) && defined(__GNUC__)
    if (strcasecmp(blas_kernels().c_str(), "prescott") != 0) {  // OpenBLAS's choice for a CPU it does not know
        return "";
    }
    // what OpenBLAS's own SkylakeX and Haswell kernels are built for (the checks include the OS's support)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        return "SkylakeX";
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return "Haswell";
    }
#endif
    return "";
}

}  // namespace imx
