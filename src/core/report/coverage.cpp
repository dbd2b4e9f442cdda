#include "core/report/coverage.h"

#include <algorithm>
#include <cctype>

namespace imx {

std::vector<TensorCoverage> expert_coverage(const Imatrix & im) {
    std::vector<TensorCoverage> out;
    for (const auto & [name, ts] : im.tensors) {
        if (ts.n_mat() < 2) {
            continue;
        }
        TensorCoverage c;
        c.name = name;
        c.n_mat = ts.n_mat();
        for (int64_t m = 0; m < ts.n_mat(); ++m) {
            const int64_t n = ts.counts[m];
            if (n == 0) {
                c.unseen.push_back(m);
            } else if (c.min_matrix < 0 || n < c.min_count) {
                c.min_count = n;
                c.min_matrix = m;
            }
            c.max_count = std::max(c.max_count, n);
        }
        out.push_back(std::move(c));
    }
    return out;
}

int block_index(const std::string & name) {
    if (name.rfind("blk.", 0) != 0) {
        return -1;
    }
    size_t end = 4;
    while (end < name.size() && std::isdigit((unsigned char) name[end])) {
        ++end;
    }
    if (end == 4 || end == name.size() || name[end] != '.') {
        return -1;
    }
    return std::stoi(name.substr(4, end - 4));
}

std::string join_ids(const std::vector<int64_t> & ids, const char * separator) {
    std::string s;
    for (int64_t id : ids) {
        if (!s.empty()) {
            s += separator;
        }
        s += std::to_string(id);
    }
    return s;
}

std::string never_routed_label(const std::vector<int64_t> & ids) {
    if (ids.empty()) {
        return "-";
    }
    std::string s = std::to_string(ids.size()) + " (";
    for (size_t i = 0; i < ids.size(); ++i) {
        s += (i ? ", #" : "#") + std::to_string(ids[i]);
    }
    return s + ")";
}

}  // namespace imx
