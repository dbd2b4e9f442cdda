#include "covariance.h"

#include "dot.h"
#include "error.h"

#include <thread>

namespace imx {

Covariance::Covariance(int64_t cols, int64_t blk, int64_t mats)
    : n_cols(cols), block(blk), n_mat(mats), values((size_t) (cols * blk * mats), 0.0), counts(mats, 0) {}

std::vector<double> Covariance::dense(int64_t m) const {
    std::vector<double> h((size_t) (n_cols * n_cols), 0.0);
    const double * v = values.data() + m * n_cols * block;
    for (int64_t i = 0; i < n_cols; ++i) {
        const int64_t s = block_start(i);
        for (int64_t k = 0; k < block; ++k) {
            h[i * n_cols + s + k] = v[i * block + k];
        }
    }
    return h;
}

void Covariance::add(int64_t m, const float * columns, int64_t n_rows, int threads) {
    if (n_rows == 0) {
        return;
    }
    double * v = values.data() + m * n_cols * block;
    // the upper triangle of each kept block, rows dealt round-robin (row i holds block − (i − start) entries)
    auto work = [&](int tid, int n_threads) {
        for (int64_t i = tid; i < n_cols; i += n_threads) {
            const int64_t s = block_start(i);
            const float * xi = columns + i * n_rows;
            for (int64_t j = i; j < s + block; ++j) {
                v[i * block + (j - s)] += (double) dot<8>(xi, columns + j * n_rows, n_rows);
            }
        }
    };
    const int n_threads = std::max(1, std::min<int>(threads, (int) (n_cols / 64) + 1));
    std::vector<std::thread> pool;
    for (int t = 1; t < n_threads; ++t) {
        pool.emplace_back(work, t, n_threads);
    }
    work(0, n_threads);
    for (auto & th : pool) {
        th.join();
    }
    // mirror: H(j, i) = H(i, j), both in the block that starts at s
    for (int64_t i = 0; i < n_cols; ++i) {
        const int64_t s = block_start(i);
        for (int64_t j = i + 1; j < s + block; ++j) {
            v[j * block + (i - s)] = v[i * block + (j - s)];
        }
    }
}

int64_t choose_covariance_block(int64_t n_cols, int64_t n_mat, uint64_t budget_left, bool blocks_only) {
    constexpr int64_t kSuperBlock = 256;
    const bool blocks_possible = n_cols % kSuperBlock == 0 && n_cols > kSuperBlock;
    if (!(blocks_only && blocks_possible) && covariance_bytes(n_cols, n_cols, n_mat) <= budget_left) {
        return n_cols;
    }
    if (n_cols % kSuperBlock == 0 && covariance_bytes(n_cols, kSuperBlock, n_mat) <= budget_left) {
        return kSuperBlock;
    }
    return 0;
}

void add_covariance(Covariance & into, const Covariance & other, const std::string & what) {
    const std::string name = into.readers.empty() ? "?" : into.readers[0];
    if (into.readers != other.readers || into.n_cols != other.n_cols || into.block != other.block ||
        into.n_mat != other.n_mat || into.values.size() != other.values.size() ||
        into.counts.size() != other.counts.size()) {
        throw Error(what + ": the covariance of the input of " + name + " has another shape or layout (" +
                    std::to_string(other.n_cols) + " columns in blocks of " + std::to_string(other.block) + ", " +
                    std::to_string(other.n_mat) + " matrices) than in the files before it (" +
                    std::to_string(into.n_cols) + ", " + std::to_string(into.block) + ", " +
                    std::to_string(into.n_mat) + ")");
    }
    for (size_t i = 0; i < into.values.size(); ++i) {
        into.values[i] += other.values[i];
    }
    for (size_t i = 0; i < into.counts.size(); ++i) {
        into.counts[i] += other.counts[i];
    }
}

}  // namespace imx
