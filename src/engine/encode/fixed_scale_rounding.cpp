#include "engine/encode/fixed_scale_rounding.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace imx::engine {

namespace {

// The byte layouts below are those of ggml-common.h's block_* structs and ggml-quants.c's dequantize_row_*.

float half_at(const uint8_t * p) {
    ggml_fp16_t h;
    std::memcpy(&h, p, sizeof h);
    return ggml_fp16_to_fp32(h);
}

void set_bits(uint8_t * byte, int shift, int width, int v) {
    *byte = (uint8_t) (*byte | ((v & ((1 << width) - 1)) << shift));
}

// 6-bit scale and min j of the 12 packed bytes of q4_K/q5_K (ggml's get_scale_min_k4)
void scale_min_k4(int j, const uint8_t * q, float & sc, float & m) {
    if (j < 4) {
        sc = (float) (q[j] & 63);
        m = (float) (q[j + 4] & 63);
    } else {
        sc = (float) ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        m = (float) ((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// Q2_K: scales[16] (low nibble sc, high nibble m), qs[64], d, dmin; x = d·sc·q − dmin·m, q 0..3, 16 × 16.
// Value e sits in byte (e / 128)·32 + ((e % 32) / 16)·16 + e % 16 of qs, bits 2·((e % 128) / 32).
const FixedScaleLayout kQ2K = {
    0, 3,
    [](const uint8_t * b, float * step, float * offset) {
        const float d = half_at(b + 80), dmin = half_at(b + 82);
        for (int e = 0; e < 256; ++e) {
            step[e] = d * (float) (b[e / 16] & 0xF);
            offset[e] = dmin * (float) (b[e / 16] >> 4);
        }
    },
    [](uint8_t * b) { std::memset(b + 16, 0, 64); },
    [](uint8_t * b, int e, int q) { set_bits(b + 16 + (e / 128) * 32 + ((e % 32) / 16) * 16 + e % 16, 2 * ((e % 128) / 32), 2, q); },
};

// Q4_K / Q5_K: d, dmin, scales[12] (8 × 6-bit scale and min), [Q5_K: qh[32]], qs[128]; x = d·sc·q − dmin·m
// over 8 × 32; the low nibble of value e in qs byte (e / 64)·32 + e % 32 (high nibble for (e % 64) ≥ 32),
// Q5_K's fifth bit in qh byte e % 32 at bit e / 32.
void k4_scales(const uint8_t * b, float * step, float * offset) {
    const float d = half_at(b), dmin = half_at(b + 2);
    for (int j = 0; j < 8; ++j) {
        float sc = 0, m = 0;
        scale_min_k4(j, b + 4, sc, m);
        std::fill(step + 32 * j, step + 32 * (j + 1), d * sc);
        std::fill(offset + 32 * j, offset + 32 * (j + 1), dmin * m);
    }
}
void put_nibble(uint8_t * qs, int e, int q) { set_bits(qs + (e / 64) * 32 + e % 32, 4 * ((e % 64) / 32), 4, q); }

const FixedScaleLayout kQ4K = {
    0, 15, k4_scales,
    [](uint8_t * b) { std::memset(b + 16, 0, 128); },
    [](uint8_t * b, int e, int q) { put_nibble(b + 16, e, q); },
};

const FixedScaleLayout kQ5K = {
    0, 31, k4_scales,
    [](uint8_t * b) { std::memset(b + 16, 0, 160); },
    [](uint8_t * b, int e, int q) {
        put_nibble(b + 48, e, q);
        set_bits(b + 16 + e % 32, e / 32, 1, q >> 4);
    },
};

// Q6_K: ql[128], qh[64], scales[16] (int8), d; x = d·sc·q, q −32..31 stored as q + 32 over 16 × 16. With
// n = e / 128, k = (e % 128) / 32, l = e % 32: low nibble in ql byte n·64 + l + (k & 1)·32 (high nibble for
// k ≥ 2), upper two bits in qh byte n·32 + l at bits 2k.
const FixedScaleLayout kQ6K = {
    -32, 31,
    [](const uint8_t * b, float * step, float * offset) {
        const float d = half_at(b + 208);
        for (int e = 0; e < 256; ++e) {
            step[e] = d * (float) (int8_t) b[192 + e / 16];
            offset[e] = 0;
        }
    },
    [](uint8_t * b) { std::memset(b, 0, 192); },
    [](uint8_t * b, int e, int q) {
        const int v = q + 32, n = e / 128, k = (e % 128) / 32, l = e % 32;
        set_bits(b + n * 64 + l + (k & 1) * 32, 4 * (k >> 1), 4, v);
        set_bits(b + 128 + n * 32 + l, 2 * k, 2, v >> 4);
    },
};

// Q4_0 and Q8_0: one F16 scale d first, 32 values x = d·q
void one_scale_of_32(const uint8_t * b, float * step, float * offset) {
    std::fill(step, step + 32, half_at(b));
    std::fill(offset, offset + 32, 0.0f);
}

// Q4_0: d, qs[16]; x = d·q, q −8..7 stored as q + 8, value j in the low nibble of byte j % 16 (high for j ≥ 16).
const FixedScaleLayout kQ40 = {
    -8, 7,
    one_scale_of_32,
    [](uint8_t * b) { std::memset(b + 2, 0, 16); },
    [](uint8_t * b, int e, int q) { set_bits(b + 2 + e % 16, 4 * (e / 16), 4, q + 8); },
};

// Q8_0: d, qs[32] int8; x = d·q (ggml's own encoder stays in −127..127)
const FixedScaleLayout kQ80 = {
    -127, 127,
    one_scale_of_32,
    [](uint8_t * b) { std::memset(b + 2, 0, 32); },
    [](uint8_t * b, int e, int q) { b[2 + e] = (uint8_t) (int8_t) q; },
};

}  // namespace

const FixedScaleLayout * fixed_scale_layout(ggml_type type) {
    switch (type) {
        case GGML_TYPE_Q2_K: return &kQ2K;
        case GGML_TYPE_Q4_K: return &kQ4K;
        case GGML_TYPE_Q5_K: return &kQ5K;
        case GGML_TYPE_Q6_K: return &kQ6K;
        case GGML_TYPE_Q4_0: return &kQ40;
        case GGML_TYPE_Q8_0: return &kQ80;
        default: return nullptr;
    }
}

decltype(BlockQuantizer::reround) fixed_scale_reround(ggml_type type) {
    const FixedScaleLayout * layout = fixed_scale_layout(type);
    if (!layout) {
        return {};
    }
    const int64_t block = ggml_blck_size(type);
    const size_t bytes_per_block = ggml_type_size(type);
    const auto to_float = ggml_get_type_traits(type)->to_float;
    // per value, the nearest level is the best under any positive importances: they are not needed
    return [layout, block, bytes_per_block, to_float](const uint8_t * prev, const float * target, const float *,
                                                      uint8_t * bytes, float * decoded) {
        float step[256], offset[256];
        std::memcpy(bytes, prev, bytes_per_block);
        layout->scales(prev, step, offset);
        layout->clear(bytes);
        for (int e = 0; e < block; ++e) {
            // the levels step·q − offset are evenly spaced (step may be negative): the nearest is the rounded,
            // clamped quotient; a zero step makes every level the same
            const float q = step[e] != 0 ? std::nearbyint((target[e] + offset[e]) / step[e]) : 0.0f;
            layout->put(bytes, e, (int) std::clamp(q, (float) layout->q_min, (float) layout->q_max));
        }
        to_float(bytes, decoded, block);
    };
}

}  // namespace imx::engine
