#include "core/math/linear_algebra.h"

#include <algorithm>

extern "C" void openblas_set_num_threads(int);  // OpenBLAS's own; cblas.h may be another BLAS's header
extern "C" int  openblas_get_num_threads(void);

namespace imx {

void set_linear_algebra_threads(int threads) { openblas_set_num_threads(std::max(1, threads)); }

BlasOnCallingThread::BlasOnCallingThread() : saved_(openblas_get_num_threads()) { openblas_set_num_threads(1); }

BlasOnCallingThread::~BlasOnCallingThread() { openblas_set_num_threads(saved_); }

}  // namespace imx
