// Shared test helpers: paths, running commands, and upstream llama-imatrix runs cached per build tree.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace imx::test {

std::string shared(const std::string & rel);      // ../shared/<rel>
std::string upstream(const std::string & tool);   // build/upstream/<tool>
std::string imx_bin();
std::string work_dir(const std::string & sub);    // a fresh-or-reused folder under build/test-work

struct RunResult {
    int         exit_code;
    std::string output;  // stdout and stderr together
};
RunResult run(const std::string & command);

// Runs upstream llama-imatrix once for these arguments (cached by a key made of them) and returns the path
// of its output file. `extra` is appended to: -m MODEL -f calibration.txt -o OUT -c 512 -t 2.
std::string upstream_imatrix(const std::string & model, const std::string & extra, const std::string & ext);

// Starts `command` in the background, waits (up to 2 minutes) for `checkpoint` to appear, then kills it with
// SIGKILL, as a crash or power cut would. Returns whether the checkpoint appeared.
bool kill_after_checkpoint(const std::string & command, const std::string & checkpoint);

std::vector<uint8_t> bytes_of(const std::string & path);
bool file_exists(const std::string & path);

}  // namespace imx::test
