// A self-contained HTML report of an imatrix: inline SVG and CSS only — no scripts, fonts or network.
#pragma once

#include "core/imatrix.h"

#include <string>
#include <vector>

namespace imx {

struct ReportOptions {
    std::string              source;           // the file name shown in the report
    std::vector<std::string> profile_tensors;  // tensors whose sorted column importance is plotted
};

std::string render_html_report(const Imatrix & im, const ReportOptions & o);

// The default tensors to profile: the first and last block's attention input and FFN down projection.
std::vector<std::string> default_profile_tensors(const Imatrix & im);

}  // namespace imx
