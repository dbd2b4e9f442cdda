// A dot product with L independent partial sums, added pairwise at the end: the compiler can vectorise it without
// reassociating additions itself, and the result is the same on every run (fixed order).
#pragma once

#include <cstdint>

namespace imx {

template <int L, typename T> T dot(const T * a, const T * b, int64_t n) {
    static_assert(L > 0 && (L & (L - 1)) == 0, "lanes: a power of two");
    T acc[L] = {};
    int64_t i = 0;
    for (; i + L <= n; i += L) {
        for (int l = 0; l < L; ++l) {
            acc[l] += a[i + l] * b[i + l];
        }
    }
    for (; i < n; ++i) {
        acc[0] += a[i] * b[i];
    }
    for (int w = L / 2; w >= 1; w /= 2) {
        for (int l = 0; l < w; ++l) {
            acc[l] = acc[2 * l] + acc[2 * l + 1];
        }
    }
    return acc[0];
}

}  // namespace imx
