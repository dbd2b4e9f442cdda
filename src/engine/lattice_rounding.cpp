#include "lattice_rounding.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

namespace imx::engine {

namespace {

// IQ2_XXS's block (ggml-common.h's block_iq2_xxs, from the format): F16 d, then per 32 values 8 bytes — four grid
// indices, then a little-endian uint32 of four 7-bit sign indices (bits 0-27) and the scale s (bits 28-31).
// A value decodes to d·(0.5 + s)/4 · grid[index][j] · ±1.
constexpr int kBlock = 256, kBlockBytes = 66, kGroups = kBlock / 8;
constexpr int kNeighbours = 24;  // grid points tried per group: the current one and its nearest

struct Iq2xxsTables {
    std::array<std::array<float, 8>, 256> grid{};  // in units of d·(0.5 + s)/4
    std::array<uint8_t, 256> sign_index{};          // 8-bit mask of negative values (even parity) → 7-bit index
    std::array<std::array<uint8_t, kNeighbours>, 256> near{};  // each point's nearest points, itself first
};

uint32_t sign_word(const uint8_t * sub) {
    uint32_t v;
    std::memcpy(&v, sub + 4, 4);
    return v;
}

Iq2xxsTables read_tables() {
    const auto to_float = ggml_get_type_traits(GGML_TYPE_IQ2_XXS)->to_float;
    Iq2xxsTables t;
    uint8_t b[kBlockBytes] = {};
    const ggml_fp16_t one = ggml_fp32_to_fp16(1.0f);
    std::memcpy(b, &one, 2);  // d = 1, s = 0: a grid value v decodes to v/8
    float x[kBlock];
    for (int g = 0; g < 256; ++g) {
        b[2] = (uint8_t) g;
        to_float(b, x, kBlock);
        for (int j = 0; j < 8; ++j) {
            t.grid[g][j] = x[j] * 8;
        }
    }
    b[2] = 0;
    for (uint32_t s = 0; s < 128; ++s) {
        std::memcpy(b + 2 + 4, &s, 4);
        to_float(b, x, kBlock);
        uint8_t mask = 0;
        for (int j = 0; j < 8; ++j) {
            mask |= (uint8_t) ((x[j] < 0) << j);
        }
        t.sign_index[mask] = (uint8_t) s;
    }
    for (int g = 0; g < 256; ++g) {
        std::array<float, 256> dist;
        for (int h = 0; h < 256; ++h) {
            float d = 0;
            for (int j = 0; j < 8; ++j) {
                d += (t.grid[g][j] - t.grid[h][j]) * (t.grid[g][j] - t.grid[h][j]);
            }
            dist[h] = d;
        }
        std::array<int, 256> order;
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + kNeighbours, order.end(),
                          [&](int a, int c) { return dist[a] < dist[c] || (dist[a] == dist[c] && a < c); });
        for (int k = 0; k < kNeighbours; ++k) {
            t.near[g][k] = (uint8_t) order[k];
        }
    }
    return t;
}

// The best (grid point, signs) for one group of 8 targets y (in units of the scale) under weights w, among the
// neighbours of `current`: each value's sign follows its target; where that gives odd parity, the value
// cheapest to flip is flipped.
void best_codeword(const Iq2xxsTables & t, int current, const float * y, const float * w, uint8_t & index,
                   uint8_t & mask) {
    float best = std::numeric_limits<float>::infinity();
    uint8_t natural = 0;
    for (int j = 0; j < 8; ++j) {
        natural |= (uint8_t) ((y[j] < 0) << j);
    }
    for (int k = 0; k < kNeighbours; ++k) {
        const int g = t.near[current][k];
        float cost = 0, flip = std::numeric_limits<float>::infinity();
        int flip_at = 0;
        for (int j = 0; j < 8; ++j) {
            const float a = std::fabs(y[j]), v = t.grid[g][j];
            cost += w[j] * (a - v) * (a - v);
            const float f = 4 * w[j] * a * v;  // (a + v)² − (a − v)², weighted
            if (f < flip) {
                flip = f;
                flip_at = j;
            }
        }
        uint8_t m = natural;
        if (__builtin_popcount(m) % 2) {
            cost += flip;
            m ^= (uint8_t) (1 << flip_at);
        }
        if (cost < best) {
            best = cost;
            index = (uint8_t) g;
            mask = m;
        }
    }
}

}  // namespace

decltype(BlockQuantizer::reround) lattice_reround(ggml_type type) {
    if (type != GGML_TYPE_IQ2_XXS) {
        return {};
    }
    static const Iq2xxsTables tables = read_tables();
    const auto to_float = ggml_get_type_traits(type)->to_float;
    return [to_float](const uint8_t * prev, const float * target, const float * importance, uint8_t * bytes,
                      float * decoded) {
        std::memcpy(bytes, prev, kBlockBytes);
        ggml_fp16_t dh;
        std::memcpy(&dh, prev, 2);
        const float d = ggml_fp16_to_fp32(dh);
        for (int sub = 0; sub < kBlock / 32; ++sub) {
            uint8_t * q = bytes + 2 + 8 * sub;
            uint32_t signs = sign_word(q);
            const float scale = d * (0.5f + (float) (signs >> 28)) * 0.25f;
            if (scale == 0) {
                continue;  // every codeword decodes to 0
            }
            for (int k = 0; k < 4; ++k) {
                const int e = 32 * sub + 8 * k;
                float y[8], w[8];
                for (int j = 0; j < 8; ++j) {
                    y[j] = target[e + j] / scale;
                    w[j] = importance[e + j] * scale * scale;
                }
                uint8_t index = q[k], mask = 0;
                best_codeword(tables, q[k], y, w, index, mask);
                q[k] = index;
                signs = (signs & ~(0x7Fu << (7 * k))) | ((uint32_t) tables.sign_index[mask] << (7 * k));
            }
            std::memcpy(q + 4, &signs, 4);
        }
        to_float(bytes, decoded, kBlock);
    };
}

}  // namespace imx::engine
