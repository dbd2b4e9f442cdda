// Each imx subcommand registers its options on the CLI11 app and returns the function that runs it.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

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

}  // namespace imx::cli
