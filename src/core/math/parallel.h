// Runs f(i, thread) for i in [0, n) on `threads` threads (thread = 0 .. threads−1), dynamically scheduled.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace imx {

template <typename F> void parallel_for(int64_t n, int threads, F && f) {
    std::atomic<int64_t> next{0};
    auto work = [&](int tid) {
        for (int64_t i; (i = next++) < n;) {
            f(i, tid);
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < std::min<int64_t>(threads, n); ++t) {
        pool.emplace_back(work, t);
    }
    work(0);
    for (auto & t : pool) {
        t.join();
    }
}

// Runs f(begin, end) once per thread on `threads` contiguous, nearly equal slices of [0, n).
template <typename F> void parallel_slices(int64_t n, int threads, F && f) {
    const int64_t k = std::max<int64_t>(1, std::min<int64_t>(threads, n));
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < k; ++t) {
        pool.emplace_back([&f, n, k, t] { f(n * t / k, n * (t + 1) / k); });
    }
    f(0, n / k);
    for (auto & t : pool) {
        t.join();
    }
}

}  // namespace imx
