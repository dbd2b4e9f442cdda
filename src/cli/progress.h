// Progress on stderr for long runs: a bar with ETA on a terminal; on a pipe, a line every ~10% so logs stay
// readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace imx::cli {

std::string clock_str(double seconds);  // h:mm:ss

class Progress {
public:
    // `done_at_start`: work finished before this run (a resumed checkpoint), left out of the rate.
    explicit Progress(std::string label, uint64_t done_at_start = 0);
    // `detail` follows the counts, e.g. "1234 tok/s".
    void update(uint64_t done, uint64_t total, const std::string & unit, const std::string & detail = "");
    double seconds() const;

private:
    std::string label_;
    uint64_t    done_at_start_;
    std::chrono::steady_clock::time_point start_;
    bool        tty_;
    uint64_t    last_decile_ = 0;
};

}  // namespace imx::cli
