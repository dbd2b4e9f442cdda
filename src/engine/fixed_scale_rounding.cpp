#include "fixed_scale_rounding.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace imx::engine {

namespace {

// ggml's block_q2_K: scales[16] (low nibble sc, high nibble m), qs[64] (2-bit values), d, dmin (F16)
constexpr size_t kQ2Scales = 0, kQ2Qs = 16, kQ2D = 80, kQ2Dmin = 82;

float half_at(const uint8_t * p) {
    ggml_fp16_t h;
    std::memcpy(&h, p, sizeof h);
    return ggml_fp16_to_fp32(h);
}

// Value e of the block: byte (e / 128)·32 + ((e % 32) / 16)·16 + e % 16 of qs, bits 2·((e % 128) / 32); its
// sub-block (scale) is e / 16 — dequantize_row_q2_K's order.
void reround_q2_k(const uint8_t * prev, const float * target, uint8_t * bytes, float * decoded) {
    std::memcpy(bytes, prev, 84);
    const float d = half_at(prev + kQ2D), dmin = half_at(prev + kQ2Dmin);
    uint8_t * qs = bytes + kQ2Qs;
    std::memset(qs, 0, 64);
    for (int e = 0; e < 256; ++e) {
        const uint8_t sc = prev[kQ2Scales + e / 16];
        const float dl = d * (float) (sc & 0xF), ml = dmin * (float) (sc >> 4);
        const int q = dl > 0 ? std::clamp((int) std::nearbyint((target[e] + ml) / dl), 0, 3) : 0;
        qs[(e / 128) * 32 + ((e % 32) / 16) * 16 + e % 16] |= (uint8_t) (q << (2 * ((e % 128) / 32)));
        decoded[e] = dl * (float) q - ml;
    }
}

}  // namespace

decltype(BlockQuantizer::reround) fixed_scale_reround(ggml_type type) {
    if (type == GGML_TYPE_Q2_K) {
        return reround_q2_k;
    }
    return {};
}

}  // namespace imx::engine
