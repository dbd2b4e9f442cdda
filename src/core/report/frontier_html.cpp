#include "core/report/frontier_html.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace imx {

namespace {

std::string escaped(const std::string & s) {
    std::string r;
    for (char c : s) {
        r += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : c == '\'' ? "&#39;" : std::string(1, c);
    }
    return r;
}

}  // namespace

std::string render_frontier_html(const std::string & model, const std::vector<FrontierPoint> & frontier,
                                 const std::vector<FrontierMark> & marks, double measured_kld) {
    const double w = 720, h = 420, left = 70, top = 20, right = 20, bottom = 50;
    double x0 = 1e300, x1 = 0, y0 = 1e300, y1 = 0;
    auto extend = [&](double bytes, double kld) {
        if (kld <= 0) {
            return;
        }
        x0 = std::min(x0, bytes), x1 = std::max(x1, bytes);
        y0 = std::min(y0, kld), y1 = std::max(y1, kld);
    };
    for (const auto & p : frontier) {
        extend((double) p.bytes, p.damage);
    }
    for (const auto & m : marks) {
        extend((double) m.bytes, m.damage);
    }
    extend(x0, measured_kld);
    if (x1 <= x0) {
        x1 = x0 + 1;
    }
    if (y1 <= y0) {
        y1 = y0 * 10;
    }
    const double ly0 = std::floor(std::log10(y0)), ly1 = std::ceil(std::log10(y1));
    auto X = [&](double bytes) { return left + (bytes - x0) / (x1 - x0) * (w - left - right); };
    auto Y = [&](double kld) {
        return top + (ly1 - std::log10(std::max(kld, 1e-300))) / (ly1 - ly0) * (h - top - bottom);
    };
    std::ostringstream s;
    s << "<!doctype html><html><head><meta charset='utf-8'><title>imx: size-KLD frontier of " << escaped(model)
      << "</title><style>body{font:14px sans-serif;margin:2em}text{font:12px sans-serif}.note{color:#555}"
      << "</style></head><body><h1>Size–KLD frontier</h1><p>" << escaped(model)
      << ": predicted mean KL-divergence of the best type allocation at each file size (line), llama-quantize's "
         "mixes predicted from the same measurements (dots), the chosen file (square).</p>";
    s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h << "' role='img'>";
    s << "<rect x='" << left << "' y='" << top << "' width='" << w - left - right << "' height='"
      << h - top - bottom << "' fill='none' stroke='#999'/>";
    for (double e = ly0; e <= ly1; e += 1) {
        const double y = Y(std::pow(10.0, e));
        s << "<line x1='" << left << "' x2='" << w - right << "' y1='" << y << "' y2='" << y
          << "' stroke='#eee'/><text x='" << left - 6 << "' y='" << y + 4 << "' text-anchor='end'>1e" << (int) e
          << "</text>";
    }
    for (int i = 0; i <= 4; ++i) {
        const double bytes = x0 + (x1 - x0) * i / 4;
        std::ostringstream label;
        label.precision(3);
        label << bytes / 1048576.0;
        s << "<text x='" << X(bytes) << "' y='" << h - bottom + 18 << "' text-anchor='middle'>" << label.str()
          << "</text>";
    }
    s << "<text x='" << (left + w - right) / 2 << "' y='" << h - 8 << "' text-anchor='middle'>file size, MiB</text>";
    s << "<text x='14' y='" << (top + h - bottom) / 2 << "' transform='rotate(-90 14 " << (top + h - bottom) / 2
      << ")' text-anchor='middle'>predicted mean KLD</text>";
    s << "<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='";
    for (const auto & p : frontier) {
        if (p.damage > 0) {
            s << X((double) p.bytes) << "," << Y(p.damage) << " ";
        }
    }
    s << "'/>";
    for (size_t i = 0; i < marks.size(); ++i) {
        const auto & m = marks[i];
        if (m.damage <= 0) {
            continue;
        }
        const double x = X((double) m.bytes), y = Y(m.damage);
        const bool chosen = i + 1 == marks.size();
        if (chosen) {
            s << "<rect x='" << x - 5 << "' y='" << y - 5 << "' width='10' height='10' fill='#d62728'/>";
        } else {
            s << "<circle cx='" << x << "' cy='" << y << "' r='4' fill='#ff7f0e'/>";
        }
        s << "<text x='" << x + 7 << "' y='" << y - 6 << "'>" << escaped(m.label) << "</text>";
    }
    s << "</svg><p class='note'>Predicted KLD: per tensor, the KLD measured with that tensor alone at a probe "
         "type, scaled by its output error at each type; summed over tensors. Measured KLD of the chosen file on "
         "the same calibration chunks: "
      << measured_kld << ".</p></body></html>\n";
    return s.str();
}

}  // namespace imx
