#include "engine/encode/lattice_rounding.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

namespace imx::engine {

namespace {

// A lattice type's block (ggml-common.h's block_iq2_xxs, block_iq2_xs, block_iq2_s, block_iq3_xxs, block_iq3_s and
// ggml-quants.c's dequantize_row_*), seen per group of 8 values g (0..31): its scale (what one grid unit decodes
// to), its grid points (one of 8 values, or two of 4: `part`), and its signs — a 7-bit index of an even-parity
// pattern (the XXS types and IQ2_XS) or the 8-bit mask itself (IQ2_S, IQ3_S). A value decodes to
// scale(g) · grid[index][j] · ±1.
struct Layout {
    int  dim = 0;        // values per grid point (8 or 4)
    int  grid_size = 0;  // 256, 512 or 1024
    bool parity = false;  // signs of even parity, stored as a 7-bit index
    float (*scale)(const uint8_t * block, int g) = nullptr;
    int (*index)(const uint8_t * block, int g, int part) = nullptr;
    void (*set_index)(uint8_t * block, int g, int part, int index) = nullptr;
    void (*set_signs)(uint8_t * block, int g, int code) = nullptr;  // code: sign index, or mask
};

float half_at(const uint8_t * p) {
    ggml_fp16_t h;
    std::memcpy(&h, p, sizeof h);
    return ggml_fp16_to_fp32(h);
}
uint32_t word32(const uint8_t * p) {
    uint32_t w;
    std::memcpy(&w, p, 4);
    return w;
}
// the 7-bit sign index of group g (of the four that share the uint32 at `word`), the XXS types'
void put_sign_index(uint8_t * word, int g, int code) {
    uint32_t w = word32(word);
    w = (w & ~(0x7Fu << (7 * (g % 4)))) | ((uint32_t) code << (7 * (g % 4)));
    std::memcpy(word, &w, 4);
}
// IQ2_XS's little-endian uint16 of group g: a 9-bit index, then a 7-bit sign index
int iq2xs_word(const uint8_t * b, int g) { return b[2 + 2 * g] | (b[3 + 2 * g] << 8); }
void put_iq2xs_word(uint8_t * b, int g, int v) {
    b[2 + 2 * g] = (uint8_t) v;
    b[3 + 2 * g] = (uint8_t) (v >> 8);
}
// ggml's 4-bit scales of the IQ2 types: d·(0.5 + s)/4
float iq2_scale(const uint8_t * b, int s) { return half_at(b) * (0.5f + (float) s) * 0.25f; }

// IQ2_XXS: d, then per 32 values 8 bytes at 2 + 8·sub: four index bytes (one per group) and a uint32 of four
// sign indices (7 bits each) and the scale (bits 28-31).
const Layout kIQ2XXS = {
    8, 256, true,
    [](const uint8_t * b, int g) { return iq2_scale(b, (int) (word32(b + 2 + 8 * (g / 4) + 4) >> 28)); },
    [](const uint8_t * b, int g, int) { return (int) b[2 + 8 * (g / 4) + g % 4]; },
    [](uint8_t * b, int g, int, int i) { b[2 + 8 * (g / 4) + g % 4] = (uint8_t) i; },
    [](uint8_t * b, int g, int code) { put_sign_index(b + 2 + 8 * (g / 4) + 4, g, code); },
};

// IQ3_XXS: d, qs[64] (two index bytes per group), then per 32 values a uint32 at 66 + 4·sub as IQ2_XXS's; the
// scale d·(0.5 + s)/2.
const Layout kIQ3XXS = {
    4, 256, true,
    [](const uint8_t * b, int g) { return half_at(b) * (0.5f + (float) (word32(b + 66 + 4 * (g / 4)) >> 28)) * 0.5f; },
    [](const uint8_t * b, int g, int part) { return (int) b[2 + 2 * g + part]; },
    [](uint8_t * b, int g, int part, int i) { b[2 + 2 * g + part] = (uint8_t) i; },
    [](uint8_t * b, int g, int code) { put_sign_index(b + 66 + 4 * (g / 4), g, code); },
};

// IQ2_XS: d, qs as 32 little-endian uint16 (a 9-bit index, then a 7-bit sign index), scales[8] at 66: per 32
// values two 4-bit scales, the low nibble for its first 16 values.
const Layout kIQ2XS = {
    8, 512, true,
    [](const uint8_t * b, int g) { return iq2_scale(b, (b[66 + g / 4] >> (4 * ((g % 4) / 2))) & 0xF); },
    [](const uint8_t * b, int g, int) { return iq2xs_word(b, g) & 511; },
    [](uint8_t * b, int g, int, int i) { put_iq2xs_word(b, g, (iq2xs_word(b, g) & ~511) | i); },
    [](uint8_t * b, int g, int code) { put_iq2xs_word(b, g, (iq2xs_word(b, g) & 511) | (code << 9)); },
};

// IQ2_S: d, qs[32] (an index's low 8 bits per group), signs[32] (the mask per group), qh[8] at 66 (per 32 values
// the four indices' high 2 bits, group g % 4 at bits 2·(g % 4)), scales[8] at 74 as IQ2_XS's.
const Layout kIQ2S = {
    8, 1024, false,
    [](const uint8_t * b, int g) { return iq2_scale(b, (b[74 + g / 4] >> (4 * ((g % 4) / 2))) & 0xF); },
    [](const uint8_t * b, int g, int) { return b[2 + g] | (((b[66 + g / 4] >> (2 * (g % 4))) & 3) << 8); },
    [](uint8_t * b, int g, int, int i) {
        b[2 + g] = (uint8_t) i;
        const int shift = 2 * (g % 4);
        b[66 + g / 4] = (uint8_t) ((b[66 + g / 4] & ~(3 << shift)) | ((i >> 8) << shift));
    },
    [](uint8_t * b, int g, int code) { b[34 + g] = (uint8_t) code; },
};

// IQ3_S: d, qs[64] (an index's low 8 bits per grid point: two per group), qh[8] at 66 (per 32 values the eight
// indices' ninth bits, point 2·(g % 4) + part at that bit), signs[32] at 74 (the mask per group), scales[4] at
// 106: per 32 values one 4-bit s, the low nibble for the first 32 of each 64; the scale d·(1 + 2s).
const Layout kIQ3S = {
    4, 512, false,
    [](const uint8_t * b, int g) {
        return half_at(b) * (float) (1 + 2 * ((b[106 + g / 8] >> (4 * ((g / 4) % 2))) & 0xF));
    },
    [](const uint8_t * b, int g, int part) {
        return b[2 + 2 * g + part] | (((b[66 + g / 4] >> (2 * (g % 4) + part)) & 1) << 8);
    },
    [](uint8_t * b, int g, int part, int i) {
        b[2 + 2 * g + part] = (uint8_t) i;
        const int bit = 2 * (g % 4) + part;
        b[66 + g / 4] = (uint8_t) ((b[66 + g / 4] & ~(1 << bit)) | ((i >> 8) << bit));
    },
    [](uint8_t * b, int g, int code) { b[74 + g] = (uint8_t) code; },
};

constexpr int kBlock = 256;
constexpr int kNeighbours = 24;  // grid points tried per part: the current one and its nearest

struct Lattice {
    Layout layout;
    std::vector<std::array<float, 8>> grid;  // in grid units (first `dim` values)
    std::array<uint8_t, 256> sign_code{};     // 8-bit mask of negative values → what set_signs writes
    std::vector<std::array<uint16_t, kNeighbours>> near;  // each point's nearest points, itself first
};

// The grid and the sign patterns as ggml decodes them: a zeroed block with d = 1 and one index or sign code of
// group 0 set (the IQ grids' values are all positive, so index 0 shows every sign).
Lattice read_lattice(ggml_type type, const Layout & layout) {
    const auto to_float = ggml_get_type_traits(type)->to_float;
    Lattice t;
    t.layout = layout;
    t.grid.resize((size_t) layout.grid_size);
    t.near.resize((size_t) layout.grid_size);
    std::vector<uint8_t> b(ggml_type_size(type), 0);
    const ggml_fp16_t one = ggml_fp32_to_fp16(1.0f);
    std::memcpy(b.data(), &one, 2);
    const float unit = layout.scale(b.data(), 0);
    float x[kBlock];
    for (int g = 0; g < layout.grid_size; ++g) {
        layout.set_index(b.data(), 0, 0, g);
        to_float(b.data(), x, kBlock);
        for (int j = 0; j < layout.dim; ++j) {
            t.grid[(size_t) g][j] = x[j] / unit;
        }
    }
    layout.set_index(b.data(), 0, 0, 0);
    for (int code = 0; code < (layout.parity ? 128 : 256); ++code) {
        layout.set_signs(b.data(), 0, code);
        to_float(b.data(), x, kBlock);
        uint8_t mask = 0;
        for (int j = 0; j < 8; ++j) {
            mask |= (uint8_t) ((x[j] < 0) << j);
        }
        t.sign_code[mask] = (uint8_t) code;
    }
    std::vector<float> dist((size_t) layout.grid_size);
    std::vector<int> order((size_t) layout.grid_size);
    for (int g = 0; g < layout.grid_size; ++g) {
        for (int h = 0; h < layout.grid_size; ++h) {
            float d = 0;
            for (int j = 0; j < layout.dim; ++j) {
                d += (t.grid[(size_t) g][j] - t.grid[(size_t) h][j]) * (t.grid[(size_t) g][j] - t.grid[(size_t) h][j]);
            }
            dist[(size_t) h] = d;
        }
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + kNeighbours, order.end(),
                          [&](int a, int c) { return dist[(size_t) a] < dist[(size_t) c] || (dist[(size_t) a] == dist[(size_t) c] && a < c); });
        for (int k = 0; k < kNeighbours; ++k) {
            t.near[(size_t) g][k] = (uint16_t) order[(size_t) k];
        }
    }
    return t;
}

// One part's candidates: the weighted cost of each neighbour of `current` with every value's sign following its
// target y, and the cheapest single flip of a sign ((a + v)² − (a − v)², weighted).
struct PartCosts {
    std::array<float, kNeighbours> cost, flip;
    std::array<int, kNeighbours> flip_at;
};

void part_costs(const Lattice & t, int current, const float * y, const float * w, PartCosts & pc) {
    const int dim = t.layout.dim;
    for (int k = 0; k < kNeighbours; ++k) {
        const auto & v = t.grid[t.near[(size_t) current][k]];
        float c = 0, f = std::numeric_limits<float>::infinity();
        int at = 0;
        for (int j = 0; j < dim; ++j) {
            const float a = std::fabs(y[j]);
            c += w[j] * (a - v[j]) * (a - v[j]);
            const float fj = 4 * w[j] * a * v[j];
            if (fj < f) {
                f = fj;
                at = j;
            }
        }
        pc.cost[k] = c;
        pc.flip[k] = f;
        pc.flip_at[k] = at;
    }
}

// The best codeword for one group of 8 targets y (in units of the scale) under weights w, among the neighbours of
// its current grid points: signs follow the targets; where that gives odd parity, the cheapest value is flipped
// (the flip may fall in either part, so with two parts the pair is chosen jointly).
void best_codeword(const Lattice & t, const int * current, const float * y, const float * w, int * index,
                   uint8_t & mask) {
    const int dim = t.layout.dim, parts = 8 / dim;
    uint8_t natural = 0;
    for (int j = 0; j < 8; ++j) {
        natural |= (uint8_t) ((y[j] < 0) << j);
    }
    const bool odd = t.layout.parity && __builtin_popcount(natural) % 2;  // free signs: never flipped
    PartCosts pc[2];
    for (int p = 0; p < parts; ++p) {
        part_costs(t, current[p], y + p * dim, w + p * dim, pc[p]);
    }
    int best_k[2] = {0, 0}, flip_part = -1;
    if (parts == 2 && odd) {  // the flip goes to whichever part flips cheaper: the pair is chosen jointly
        float best = std::numeric_limits<float>::infinity();
        for (int k0 = 0; k0 < kNeighbours; ++k0) {
            for (int k1 = 0; k1 < kNeighbours; ++k1) {
                const bool first = pc[0].flip[k0] <= pc[1].flip[k1];
                const float c = pc[0].cost[k0] + pc[1].cost[k1] + (first ? pc[0].flip[k0] : pc[1].flip[k1]);
                if (c < best) {
                    best = c;
                    best_k[0] = k0;
                    best_k[1] = k1;
                    flip_part = first ? 0 : 1;
                }
            }
        }
    } else {  // even parity (nothing flipped) or one part (it takes the flip): each part on its own
        for (int p = 0; p < parts; ++p) {
            float best = std::numeric_limits<float>::infinity();
            for (int k = 0; k < kNeighbours; ++k) {
                const float c = pc[p].cost[k] + (odd ? pc[p].flip[k] : 0.0f);
                if (c < best) {
                    best = c;
                    best_k[p] = k;
                }
            }
        }
        flip_part = odd ? 0 : -1;
    }
    mask = natural;
    for (int p = 0; p < parts; ++p) {
        index[p] = t.near[(size_t) current[p]][best_k[p]];
        if (flip_part == p) {
            mask ^= (uint8_t) (1 << (p * dim + pc[p].flip_at[best_k[p]]));
        }
    }
}

const Lattice * lattice_of(ggml_type type) {
    switch (type) {
        case GGML_TYPE_IQ2_XXS: { static const Lattice l = read_lattice(type, kIQ2XXS); return &l; }
        case GGML_TYPE_IQ2_XS: { static const Lattice l = read_lattice(type, kIQ2XS); return &l; }
        case GGML_TYPE_IQ2_S: { static const Lattice l = read_lattice(type, kIQ2S); return &l; }
        case GGML_TYPE_IQ3_XXS: { static const Lattice l = read_lattice(type, kIQ3XXS); return &l; }
        case GGML_TYPE_IQ3_S: { static const Lattice l = read_lattice(type, kIQ3S); return &l; }
        default: return nullptr;
    }
}

}  // namespace

