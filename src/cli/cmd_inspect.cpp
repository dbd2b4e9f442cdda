// imx inspect FILE [--json]: format, metadata, and per tensor its shape, token counts and unseen experts.
#include "commands.h"
#include "coverage_output.h"
#include "core/format/imatrix_file.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>

namespace imx::cli {

namespace {

struct Options {
    std::string file;
    bool        json = false;
    uint32_t    legacy_chunk_size = kDefaultLegacyChunkSize;
};

std::vector<int64_t> unseen_matrices(const TensorStats & ts) {
    std::vector<int64_t> ids;
    for (int64_t m = 0; m < ts.n_mat(); ++m) {
        if (ts.counts[m] == 0) {
            ids.push_back(m);
        }
    }
    return ids;
}

void print_json(const Options & o, const Imatrix & im) {
    nlohmann::ordered_json j;
    j["file"] = o.file;
    j["format"] = im.source_format == ImatrixFormat::gguf ? "gguf" : "legacy";
    j["datasets"] = im.meta.datasets;
    j["chunk_count"] = im.meta.chunk_count;
    j["chunk_size"] = im.meta.chunk_size;
    j["counts_per_expert_known"] = im.counts_per_expert_known;
    j["tensors"] = nlohmann::json::array();
    for (const auto & [name, ts] : im.tensors) {
        j["tensors"].push_back({{"name", name}, {"n_cols", ts.n_cols()}, {"n_mat", ts.n_mat()},
                                {"counts", ts.counts}, {"unseen", unseen_matrices(ts)}});
    }
    j["covariances"] = nlohmann::json::array();
    for (const Covariance & c : im.covariances) {
        j["covariances"].push_back({{"readers", c.readers}, {"n_cols", c.n_cols}, {"block", c.block},
                                    {"n_mat", c.n_mat}});
    }
    j["all_experts"] = nlohmann::json::array();
    for (const auto & [name, a] : im.all_experts) {
        j["all_experts"].push_back({{"name", name}, {"n_rows", a.n_rows}, {"tokens", a.tokens}});
    }
    std::printf("%s\n", j.dump(2).c_str());
}

void print_text(const Options & o, const Imatrix & im) {
    std::printf("file:      %s\n", o.file.c_str());
    std::printf("format:    %s\n", im.source_format == ImatrixFormat::gguf
                                       ? "GGUF imatrix"
                                       : "legacy imatrix.dat (per-expert token counts unknown)");
    std::string ds;
    for (const auto & d : im.meta.datasets) {
        if (!ds.empty()) {
            ds += ", ";
        }
        ds += d;
    }
    std::printf("datasets:  %s\n", ds.empty() ? "(none)" : ds.c_str());
    std::printf("chunks:    %u of %u tokens\n", im.meta.chunk_count, im.meta.chunk_size);
    int n_partial = 0;
    for (const auto & [name, ts] : im.tensors) {
        n_partial += ts.n_unseen() > 0;
    }
    std::printf("tensors:   %zu (%d with matrices that saw no token)\n", im.tensors.size(), n_partial);
    if (!im.covariances.empty()) {
        int whole = 0;
        for (const Covariance & c : im.covariances) {
            whole += c.full();
        }
        std::printf("covariance: %zu inputs (%d whole, %zu in blocks of 256), for imx quantize --method hessian\n",
                    im.covariances.size(), whole, im.covariances.size() - whole);
    }
    if (!im.all_experts.empty()) {
        std::printf("all experts: %zu expert tensors over all %lld tokens (collect --all-experts), for quantize "
                    "--prior all-experts\n", im.all_experts.size(), (long long) im.all_experts.begin()->second.tokens);
    }
    std::printf("\n");
    std::printf("%-36s %7s %6s %12s %12s  %s\n", "tensor", "cols", "mats", "min tokens", "max tokens", "unseen");
    for (const auto & [name, ts] : im.tensors) {
        const auto [mn, mx] = std::minmax_element(ts.counts.begin(), ts.counts.end());
        const auto unseen = unseen_matrices(ts);
        std::printf("%-36s %7lld %6lld %12lld %12lld  %s\n", name.c_str(), (long long) ts.n_cols(),
                    (long long) ts.n_mat(), (long long) *mn, (long long) *mx,
                    never_routed_label(unseen).c_str());
    }
}

}  // namespace

Run add_inspect(CLI::App & app) {
    auto o = std::make_shared<Options>();
    app.add_option("file", o->file, "imatrix file (GGUF or legacy .dat)")->required();
    app.add_flag("--json", o->json, "print JSON on stdout");
    app.add_option("--chunk-size", o->legacy_chunk_size, "tokens per chunk assumed for legacy .dat input")
        ->capture_default_str();
    return [o] {
        const Imatrix im = load_imatrix(o->file, o->legacy_chunk_size);
        o->json ? print_json(*o, im) : print_text(*o, im);
    };
}

}  // namespace imx::cli
