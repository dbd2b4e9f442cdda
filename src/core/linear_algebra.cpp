#include "linear_algebra.h"

#include <algorithm>

extern "C" void openblas_set_num_threads(int);  // OpenBLAS's own; cblas.h may be another BLAS's header

namespace imx {

void set_linear_algebra_threads(int threads) { openblas_set_num_threads(std::max(1, threads)); }

}  // namespace imx
