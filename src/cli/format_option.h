// The output-format choice shared by commands that write imatrix files: --format gguf|dat, else by extension.
#pragma once

#include "core/format/imatrix_file.h"

#include <CLI/CLI.hpp>

#include <string>

namespace imx::cli {

inline void add_format_option(CLI::App & app, std::string & format) {
    app.add_option("--format,--output-format", format,
                   "output format; default: from the extension (.dat = legacy, else GGUF)")
        ->check(CLI::IsMember({"gguf", "dat"}));
}

inline ImatrixFormat resolve_format(const std::string & format, const std::string & path) {
    if (format.empty()) {
        return format_from_path(path);
    }
    return format == "dat" ? ImatrixFormat::legacy : ImatrixFormat::gguf;
}

}  // namespace imx::cli
