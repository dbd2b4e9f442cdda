#include "core/report/statistics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <sstream>

namespace imx {

namespace {

void split_name(const std::string & input, std::string & layer, std::string & kind) {
    std::vector<std::string> parts;
    std::istringstream stream(input);
    std::string item;
    while (std::getline(stream, item, '.')) {
        parts.push_back(item);
    }
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
        if (parts[i] == "blk") {
            layer = parts[i + 1];
            break;
        }
    }
    for (size_t i = 1; i < parts.size(); ++i) {
        if (parts[i] == "weight") {
            kind = parts[i - 1];
            break;
        }
    }
    if (kind.empty()) {
        kind = input;
    }
    if (layer.empty()) {
        layer = "-";
    }
}

int layer_number(const std::string & layer) {
    try {
        return std::stoi(layer);
    } catch (const std::exception &) {
        return -1;
    }
}

}  // namespace

float TensorStatistics::entropy_norm() const {
    return elements > 0 ? 100.0f * (entropy / std::log2((float) elements)) : 0.0f;
}

std::vector<TensorStatistics> tensor_statistics(const Imatrix & im) {
    std::vector<TensorStatistics> out;
    std::map<std::string, std::vector<float>> raw;  // float sums, as upstream holds them, for CosSim
    for (const auto & [name, e] : im.tensors) {
        const int64_t n_mat = e.n_mat();
        if (n_mat == 0) {
            continue;
        }
        const int64_t row = e.n_cols();
        std::vector<float> act;
        act.reserve(e.sums.size());
        for (int64_t m = 0; m < n_mat; ++m) {
            if (e.counts[m] == 0) {
                continue;
            }
            for (int64_t j = 0; j < row; ++j) {
                act.push_back((float) e.sums[m * row + j] / (float) e.counts[m]);
            }
        }
        if (act.empty()) {
            continue;
        }
        TensorStatistics t;
        t.name = name;
        split_name(name, t.layer, t.kind);
        t.total = std::accumulate(act.begin(), act.end(), 0.0f);
        t.max = *std::max_element(act.begin(), act.end());
        t.min = *std::min_element(act.begin(), act.end());
        t.mean = t.total / act.size();
        const float sq = std::inner_product(act.begin(), act.end(), act.begin(), 0.0f);
        t.stddev = std::sqrt(std::max(0.0f, sq / act.size() - t.mean * t.mean));
        const auto inactive = std::count_if(act.begin(), act.end(), [](float v) { return std::fabs(v) <= 1e-5f; });
        t.active = 1 - (float) inactive / act.size();
        if (t.total > 0) {
            for (float a : act) {
                if (const float p = a / t.total; p > 0) {
                    t.entropy -= p * std::log2(p);
                }
            }
        }
        int z = 0;
        if (t.stddev > 0.0f) {
            for (float a : act) {
                z += (a - t.mean) / t.stddev > 1;
            }
        }
        t.elements = (int) act.size();
        t.zd = (float) z / t.elements;
        raw[name].assign(e.sums.begin(), e.sums.end());
        out.push_back(std::move(t));
    }

    for (auto & t : out) {
        const int blk = layer_number(t.layer);
        if (t.layer == "-" || blk < 0) {
            continue;
        }
        std::string prev = t.name;
        const std::string tag = "blk." + t.layer + ".";
        prev.replace(prev.find(tag), tag.size(), "blk." + std::to_string(blk - 1) + ".");
        const auto it = raw.find(prev);
        if (it == raw.end() || it->second.size() != raw[t.name].size()) {
            continue;
        }
        const auto & a = raw[t.name];
        const auto & b = it->second;
        const float dp = std::inner_product(a.begin(), a.end(), b.begin(), 0.0f);
        const float ma = std::sqrt(std::inner_product(a.begin(), a.end(), a.begin(), 0.0f));
        const float mb = std::sqrt(std::inner_product(b.begin(), b.end(), b.begin(), 0.0f));
        t.cossim = dp / (ma * mb);
    }

    std::stable_sort(out.begin(), out.end(), [](const TensorStatistics & a, const TensorStatistics & b) {
        return a.kind < b.kind || (a.kind == b.kind && a.total > b.total);
    });
    return out;
}

std::vector<LayerStatistics> layer_statistics(const std::vector<TensorStatistics> & ts) {
    struct Acc { float bias = 0, zd = 0, cossim = 0; int elements = 0; };
    std::map<int, Acc> acc;
    for (const auto & t : ts) {
        Acc & a = acc[layer_number(t.layer)];
        a.bias += t.elements * t.total;
        a.zd += t.elements * t.zd;
        a.cossim += t.elements * t.cossim;
        a.elements += t.elements;
    }
    std::vector<LayerStatistics> out;
    for (const auto & [layer, a] : acc) {
        if (layer < 0 || a.elements == 0) {
            continue;
        }
        out.push_back({layer, a.bias / a.elements, a.zd / a.elements, a.cossim / a.elements, a.elements});
    }
    return out;
}

std::string format_tensor_row(const TensorStatistics & t) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%5s\t%-20s\t%10.2f\t%8.4f\t%11.4f\t%6.2f\t%6.2f\t%8.2f%%\t%6d\t%10.4f\t%6.2f%%\t%10.2f%%\t%8.4f",
                  t.layer.c_str(), t.kind.c_str(), t.total, t.min, t.max, t.mean, t.stddev, t.active * 100.0f,
                  t.elements, t.entropy, t.entropy_norm(), 100.0f * t.zd, t.cossim);
    return buf;
}

std::string format_layer_row(const LayerStatistics & l) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%5d\t%14.2f\t%10.4f%%\t%6.4f", l.layer, l.mean_total, 100.0f * l.zd, l.cossim);
    return buf;
}

}  // namespace imx
