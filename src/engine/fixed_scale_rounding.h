// Refinement rounds of the Hessian encoder without the type's whole scale search: the values nearest a shifted
// target under the scales the block already has (core/hessian_rounding.h, BlockQuantizer::reround).
//
// A refinement round moves a block's target and asks for the encoding nearest it. ggml's quantizers answer by
// searching the block's scales again (Q2_K: make_qkx3_quants over every sub-block, ~half of the encoder's time
// at the 8B layer); with the scales kept, the nearest encoding is each value's nearest level, per value.
#pragma once

#include "core/hessian_rounding.h"

#include "ggml.h"

namespace imx::engine {

// The re-rounding of `type`'s blocks, or an empty function where it is not written (then rounds call the
// quantizer). Q2_K only: x = d·sc·q − dmin·m, q in 0..3, 16 sub-blocks of 16 with 4-bit sc and m.
decltype(BlockQuantizer::reround) fixed_scale_reround(ggml_type type);

}  // namespace imx::engine
