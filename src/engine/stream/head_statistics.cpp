#include "engine/stream/head_statistics.h"

#include "core/error.h"
#include "core/math/covariance.h"

#include "gguf.h"

#include <cmath>
#include <vector>

namespace imx::engine {

namespace {

// output_norm as libllama applies it before the head: y = x·(1/√(mean(x²) + ε))·g.
class FinalNorm {
public:
    FinalNorm(const TensorTable & model, TensorIo & io) {
        const ggml_tensor * t = model.find("output_norm.weight");
        const std::string arch = gguf_get_val_str(model.metadata(), gguf_find_key(model.metadata(), "general.architecture"));
        const int64_t k = gguf_find_key(model.metadata(), (arch + ".attention.layer_norm_rms_epsilon").c_str());
        if (!t || t->ne[1] != 1 || k < 0 || model.find("output_norm.bias")) {
            throw Error(model.path() + ": the output head's input needs an RMS output_norm (" + arch +
                        " has none this path knows)");
        }
        eps_ = gguf_get_val_f32(model.metadata(), k);
        g_.resize((size_t) t->ne[0]);
        const std::vector<uint8_t> bytes = io.read("output_norm.weight", 0, ggml_nbytes(t));
        to_float(t->type, bytes.data(), g_.data(), t->ne[0]);
    }
    size_t n() const { return g_.size(); }
    // `rows` hidden states of n() floats in place → the head's inputs
    void apply(float * x, size_t rows) const {
        const size_t n = g_.size();
        for (size_t r = 0; r < rows; ++r) {
            float * v = x + r * n;
            double sum = 0.0;  // ggml_float
            for (size_t i = 0; i < n; ++i) {
                sum += (double) (v[i] * v[i]);
            }
            const float mean = (float) (sum / (double) n);
            const float scale = 1.0f / std::sqrt(mean + eps_);
            for (size_t i = 0; i < n; ++i) {
                v[i] = (v[i] * scale) * g_[i];
            }
        }
    }

private:
    std::vector<float> g_;
    float              eps_ = 0;
};

}  // namespace

bool has_output_head(const TensorTable & model) {
    return model.find(kOutputHead) != nullptr;
}

std::string head_weight(const TensorTable & model) {
    return has_output_head(model) ? kOutputHead : kTokenEmbedding;
}

void add_lookup_term(Imatrix & head) {
    Covariance & c = head.covariances.at(0);
    if (!c.full()) {
        throw Error("a tied head's objective needs its whole covariance");
    }
    const int64_t n = c.n_cols;
    double trace = 0;
    for (int64_t i = 0; i < n; ++i) {
        trace += c.values[(size_t) (i * n + i)];
    }
    const double add = trace / (double) n;
    for (int64_t i = 0; i < n; ++i) {
        c.values[(size_t) (i * n + i)] += add;
        if (!c.cross.empty()) {
            c.cross[(size_t) (i * n + i)] += add;
        }
    }
    for (double & v : head.tensors.at(c.readers.at(0)).sums) {
        v += add;
    }
}

Imatrix head_statistics(const TensorTable & model, TensorIo & io, const HiddenStates & last, int64_t covariance_block,
                        const HiddenStates * quantized) {
    const FinalNorm norm(model, io);
    const int64_t n = (int64_t) norm.n();
    TensorStats stats;
    stats.sums.assign((size_t) n, 0.0);
    stats.counts.assign(1, 0);
    Covariance cov;
    if (quantized && covariance_block != n) {
        throw Error("the output head's cross term needs its whole covariance");
    }
    if (covariance_block > 0) {
        cov = Covariance(n, covariance_block, 1);
        cov.readers = {head_weight(model)};
    }
    std::vector<float> x, xq;
    for (size_t c = 0; c < last.chunks(); ++c) {
        last.read(c, x);
        const int64_t rows = (int64_t) x.size() / n;
        norm.apply(x.data(), (size_t) rows);
        const std::vector<float> * seen = &x;  // the inputs the head multiplies: the quantized stream's, if given
        if (quantized) {
            quantized->read(c, xq);
            norm.apply(xq.data(), (size_t) rows);
            seen = &xq;
        }
        for (int64_t r = 0; r < rows; ++r) {
            for (int64_t i = 0; i < n; ++i) {
                const float v = (*seen)[(size_t) (r * n + i)];
                stats.sums[(size_t) i] += (double) (v * v);
            }
        }
        stats.counts[0] += rows;
        if (!cov.values.empty()) {
            cov.add(0, seen->data(), rows, n);
            cov.counts[0] += rows;
            if (quantized) {
                cov.add_cross(0, xq.data(), x.data(), rows, n);
            }
        }
    }
    Imatrix out;
    out.tensors[head_weight(model)] = std::move(stats);
    if (!cov.values.empty()) {
        cov.symmetrize();
        out.covariances.push_back(std::move(cov));
    }
    return out;
}

}  // namespace imx::engine
