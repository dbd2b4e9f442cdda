// FNV-1a, 64-bit: a fast, stable fingerprint for cache keys and duplicate detection (not for security).
#pragma once

#include <cstddef>
#include <cstdint>

namespace imx {

inline constexpr uint64_t kFnv1aOffset = 1469598103934665603ull;

inline uint64_t fnv1a(uint64_t h, const void * data, size_t n) {
    const auto * p = static_cast<const uint8_t *>(data);
    for (size_t i = 0; i < n; ++i) {
        h = (h ^ p[i]) * 1099511628211ull;
    }
    return h;
}

}  // namespace imx
