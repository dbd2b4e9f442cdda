// imx runs OpenBLAS with kernels that this CPU supports, not the SSE3 fallback OpenBLAS takes for CPUs newer
// than its release (core/math/linear_algebra.h), and keeps a user's own OPENBLAS_CORETYPE.
#include "helpers.h"

#include <gtest/gtest.h>

using namespace imx::test;

namespace {

std::string kernels_named(const std::string & version) {
    const std::string key = "OpenBLAS kernels: ";
    const size_t at = version.find(key);
    if (at == std::string::npos) {
        return "";
    }
    const size_t end = version.find(')', at);
    return version.substr(at + key.size(), end - at - key.size());
}

}  // namespace

TEST(LinearAlgebra, VersionNamesKernelsThatUseTheCpu) {
    const RunResult r = run("env -u OPENBLAS_CORETYPE " + imx_bin() + " --version");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    const std::string k = kernels_named(r.output);
    ASSERT_FALSE(k.empty()) << r.output;
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        EXPECT_NE(k, "Prescott") << "an AVX2 CPU left on OpenBLAS's SSE3 kernels: " << r.output;
    }
#endif
}

TEST(LinearAlgebra, TheUsersCoreTypeIsKept) {
    const RunResult r = run("OPENBLAS_CORETYPE=Prescott " + imx_bin() + " --version");
    ASSERT_EQ(r.exit_code, 0) << tail(r.output);
    EXPECT_EQ(kernels_named(r.output), "Prescott") << r.output;
}
