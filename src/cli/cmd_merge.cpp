// imx merge A B ... -o OUT: sums and per-expert token counts add up exactly, whatever the chunk sizes.
#include "commands.h"
#include "format_option.h"

#include <cstdio>

namespace imx::cli {

namespace {
struct Options {
    std::vector<std::string> inputs;
    std::string              out, format;
    uint32_t                 legacy_chunk_size = kDefaultLegacyChunkSize;
};
}  // namespace

void add_imatrix(Imatrix & into, const Imatrix & im, const std::string & source) {
    const size_t all_before = into.all_experts.size();
    const auto dropped = merge_into(into, im, source);
    if (into.all_experts.size() < all_before) {
        std::fprintf(stderr, "imx: warning: %s lacks all-experts statistics (collect --all-experts): the merged file "
                             "drops those of %zu tensors\n", source.c_str(), all_before - into.all_experts.size());
    } else if (!im.all_experts.empty() && into.all_experts.empty()) {
        std::fprintf(stderr, "imx: warning: the files before %s lack all-experts statistics: the merged file drops "
                             "its\n", source.c_str());
    }
    if (!dropped.empty()) {
        std::fprintf(stderr, "imx: warning: %s lacks the covariance of %zu inputs (first: %s): the merged file keeps "
                             "none for them\n", source.c_str(), dropped.size(), dropped[0].c_str());
    }
}

Imatrix merge_files(const std::vector<std::string> & files, uint32_t legacy_chunk_size, std::vector<Imatrix> * loaded) {
    Imatrix merged;
    for (size_t i = 0; i < files.size(); ++i) {
        Imatrix im = load_imatrix(files[i], legacy_chunk_size);
        if (!im.counts_per_expert_known) {
            std::fprintf(stderr,
                         "imx: warning: %s is a legacy imatrix.dat: its per-expert token counts are unknown, so its "
                         "one count per tensor is given to every expert\n", files[i].c_str());
        }
        if (loaded) {
            loaded->push_back(im);  // the parts themselves are asked for: a copy
        }
        if (i == 0) {
            merged = std::move(im);  // one file is most calls: no copy of its covariances (GBs at real width)
        } else {
            add_imatrix(merged, im, files[i]);
        }
    }
    return merged;
}

Run add_merge(CLI::App & app) {
    auto o = std::make_shared<Options>();
    app.add_option("inputs", o->inputs, "imatrix files to add together (GGUF or legacy .dat)")->required();
    app.add_option("-o,--output", o->out, "file to write")->required();
    add_format_option(app, o->format);
    app.add_option("--chunk-size", o->legacy_chunk_size, "tokens per chunk assumed for legacy .dat inputs")
        ->capture_default_str();
    return [o] {
        prepare_outputs({o->out});
        const Imatrix merged = merge_files(o->inputs, o->legacy_chunk_size);
        save_imatrix(merged, o->out, resolve_format(o->format, o->out));
        std::fprintf(stderr, "imx: merged %zu files into %s (%zu tensors, %u chunks)\n", o->inputs.size(),
                     o->out.c_str(), merged.tensors.size(), merged.meta.chunk_count);
    };
}

}  // namespace imx::cli
