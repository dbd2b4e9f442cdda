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

// The two types' blocks (ggml-common.h's block_iq2_xxs / block_iq3_xxs, from the formats): F16 d, then per 32
// values four groups of 8 and a little-endian uint32 `word` of four 7-bit sign indices (bits 0-27, one per group;
// the patterns have even parity) and the scale s (bits 28-31). A group is one grid point of 8 values (IQ2_XXS)
// or two of 4 (IQ3_XXS), each an index byte into a 256-entry grid; a value decodes to
// d·(0.5 + s)·unit · grid[index][j] · ±1.
struct Layout {
    int    block_bytes = 0;
    int    dim = 0;    // values per grid point (8 or 4)
    float  unit = 0;   // 1/4 or 1/2
    size_t index_at(int sub, int group, int part) const { return dim == 8 ? 2 + 8 * sub + group : 2 + 8 * sub + 2 * group + part; }
    size_t word_at(int sub) const { return dim == 8 ? 2 + 8 * sub + 4 : 2 + 64 + 4 * sub; }
};

constexpr int kBlock = 256;
constexpr int kNeighbours = 24;  // grid points tried per part: the current one and its nearest

struct Lattice {
    Layout layout;
    std::array<std::array<float, 8>, 256> grid{};  // in units of d·(0.5 + s)·unit (first `dim` values)
    std::array<uint8_t, 256> sign_index{};          // 8-bit mask of negative values (even parity) → 7-bit index
    std::array<std::array<uint8_t, kNeighbours>, 256> near{};  // each point's nearest points, itself first
};

// The grid and the sign patterns as ggml decodes them: blocks with d = 1, s = 0 and one index or sign index set.
Lattice read_lattice(ggml_type type, const Layout & layout) {
    const auto to_float = ggml_get_type_traits(type)->to_float;
    Lattice t;
    t.layout = layout;
    std::vector<uint8_t> b((size_t) layout.block_bytes, 0);
    const ggml_fp16_t one = ggml_fp32_to_fp16(1.0f);
    std::memcpy(b.data(), &one, 2);
    const float unit = 0.5f * layout.unit;
    float x[kBlock];
    for (int g = 0; g < 256; ++g) {
        b[layout.index_at(0, 0, 0)] = (uint8_t) g;
        to_float(b.data(), x, kBlock);
        for (int j = 0; j < layout.dim; ++j) {
            t.grid[g][j] = x[j] / unit;
        }
    }
    b[layout.index_at(0, 0, 0)] = 0;
    for (uint32_t s = 0; s < 128; ++s) {
        std::memcpy(b.data() + layout.word_at(0), &s, 4);
        to_float(b.data(), x, kBlock);
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
            for (int j = 0; j < layout.dim; ++j) {
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

// One part's candidates: the weighted cost of each neighbour of `current` with every value's sign following its
// target y, and the cheapest single flip of a sign ((a + v)² − (a − v)², weighted).
struct PartCosts {
    std::array<float, kNeighbours> cost, flip;
    std::array<int, kNeighbours> flip_at;
};

void part_costs(const Lattice & t, int current, const float * y, const float * w, PartCosts & pc) {
    const int dim = t.layout.dim;
    for (int k = 0; k < kNeighbours; ++k) {
        const auto & v = t.grid[t.near[current][k]];
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
void best_codeword(const Lattice & t, const uint8_t * current, const float * y, const float * w, uint8_t * index,
                   uint8_t & mask) {
    const int dim = t.layout.dim, parts = 8 / dim;
    uint8_t natural = 0;
    for (int j = 0; j < 8; ++j) {
        natural |= (uint8_t) ((y[j] < 0) << j);
    }
    const bool odd = __builtin_popcount(natural) % 2;
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
        index[p] = t.near[current[p]][best_k[p]];
        if (flip_part == p) {
            mask ^= (uint8_t) (1 << (p * dim + pc[p].flip_at[best_k[p]]));
        }
    }
}

const Lattice * lattice_of(ggml_type type) {
    if (type == GGML_TYPE_IQ2_XXS) {
        static const Lattice l = read_lattice(type, {66, 8, 0.25f});
        return &l;
    }
    if (type == GGML_TYPE_IQ3_XXS) {
        static const Lattice l = read_lattice(type, {98, 4, 0.5f});
        return &l;
    }
    return nullptr;
}

}  // namespace

decltype(BlockQuantizer::reround) lattice_reround(ggml_type type) {
    const Lattice * lattice = lattice_of(type);
    if (!lattice) {
        return {};
    }
    const auto to_float = ggml_get_type_traits(type)->to_float;
    return [lattice, to_float](const uint8_t * prev, const float * target, const float * importance, uint8_t * bytes,
                               float * decoded) {
        const Layout & l = lattice->layout;
        std::memcpy(bytes, prev, (size_t) l.block_bytes);
        ggml_fp16_t dh;
        std::memcpy(&dh, prev, 2);
        const float d = ggml_fp16_to_fp32(dh);
        for (int sub = 0; sub < kBlock / 32; ++sub) {
            uint32_t word;
            std::memcpy(&word, bytes + l.word_at(sub), 4);
            const float scale = d * (0.5f + (float) (word >> 28)) * l.unit;
            if (scale == 0) {
                continue;  // every codeword decodes to 0
            }
            for (int group = 0; group < 4; ++group) {
                const int e = 32 * sub + 8 * group;
                float y[8], w[8];
                for (int j = 0; j < 8; ++j) {
                    y[j] = target[e + j] / scale;
                    w[j] = importance[e + j] * scale * scale;
                }
                uint8_t current[2], index[2], mask = 0;
                for (int p = 0; p < 8 / l.dim; ++p) {
                    current[p] = bytes[l.index_at(sub, group, p)];
                }
                best_codeword(*lattice, current, y, w, index, mask);
                for (int p = 0; p < 8 / l.dim; ++p) {
                    bytes[l.index_at(sub, group, p)] = index[p];
                }
                word = (word & ~(0x7Fu << (7 * group))) | ((uint32_t) lattice->sign_index[mask] << (7 * group));
            }
            std::memcpy(bytes + l.word_at(sub), &word, 4);
        }
        to_float(bytes, decoded, kBlock);
    };
}

}  // namespace imx::engine
