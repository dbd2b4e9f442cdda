// imx quantize --method hessian --sequential: the Hessian encoder, then layer by layer again with the inputs the
// quantized model really gives each layer (GPTQ's sequential mode, with the unquantized model's outputs kept as
// the target, as GPTAQ does).
//
// For layer l = 0, 1, …: the calibration text runs through the quantized file as it stands (layers < l already
// final, layer l and later as the first Hessian pass left them) and, token for token, through the unquantized
// model (collect --target-model, only layer l's weights: each pass ends after that layer). With the covariance
// X̃ᵀX̃ of those inputs and the cross term X̃ᵀX against the unquantized model's, layer l's weights are encoded again
// toward w + γ·H⁻¹(X̃ᵀX − X̃ᵀX̃)w (engine/hessian_encoder.h, sequential_step): later layers make up for part of the
// error of the layers before them. Cost: one pass of both models through layers 0..l per layer — about L/2 full
// passes over the text for L layers on top of the quantization.
#pragma once

#include "engine/encode/hessian_encoder.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace imx::engine {

struct SequentialOptions {
    std::string text_file;
    uint32_t    chunk_size = 512;
    int         max_chunks = -1;       // -1: all of the text
    uint64_t    covariance_budget = 0;  // bytes for one layer's covariances and cross terms
};

struct SequentialLayerReport {
    int                              layer = 0;
    double                           seconds_collect = 0;
    std::vector<HessianTensorReport> tensors;  // losses measured against the shifted targets
};

// Re-encodes `quantized` (written from `model`, already through hessian_reencode) layer by layer in place.
// `progress(layer, layers)` after each. Throws imx::Error naming the file or chunk.
std::vector<SequentialLayerReport> sequential_reencode(const std::string & model, const std::string & quantized,
                                                       const HessianOptions & o, const SequentialOptions & s,
                                                       const std::function<void(int, int)> & progress);

}  // namespace imx::engine
