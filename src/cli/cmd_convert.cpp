// imx convert IN -o OUT [--format gguf|dat]: the same data in the other file format.
#include "commands.h"
#include "format_option.h"

#include <cstdio>

namespace imx::cli {

namespace {
struct Options {
    std::string in, out, format;
    uint32_t    legacy_chunk_size = kDefaultLegacyChunkSize;
};
}  // namespace

Run add_convert(CLI::App & app) {
    auto o = std::make_shared<Options>();
    app.add_option("input", o->in, "imatrix file to read (GGUF or legacy .dat)")->required();
    app.add_option("-o,--output", o->out, "file to write")->required();
    add_format_option(app, o->format);
    app.add_option("--chunk-size", o->legacy_chunk_size, "tokens per chunk assumed for legacy .dat input")
        ->capture_default_str();
    return [o] {
        prepare_outputs({o->out});
        const Imatrix im = load_imatrix(o->in, o->legacy_chunk_size);
        const ImatrixFormat fmt = resolve_format(o->format, o->out);
        if (fmt == ImatrixFormat::legacy) {
            if (!im.covariances.empty()) {
                std::fprintf(stderr, "imx: warning: the legacy format cannot hold covariances: the %zu in %s are "
                                     "left out\n", im.covariances.size(), o->in.c_str());
            }
            if (!im.all_experts.empty()) {
                std::fprintf(stderr, "imx: warning: the legacy format cannot hold all-experts statistics: those of %zu "
                                     "tensors in %s are left out\n", im.all_experts.size(), o->in.c_str());
            }
            for (const auto & [name, ts] : im.tensors) {
                if (!ts.has_data()) {
                    std::fprintf(stderr, "imx: warning: %s has no data; the legacy format cannot store it\n",
                                 name.c_str());
                }
            }
        }
        save_imatrix(im, o->out, fmt);
        std::fprintf(stderr, "imx: wrote %s (%zu tensors)\n", o->out.c_str(), im.tensors.size());
    };
}

}  // namespace imx::cli
