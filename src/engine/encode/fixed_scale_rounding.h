// Refinement rounds of the Hessian encoder without the type's whole scale search: the values nearest a shifted
// target under the scales the block already has (core/hessian_rounding.h, BlockQuantizer::reround).
//
// A refinement round moves a block's target and asks for the encoding nearest it. ggml's quantizers answer by
// searching the block's scales again (Q2_K: make_qkx3_quants over every sub-block, ~half of the encoder's time
// at the 8B layer); with the scales kept, the nearest encoding is each value's
// nearest level, per value.
#pragma once

#include "core/math/hessian_rounding.h"

#include "ggml.h"

namespace imx::engine {

// Where a type's block keeps its integer values, seen per value e: it decodes to step[e]·q − offset[e] with
// q in [q_min, q_max]; `scales` reads step/offset of every value from the block's scale bytes, `put` writes q
// (after `clear` zeroed the value bits).
struct FixedScaleLayout {
    int q_min = 0, q_max = 0;
    void (*scales)(const uint8_t * block, float * step, float * offset) = nullptr;
    void (*clear)(uint8_t * block) = nullptr;
    void (*put)(uint8_t * block, int e, int q) = nullptr;
};

// The layout of `type`'s blocks, or null where rounds keep calling the quantizer: written for Q2_K, Q4_K,
// Q5_K, Q6_K, Q4_0 and Q8_0. Not for q3_K: there, fixed scales cost KLD on both shared models (Q3_K_S, paired
// against rounds that search the scales: +0.0020 and +0.0025), and so did letting each sub-block scale move
// two steps either way on deepseek3-tiny (+0.0016; docs/hessian.md). Not for IQ4_XS either: each value's
// nearest of its 16 non-linear levels under the block's scales cost held-out KLD on deepseek3-tiny (IQ4_XS mix,
// +0.00057 [+0.00018, +0.00096]; qwen3moe-tiny +0.00050, within noise). The lattice types (IQ2, IQ3) pick whole
// codewords: engine/lattice_rounding.h.
const FixedScaleLayout * fixed_scale_layout(ggml_type type);

// The re-rounding of `type`'s blocks, or an empty function where there is no layout (then rounds call the
// quantizer). Decoded values come from ggml's own to_float.
decltype(BlockQuantizer::reround) fixed_scale_reround(ggml_type type);

}  // namespace imx::engine
