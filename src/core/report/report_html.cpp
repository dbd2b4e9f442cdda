#include "core/report/report_html.h"

#include "core/report/coverage.h"
#include "core/report/statistics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

namespace imx {

namespace {

std::string esc(const std::string & s) {
    std::string o;
    for (char c : s) {
        switch (c) {
            case '<': o += "&lt;"; break;
            case '>': o += "&gt;"; break;
            case '&': o += "&amp;"; break;
            case '"': o += "&quot;"; break;
            default: o += c;
        }
    }
    return o;
}

std::string fmt(const char * f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

// White → deep blue on a log scale of tokens; zero is red, so unrouted experts stand out.
std::string cell_color(int64_t count, double log_max) {
    if (count == 0) {
        return "#d7301f";
    }
    const double t = log_max > 0 ? std::log10((double) count + 1) / log_max : 1;
    const int r = (int) (240 - 200 * t), g = (int) (245 - 150 * t), b = (int) (255 - 60 * t);
    char buf[16];
    std::snprintf(buf, sizeof buf, "#%02x%02x%02x", r, g, b);
    return buf;
}

// Tokens per expert × layer, from one expert tensor per layer (all expert tensors of a layer share routing).
std::string expert_heatmap(const Imatrix & im) {
    std::map<int, const TensorStats *> per_layer;
    std::map<int, std::string> names;
    for (const auto & [name, ts] : im.tensors) {
        const int blk = block_index(name);
        if (ts.n_mat() < 2 || blk < 0 || name.find("_exps") == std::string::npos) {
            continue;
        }
        const bool preferred = name.find("ffn_gate_exps") != std::string::npos;
        if (!per_layer.count(blk) || preferred) {
            per_layer[blk] = &ts;
            names[blk] = name;
        }
    }
    if (per_layer.empty()) {
        return "<p>No expert tensors: a dense model.</p>";
    }
    int64_t n_exp = 0, max_count = 0;
    for (const auto & [blk, ts] : per_layer) {
        n_exp = std::max(n_exp, ts->n_mat());
        for (int64_t c : ts->counts) {
            max_count = std::max(max_count, c);
        }
    }
    const double log_max = std::log10((double) max_count + 1);
    const int cell = 26, left = 60, top = 24;
    const int w = left + (int) n_exp * cell + 10, h = top + (int) per_layer.size() * cell + 10;
    std::ostringstream s;
    s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h << "' role='img' "
      << "aria-label='tokens per expert and layer'>";
    for (int64_t e = 0; e < n_exp; ++e) {
        s << "<text x='" << left + e * cell + cell / 2 << "' y='16' class='ax' text-anchor='middle'>" << e << "</text>";
    }
    int row = 0;
    for (const auto & [blk, ts] : per_layer) {
        const int y = top + row++ * cell;
        s << "<text x='" << left - 8 << "' y='" << y + cell / 2 + 4 << "' class='ax' text-anchor='end'>blk " << blk
          << "</text>";
        for (int64_t e = 0; e < ts->n_mat(); ++e) {
            const int64_t c = ts->counts[e];
            s << "<rect x='" << left + e * cell << "' y='" << y << "' width='" << cell - 2 << "' height='" << cell - 2
              << "' fill='" << cell_color(c, log_max) << "'><title>" << esc(names[blk]) << " expert " << e << ": " << c
              << " tokens</title></rect>";
            if (c == 0) {
                s << "<text x='" << left + e * cell + cell / 2 - 1 << "' y='" << y + cell / 2 + 3
                  << "' class='zero' text-anchor='middle'>0</text>";
            }
        }
    }
    s << "</svg><p class='note'>Colour: log tokens routed to each expert (darker = more); red with 0: never routed. "
      << "Most tokens to one expert: " << max_count << ".</p>";
    return s.str();
}

std::string layer_bars(const std::vector<LayerStatistics> & layers) {
    if (layers.empty()) {
        return "<p>No block tensors.</p>";
    }
    float max_v = 0;
    for (const auto & l : layers) {
        max_v = std::max(max_v, l.mean_total);
    }
    const int bar_h = 20, left = 60, width = 420;
    std::ostringstream s;
    s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << left + width + 110 << "' height='"
      << layers.size() * (bar_h + 4) + 8 << "' role='img' aria-label='importance per layer'>";
    int row = 0;
    for (const auto & l : layers) {
        const int y = 4 + row++ * (bar_h + 4);
        const int len = max_v > 0 ? (int) (width * l.mean_total / max_v) : 0;
        s << "<text x='" << left - 8 << "' y='" << y + 14 << "' class='ax' text-anchor='end'>blk " << l.layer
          << "</text><rect x='" << left << "' y='" << y << "' width='" << std::max(len, 1) << "' height='" << bar_h
          << "' fill='#3b6fb6'><title>blk " << l.layer << ": " << fmt("%.2f", l.mean_total) << "</title></rect>"
          << "<text x='" << left + len + 6 << "' y='" << y + 14 << "' class='ax'>" << fmt("%.2f", l.mean_total)
          << "</text>";
    }
    s << "</svg><p class='note'>μΣ(Act²): each layer's Σ(Act²), weighted by the tensors' column counts "
      << "(upstream's per-layer summary).</p>";
    return s.str();
}

// Mean x² per column (over all matrices that saw tokens), sorted from most to least important, log scale.
std::string column_profiles(const Imatrix & im, const std::vector<std::string> & names) {
    static const char * colors[] = {"#3b6fb6", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e"};
    const int w = 640, h = 260, left = 56, bottom = 30, top = 10;
    std::vector<std::pair<std::string, std::vector<double>>> curves;
    double lo = 1e300, hi = 0;
    for (const auto & name : names) {
        const auto it = im.tensors.find(name);
        if (it == im.tensors.end()) {
            continue;
        }
        const TensorStats & ts = it->second;
        std::vector<double> mean(ts.n_cols(), 0.0);
        int64_t tokens = 0;
        for (int64_t m = 0; m < ts.n_mat(); ++m) {
            tokens += ts.counts[m];
            for (int64_t j = 0; j < ts.n_cols(); ++j) {
                mean[j] += ts.sums[m * ts.n_cols() + j];
            }
        }
        if (tokens == 0) {
            continue;
        }
        for (double & v : mean) {
            v = std::max(v / tokens, 1e-12);
            lo = std::min(lo, v);
            hi = std::max(hi, v);
        }
        std::sort(mean.begin(), mean.end(), std::greater<>());
        curves.emplace_back(name, std::move(mean));
    }
    if (curves.empty()) {
        return "<p>No tensor to profile.</p>";
    }
    const double l0 = std::floor(std::log10(lo)), l1 = std::ceil(std::log10(hi));
    const double span = std::max(l1 - l0, 1.0);
    std::ostringstream s;
    s << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w + 10 << "' height='" << h + 20 * curves.size()
      << "' role='img' aria-label='sorted column importance'>";
    for (double d = l0; d <= l1; d += 1) {
        const double y = top + (h - top - bottom) * (1 - (d - l0) / span);
        s << "<line x1='" << left << "' x2='" << w << "' y1='" << y << "' y2='" << y << "' class='grid'/>"
          << "<text x='" << left - 6 << "' y='" << y + 4 << "' class='ax' text-anchor='end'>1e" << (int) d << "</text>";
    }
    s << "<text x='" << (left + w) / 2 << "' y='" << h - 8 << "' class='ax' text-anchor='middle'>"
      << "columns, sorted by importance (fraction of the tensor's columns)</text>";
    for (size_t c = 0; c < curves.size(); ++c) {
        const auto & v = curves[c].second;
        s << "<polyline fill='none' stroke-width='1.6' stroke='" << colors[c % 6] << "' points='";
        for (size_t j = 0; j < v.size(); ++j) {
            const double x = left + (w - left) * (v.size() > 1 ? (double) j / (v.size() - 1) : 0);
            const double y = top + (h - top - bottom) * (1 - (std::log10(v[j]) - l0) / span);
            s << fmt("%.1f", x) << "," << fmt("%.1f", y) << " ";
        }
        s << "'/><rect x='" << left << "' y='" << h + 20 * c << "' width='14' height='10' fill='" << colors[c % 6]
          << "'/><text x='" << left + 20 << "' y='" << h + 20 * c + 10 << "' class='ax'>" << esc(curves[c].first)
          << " (" << v.size() << " columns, max/median " << fmt("%.1f", v.front() / v[v.size() / 2]) << ")</text>";
    }
    s << "</svg>";
    return s.str();
}

std::string partial_table(const Imatrix & im) {
    std::ostringstream s;
    int n = 0;
    s << "<table><tr><th>tensor</th><th>experts with tokens</th><th>never routed</th><th>fewest tokens</th></tr>";
    for (const auto & c : expert_coverage(im)) {
        if (c.unseen.empty()) {
            continue;
        }
        ++n;
        s << "<tr><td>" << esc(c.name) << "</td><td>" << c.n_mat - (int64_t) c.unseen.size() << " / " << c.n_mat
          << "</td><td>" << never_routed_label(c.unseen) << "</td><td>" << c.min_count << "</td></tr>";
    }
    s << "</table>";
    return n ? s.str() : "<p>Every expert of every tensor saw at least one token.</p>";
}

std::string stats_table(const std::vector<TensorStatistics> & ts) {
    std::ostringstream s;
    s << "<table class='num'><tr><th>layer</th><th>tensor</th><th>Σ(Act²)</th><th>min</th><th>max</th><th>μ</th>"
      << "<th>σ</th><th>% active</th><th>N</th><th>entropy</th><th>E (norm)</th><th>ZD</th><th>CosSim</th></tr>";
    for (const auto & t : ts) {
        s << "<tr><td>" << esc(t.layer) << "</td><td>" << esc(t.kind) << "</td><td>" << fmt("%.2f", t.total)
          << "</td><td>" << fmt("%.4f", t.min) << "</td><td>" << fmt("%.4f", t.max) << "</td><td>"
          << fmt("%.2f", t.mean) << "</td><td>" << fmt("%.2f", t.stddev) << "</td><td>"
          << fmt("%.2f%%", t.active * 100) << "</td><td>" << t.elements << "</td><td>" << fmt("%.4f", t.entropy)
          << "</td><td>" << fmt("%.2f%%", t.entropy_norm()) << "</td><td>" << fmt("%.2f%%", 100 * t.zd)
          << "</td><td>" << fmt("%.4f", t.cossim) << "</td></tr>";
    }
    s << "</table>";
    return s.str();
}

}  // namespace

std::vector<std::string> default_profile_tensors(const Imatrix & im) {
    int first = -1, last = -1;
    for (const auto & [name, ts] : im.tensors) {
        const int b = block_index(name);
        if (b >= 0) {
            first = first < 0 ? b : std::min(first, b);
            last = std::max(last, b);
        }
    }
    std::vector<std::string> out;
    for (int b : {first, last}) {
        for (const char * kind : {"attn_q", "attn_q_a", "ffn_down", "ffn_down_exps"}) {
            const std::string name = "blk." + std::to_string(b) + "." + kind + ".weight";
            if (im.tensors.count(name) && std::find(out.begin(), out.end(), name) == out.end()) {
                out.push_back(name);
            }
        }
    }
    return out;
}

std::string render_html_report(const Imatrix & im, const ReportOptions & o) {
    const auto ts = tensor_statistics(im);
    const auto layers = layer_statistics(ts);
    std::string datasets;
    for (const auto & d : im.meta.datasets) {
        datasets += "<li>" + esc(d) + "</li>";
    }
    std::ostringstream h;
    h << "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>imatrix report: " << esc(o.source)
      << "</title><style>"
      << "body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}"
      << "h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ccc}"
      << "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px}"
      << "th{background:#f3f3f3}table.num td{text-align:right}.ax{font-size:11px;fill:#444}"
      << ".zero{font-size:10px;fill:#fff}.grid{stroke:#e4e4e4}.note{font-size:12px;color:#555}"
      << "dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}dt{font-weight:bold}"
      << "</style></head><body>"
      << "<h1>Importance matrix report</h1><dl>"
      << "<dt>file</dt><dd>" << esc(o.source) << "</dd>"
      << "<dt>format</dt><dd>" << (im.source_format == ImatrixFormat::gguf ? "GGUF imatrix" : "legacy imatrix.dat")
      << "</dd><dt>chunks</dt><dd>" << im.meta.chunk_count << " × " << im.meta.chunk_size << " tokens</dd>"
      << "<dt>tensors</dt><dd>" << im.tensors.size() << "</dd>"
      << "<dt>datasets</dt><dd><ul style='margin:0;padding-left:16px'>" << datasets << "</ul></dd></dl>"
      << "<h2>Tokens per expert and layer</h2>" << expert_heatmap(im)
      << "<h2>Tensors with experts that saw no token</h2>" << partial_table(im)
      << "<h2>Importance per layer</h2>" << layer_bars(layers)
      << "<h2>Sorted column importance</h2>" << column_profiles(im, o.profile_tensors)
      << "<p class='note'>Mean x² per input column, largest first. A steep start means a few columns dominate: "
      << "those are what an imatrix protects when quantizing.</p>"
      << "<h2>Per-tensor statistics</h2>" << stats_table(ts)
      << "<p class='note'>The same numbers as <code>llama-imatrix --show-statistics</code>.</p>"
      << "</body></html>\n";
    return h.str();
}

}  // namespace imx
