// A self-contained page with the size–KLD frontier of imx quantize --target-size: the predicted KLD of the
// best allocation at every size the candidates reach (an inline SVG, log-scaled KLD), with llama-quantize's
// stock mixes and the chosen file marked, all predicted from the same measurements.
#pragma once

#include "core/math/type_allocation.h"

#include <cstdint>
#include <string>
#include <vector>

namespace imx {

struct FrontierMark {
    std::string label;
    uint64_t    bytes = 0;
    double      damage = 0;
};

std::string render_frontier_html(const std::string & model, const std::vector<FrontierPoint> & frontier,
                                 const std::vector<FrontierMark> & marks, double measured_kld);

}  // namespace imx
