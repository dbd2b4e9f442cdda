#include "progress.h"

#include <cstdio>
#include <unistd.h>

namespace imx::cli {

std::string clock_str(double s) {
    const long t = (long) (s + 0.5);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    return buf;
}

Progress::Progress(std::string label, uint64_t done_at_start)
    : label_(std::move(label)), done_at_start_(done_at_start), start_(std::chrono::steady_clock::now()),
      tty_(isatty(2)) {}

double Progress::seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(uint64_t done, uint64_t total, const std::string & unit, const std::string & detail) {
    if (total == 0) {
        return;
    }
    const double secs = seconds();
    const uint64_t run = done > done_at_start_ ? done - done_at_start_ : 0;
    const double eta = run ? secs / (double) run * (double) (total - done) : 0;
    const std::string extra = detail.empty() ? "" : "  " + detail;
    if (tty_) {
        const int width = 30;
        const int filled = (int) ((double) done / (double) total * width);
        std::fprintf(stderr, "\r%s [%.*s%*s] %s %llu/%llu%s  ETA %s ", label_.c_str(), filled,
                     "==============================", width - filled, "", unit.c_str(), (unsigned long long) done,
                     (unsigned long long) total, extra.c_str(), clock_str(eta).c_str());
        if (done == total) {
            std::fputc('\n', stderr);
        }
    } else {
        const uint64_t decile = done * 10 / total;
        if (decile != last_decile_ || done == total) {
            last_decile_ = decile;
            std::fprintf(stderr, "%s: %s %llu/%llu%s, ETA %s\n", label_.c_str(), unit.c_str(),
                         (unsigned long long) done, (unsigned long long) total, extra.c_str(),
                         clock_str(eta).c_str());
        }
    }
}

}  // namespace imx::cli
