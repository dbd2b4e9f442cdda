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
std::string fresh_dir(const std::string & sub);   // the same, emptied

struct RunResult {
    int         exit_code;
    std::string output;  // stdout and stderr together
};
RunResult run(const std::string & command);

// Runs upstream llama-perplexity with these arguments. Its logger is asynchronous and can lose the last lines
// (the final estimate) when the process exits under load: such a run is repeated, up to three times.
RunResult run_perplexity(const std::string & args);

// Runs upstream llama-imatrix once for these arguments (cached by a key made of them) and returns the path
// of its output file. `extra` is appended to: -m MODEL -f calibration.txt -o OUT -c 512 -t 2.
std::string upstream_imatrix(const std::string & model, const std::string & extra, const std::string & ext);

// A command running in the background (sh -c "exec COMMAND", so signals reach the program itself).
struct Background {
    int         pid;
    std::string log;  // stdout and stderr
};
Background start(const std::string & command, const std::string & log);
// Waits (up to `seconds`) until a file whose path starts with `prefix` (is `prefix`, if exact) exists;
// returns its path, or "".
std::string wait_for_file(const std::string & prefix, bool exact = false, int seconds = 120);
// Waits for the program's end: its exit code (128 + N if signal N ended it) and its output.
RunResult finish(const Background & b);

// Starts `command` in the background, waits (up to 2 minutes) for `checkpoint` to appear, then kills it with
// SIGKILL, as a crash or power cut would. Returns whether the checkpoint appeared.
bool kill_after_checkpoint(const std::string & command, const std::string & checkpoint);

std::vector<uint8_t> bytes_of(const std::string & path);
// The names in a folder, sorted (what a run left behind).
std::vector<std::string> file_names(const std::string & dir);
// The last 2000 characters of a command's output, for failure messages.
std::string tail(const std::string & output);
bool file_exists(const std::string & path);

}  // namespace imx::test
