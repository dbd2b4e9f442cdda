// Refinement rounds of the Hessian encoder for the IQ lattice types without ggml's scale and codeword search: the
// codewords nearest a shifted target under the scales the block already has (core/hessian_rounding.h,
// BlockQuantizer::reround; the linear types' counterpart is engine/fixed_scale_rounding.h).
//
// IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S keep 4-bit scales (per 16 or 32 values) and groups of 8 values,
// each one point of a grid of 8 values (IQ2_*: 256, 512 or 1024 points) or two of a grid of 4 (IQ3_*: 256 or
// 512), with signs of even parity (XXS, IQ2_XS) or free (IQ2_S, IQ3_S). ggml's quantizer searches scales and
// codewords anew for every call — five of the six calls per block, 5.4× llama-quantize at the 8B layer's
// IQ2_XXS. A round only moves the target a little, so here each group takes the best of the grid points
// nearest its current ones, with the best signs, under the block's importances. The grids and the sign
// patterns are read back from ggml's own decoding of crafted blocks: nothing of ggml's tables is copied.
#pragma once

#include "core/math/hessian_rounding.h"

#include "ggml.h"

namespace imx::engine {

// The re-rounding of `type`'s blocks where it is a lattice type written here (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
// IQ3_S), else empty (IQ1_S, IQ1_M: rounds call the quantizer).
decltype(BlockQuantizer::reround) lattice_reround(ggml_type type);

}  // namespace imx::engine