decltype(BlockQuantizer::reround) lattice_reround(ggml_type type) {
    const Lattice * lattice = lattice_of(type);
    if (!lattice) {
        return {};
    }
    const auto to_float = ggml_get_type_traits(type)->to_float;
    const size_t block_bytes = ggml_type_size(type);
    return [lattice, to_float, block_bytes](const uint8_t * prev, const float * target, const float * importance,
                                            uint8_t * bytes, float * decoded) {
        const Layout & l = lattice->layout;
        std::memcpy(bytes, prev, block_bytes);
        for (int g = 0; g < kBlock / 8; ++g) {
            const float scale = l.scale(bytes, g);
            if (scale == 0) {
                continue;  // every codeword decodes to 0
            }
            const int e = 8 * g;
            float y[8], w[8];
            for (int j = 0; j < 8; ++j) {
                y[j] = target[e + j] / scale;
                w[j] = importance[e + j] * scale * scale;
            }
            int current[2] = {0, 0}, index[2] = {0, 0};
            uint8_t mask = 0;
            for (int p = 0; p < 8 / l.dim; ++p) {
                current[p] = l.index(bytes, g, p);
            }
            best_codeword(*lattice, current, y, w, index, mask);
            for (int p = 0; p < 8 / l.dim; ++p) {
                l.set_index(bytes, g, p, index[p]);
            }
            l.set_signs(bytes, g, lattice->sign_code[mask]);
        }
        to_float(bytes, decoded, kBlock);
    };
}

}  // namespace imx::engine
