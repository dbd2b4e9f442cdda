#include "core/math/covariance.h"

#include "core/error.h"

#include <cblas.h>

#include <algorithm>

namespace imx {

namespace {

// v (n_cols × width, row-major, double) += Aᵀ·B over n_rows tokens, A's rows n_cols wide (stride a_stride) and B's
// width wide (stride b_stride): in panels of 512 of A's columns, each a float product added into double — a
// bounded scratch of 512 × width floats, not n_cols × width.
void add_products(double * v, const float * a, int64_t a_stride, const float * b, int64_t b_stride, int64_t n_rows,
                  int64_t n_cols, int64_t width) {
    constexpr int64_t kPanel = 512;
    std::vector<float> panel((size_t) (std::min(kPanel, n_cols) * width));
    for (int64_t p = 0; p < n_cols; p += kPanel) {
        const int64_t pe = std::min(p + kPanel, n_cols);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int) (pe - p), (int) width, (int) n_rows, 1.0f, a + p,
                    (int) a_stride, b, (int) b_stride, 0.0f, panel.data(), (int) width);
        for (int64_t i = 0; i < (pe - p) * width; ++i) {
            v[p * width + i] += (double) panel[i];
        }
    }
}

}  // namespace

Covariance::Covariance(int64_t cols, int64_t blk, int64_t mats)
    : n_cols(cols), block(blk), n_mat(mats), values((size_t) (cols * blk * mats), 0.0), counts(mats, 0) {}

std::vector<double> Covariance::dense(int64_t m) const {
    std::vector<double> h((size_t) (n_cols * n_cols), 0.0);
    const double * v = values.data() + m * n_cols * block;
    for (int64_t i = 0; i < n_cols; ++i) {
        const int64_t s = block_start(i);
        for (int64_t j = i; j < s + block; ++j) {  // the upper triangle, which add() keeps current
            h[i * n_cols + j] = h[j * n_cols + i] = v[i * block + (j - s)];
        }
    }
    return h;
}

void Covariance::add(int64_t m, const float * rows, int64_t n_rows, int64_t row_stride) {
    if (n_rows == 0) {
        return;
    }
    double * v = values.data() + m * n_cols * block;
    // Per kept diagonal block, panels of up to 512 rows of XᵀX: P = X[:, p:pe]ᵀ · X[:, p:end] (upper part and
    // the panel's own square), added into double; a bounded scratch (512 × block floats), not n².
    constexpr int64_t kPanel = 512;
    std::vector<float> panel((size_t) (std::min(kPanel, block) * block));
    for (int64_t s = 0; s < n_cols; s += block) {
        const int64_t end = s + block;
        for (int64_t p = s; p < end; p += kPanel) {
            const int64_t pe = std::min(p + kPanel, end), width = end - p;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int) (pe - p), (int) width, (int) n_rows, 1.0f,
                        rows + p, (int) row_stride, rows + p, (int) row_stride, 0.0f, panel.data(), (int) width);
            for (int64_t i = p; i < pe; ++i) {
                const float * src = panel.data() + (i - p) * width + (i - p);
                double * dst = v + i * block + (i - s);
                for (int64_t j = 0; j < end - i; ++j) {
                    dst[j] += (double) src[j];
                }
            }
        }
    }
}

void Covariance::add_cross(int64_t m, const float * rows, const float * target_rows, int64_t n_rows,
                           int64_t row_stride) {
    if (!full()) {
        throw Error("the cross covariance of the input of " + (readers.empty() ? std::string("?") : readers[0]) +
                    " needs the whole matrix, not blocks of " + std::to_string(block));
    }
    if (cross.empty()) {
        cross.assign(values.size(), 0.0);
    }
    if (n_rows == 0) {
        return;
    }
    add_products(cross.data() + m * n_cols * n_cols, rows, row_stride, target_rows, row_stride, n_rows, n_cols, n_cols);
}

void Covariance::add_cross_output(int64_t m, const float * rows, const float * outputs, int64_t n_rows,
                                  int64_t row_stride, int64_t rows_out) {
    if (!full()) {
        throw Error("the cross term of the input of " + (readers.empty() ? std::string("?") : readers[0]) +
                    " needs the whole matrix, not blocks of " + std::to_string(block));
    }
    if (cross_out.empty()) {
        out_rows = rows_out;
        cross_out.assign((size_t) (n_mat * n_cols * out_rows), 0.0);
    }
    if (rows_out != out_rows) {
        throw Error("the target model's output of " + (readers.empty() ? std::string("?") : readers[0]) + " is " +
                    std::to_string(rows_out) + " wide here, " + std::to_string(out_rows) + " before");
    }
    if (n_rows == 0) {
        return;
    }
    add_products(cross_out.data() + m * n_cols * out_rows, rows, row_stride, outputs, out_rows, n_rows, n_cols, out_rows);
}

void Covariance::symmetrize() {
    // H(j, i) = H(i, j) below each block's diagonal, in tiles (cache-friendly)
    constexpr int64_t kTile = 64;
    for (int64_t m = 0; m < n_mat; ++m) {
        double * v = values.data() + m * n_cols * block;
        for (int64_t s = 0; s < n_cols; s += block) {
            const int64_t end = s + block;
            for (int64_t ti = s; ti < end; ti += kTile) {
                for (int64_t tj = ti; tj < end; tj += kTile) {
                    for (int64_t i = ti; i < std::min(ti + kTile, end); ++i) {
                        for (int64_t j = std::max(tj, i + 1); j < std::min(tj + kTile, end); ++j) {
                            v[j * block + (i - s)] = v[i * block + (j - s)];
                        }
                    }
                }
            }
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

CovarianceLayout choose_covariance_layout(int64_t n_cols, int64_t n_mat, uint64_t budget_left, bool blocks_only,
                                          bool pool_experts) {
    if (!(pool_experts && n_mat > 1)) {
        if (const int64_t block = choose_covariance_block(n_cols, n_mat, budget_left, blocks_only); block > 0) {
            return {block, false};
        }
    }
    if (n_mat > 1) {
        return {choose_covariance_block(n_cols, 1, budget_left, blocks_only), true};
    }
    return {};
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
    if (into.cross.size() != other.cross.size()) {
        into.cross.clear();  // a cross term over part of the text only would not match H
    }
    for (size_t i = 0; i < into.cross.size(); ++i) {
        into.cross[i] += other.cross[i];
    }
    if (into.cross_out.size() != other.cross_out.size() || into.out_rows != other.out_rows) {
        into.cross_out.clear();
        into.out_rows = 0;
    }
    for (size_t i = 0; i < into.cross_out.size(); ++i) {
        into.cross_out[i] += other.cross_out[i];
    }
}

}  // namespace imx
