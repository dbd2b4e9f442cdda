// Each imx subcommand registers its options on the CLI11 app and returns the function that runs it.
#pragma once

#include <CLI/CLI.hpp>

#include "core/format/atomic_file.h"
#include "core/format/imatrix_file.h"

#include <cstdio>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

namespace imx::cli {

using Run = std::function<void()>;

Run add_inspect(CLI::App & app);
Run add_convert(CLI::App & app);
Run add_merge(CLI::App & app);
Run add_collect(CLI::App & app);
Run add_stats(CLI::App & app);
Run add_coverage(CLI::App & app);
Run add_synth(CLI::App & app);
Run add_diff(CLI::App & app);
Run add_quantize(CLI::App & app);
Run add_eval(CLI::App & app);
Run add_sweep(CLI::App & app);
Run add_generate(CLI::App & app);

// imx merge's work, for collect --in-file too: the files added up (a warning for legacy inputs, whose
// per-expert counts are unknown) / one file added into `into` (a warning where covariances are dropped).
// `loaded`, if given, keeps each file as read (quantize --prior-weight auto cross-fits them).
Imatrix merge_files(const std::vector<std::string> & files, uint32_t legacy_chunk_size = kDefaultLegacyChunkSize,
                    std::vector<Imatrix> * loaded = nullptr);
void add_imatrix(Imatrix & into, const Imatrix & im, const std::string & source);

// upstream's table for one imatrix file on stdout (imx stats FILE; llama-imatrix --show-statistics)
void show_statistics(const std::string & file);

// MemAvailable of /proc/meminfo in bytes; 0 where unknown.
uint64_t available_memory();
// "12 inputs of 20 weights (8 whole, 4 in blocks of 256; 0 pooled over experts), 176 MiB in memory"
std::string covariance_summary(const Imatrix & im, const char * held = "in memory");
// The bytes im's covariances would take all whole, counted as covariance_summary counts what is held: per expert
// (not pooled), per head where the input has a matrix per head, cross terms twice.
uint64_t whole_covariance_bytes(const Imatrix & im);

// Before any work: every output (empty names skipped) can be created, else Error naming it; temporary files
// of ended runs are removed, each with a line.
inline void prepare_outputs(std::initializer_list<std::string> paths) {
    for (const std::string & p : paths) {
        if (!p.empty()) {
            for (const std::string & line : prepare_output(p)) {
                std::fprintf(stderr, "imx: %s\n", line.c_str());
            }
        }
    }
}

}  // namespace imx::cli
