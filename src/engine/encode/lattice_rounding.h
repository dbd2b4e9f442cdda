// Refinement rounds of the Hessian encoder for IQ2_XXS and IQ3_XXS without ggml's scale and codeword search: the
// codewords nearest a shifted target under the scales the block already has (core/hessian_rounding.h,
// BlockQuantizer::reround; the linear types' counterpart is engine/fixed_scale_rounding.h).
//
// Both keep, per 32 values, one 4-bit scale and four groups of 8 values with signs of even parity; a group is
// one point of a 256-entry grid of 8 values (IQ2_XXS) or two of a grid of 4 (IQ3_XXS). ggml's quantizer searches
// scales and codewords anew for every call — five of the six calls per block, 5.4× llama-quantize at the 8B
// layer's IQ2_XXS. A round only moves the target a little, so here each group takes the best of the grid
// points nearest its current ones, with the best signs, under the block's importances. The grids and the sign
// patterns are read back from ggml's own decoding of crafted blocks: nothing of ggml's tables is copied.
#pragma once

#include "core/math/hessian_rounding.h"

#include "ggml.h"

namespace imx::engine {

// The re-rounding of `type`'s blocks where it is a lattice type written here (IQ2_XXS, IQ3_XXS), else empty.
decltype(BlockQuantizer::reround) lattice_reround(ggml_type type);

}  // namespace imx::engine
