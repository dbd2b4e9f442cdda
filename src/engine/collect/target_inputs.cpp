#include "engine/collect/target_inputs.h"

#include "core/error.h"
#include "engine/collect/graph_nodes.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <algorithm>
#include <cstring>

namespace imx::engine {

bool TargetInputs::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<TargetInputs *>(user_data);
    if (ask) {
        return self->wants(t);
    }
    return self->record(t);
}

void TargetInputs::begin_chunk() {
    if (!last_recorded_.empty()) {
        final_ = last_recorded_;
    }
    inputs_.clear();
    outputs_.clear();
    last_input_ = last_ids_ = nullptr;
    last_.reset();
}

const TargetInputs::Input * TargetInputs::find(const std::string & weight) const {
    const auto it = inputs_.find(weight);
    return it == inputs_.end() ? nullptr : it->second.get();
}

const TargetInputs::Input * TargetInputs::find_output(const std::string & weight) const {
    const auto it = outputs_.find(weight);
    return it == outputs_.end() ? nullptr : it->second.get();
}

// The matmuls the collector takes (collected_weight); a reader of the input just recorded shares it.
bool TargetInputs::wants(const ggml_tensor * t) {
    const std::string name = collected_weight(t, output_head_, only_);
    if (name.empty()) {
        return false;
    }
    const ggml_tensor * ids = t->op == GGML_OP_MUL_MAT_ID ? t->src[2] : nullptr;
    if (last_ && t->src[1] == last_input_ && ids == last_ids_) {
        inputs_[name] = last_;
        return false;
    }
    return true;
}

bool TargetInputs::record(const ggml_tensor * t) {
    const std::string name = weight_name(t->src[0]->name);
    const ggml_tensor * w = t->src[0];  // fewer rows than columns: the output is the smaller, and so is X̃ᵀY
    const bool output = outputs_of_ && t->op == GGML_OP_MUL_MAT && w->ne[2] == 1 && w->ne[3] == 1 &&
                        w->ne[1] < w->ne[0] && std::regex_search(name, *outputs_of_);
    const ggml_tensor * x = output ? t : t->src[1];
    auto in = std::make_shared<Input>();
    for (int d = 0; d < 4; ++d) {
        in->ne[d] = x->ne[d];
    }
    copy_.resize(ggml_nbytes(x));
    ggml_backend_tensor_get(x, copy_.data(), 0, copy_.size());
    in->rows.resize((size_t) ggml_nelements(x));
    for (int64_t i3 = 0; i3 < x->ne[3]; ++i3) {
        for (int64_t i2 = 0; i2 < x->ne[2]; ++i2) {
            for (int64_t i1 = 0; i1 < x->ne[1]; ++i1) {
                std::memcpy((float *) in->row(i1, i2, i3), copy_.data() + i1 * x->nb[1] + i2 * x->nb[2] + i3 * x->nb[3],
                            (size_t) x->ne[0] * sizeof(float));
            }
        }
    }
    last_recorded_ = name;
    if (output) {
        outputs_[name] = in;
        last_.reset();  // nothing for a later reader of the same input to share
        last_input_ = last_ids_ = nullptr;
        return !stop_after_last_ || last_recorded_ != final_;
    }
    const ggml_tensor * ids = t->op == GGML_OP_MUL_MAT_ID ? t->src[2] : nullptr;
    if (ids) {
        in->n_used = ids->ne[0];
        read_expert_ids(ids, copy_, in->ids);
    }
    inputs_[name] = in;
    last_ = in;
    last_input_ = x;
    last_ids_ = ids;
    return !stop_after_last_ || last_recorded_ != final_;
}

namespace {

void put(std::FILE * f, const std::string & path, const void * p, size_t bytes) {
    if (bytes && std::fwrite(p, 1, bytes, f) != bytes) {
        throw Error(path + ": cannot write the recorded inputs (disk full?)");
    }
}

void get(std::FILE * f, const std::string & path, void * p, size_t bytes) {
    if (bytes && std::fread(p, 1, bytes, f) != bytes) {
        throw Error(path + ": the recorded inputs end early");
    }
}

template <class T> void put_vector(std::FILE * f, const std::string & path, const std::vector<T> & v) {
    const uint64_t n = v.size();
    put(f, path, &n, sizeof n);
    put(f, path, v.data(), n * sizeof(T));
}

template <class T> void get_vector(std::FILE * f, const std::string & path, std::vector<T> & v) {
    uint64_t n = 0;
    get(f, path, &n, sizeof n);
    v.resize(n);
    get(f, path, v.data(), n * sizeof(T));
}

template <class T> void skip_vector(std::FILE * f, const std::string & path) {
    uint64_t n = 0;
    get(f, path, &n, sizeof n);
    if (n && std::fseek(f, (long) (n * sizeof(T)), SEEK_CUR) != 0) {
        throw Error(path + ": the recorded inputs end early");
    }
}

}  // namespace

// Per input: the names of the weights reading it, its shape, its rows, its expert ids.
void TargetInputs::save(std::FILE * f, const std::string & path) const {
    std::map<const Input *, std::vector<std::string>> readers;
    std::vector<const Input *> order;
    for (const auto & [name, in] : inputs_) {
        if (readers[in.get()].empty()) {
            order.push_back(in.get());
        }
        readers[in.get()].push_back(name);
    }
    const uint64_t n = order.size();
    put(f, path, &n, sizeof n);
    for (const Input * in : order) {
        const uint64_t names = readers[in].size();
        put(f, path, &names, sizeof names);
        for (const std::string & name : readers[in]) {
            put_vector(f, path, std::vector<char>(name.begin(), name.end()));
        }
        put(f, path, in->ne, sizeof in->ne);
        put(f, path, &in->n_used, sizeof in->n_used);
        put_vector(f, path, in->rows);
        put_vector(f, path, in->ids);
    }
    const uint64_t outputs = outputs_.size();
    put(f, path, &outputs, sizeof outputs);
    for (const auto & [name, out] : outputs_) {
        put_vector(f, path, std::vector<char>(name.begin(), name.end()));
        put(f, path, out->ne, sizeof out->ne);
        put_vector(f, path, out->rows);
    }
}

void TargetInputs::load(std::FILE * f, const std::string & path) {
    begin_chunk();
    uint64_t n = 0;
    get(f, path, &n, sizeof n);
    for (uint64_t i = 0; i < n; ++i) {
        uint64_t names = 0;
        get(f, path, &names, sizeof names);
        std::vector<std::string> readers;
        for (uint64_t k = 0; k < names; ++k) {
            std::vector<char> name;
            get_vector(f, path, name);
            readers.emplace_back(name.begin(), name.end());
        }
        auto in = std::make_shared<Input>();
        get(f, path, in->ne, sizeof in->ne);
        get(f, path, &in->n_used, sizeof in->n_used);
        // an input none of whose readers `only` takes is stepped over (a stage's pass reads its own inputs)
        if (std::none_of(readers.begin(), readers.end(), [&](const std::string & r) { return std::regex_search(r, only_); })) {
            skip_vector<float>(f, path);
            skip_vector<int32_t>(f, path);
            continue;
        }
        get_vector(f, path, in->rows);
        get_vector(f, path, in->ids);
        for (const std::string & name : readers) {
            inputs_[name] = in;
        }
    }
    uint64_t outputs = 0;
    get(f, path, &outputs, sizeof outputs);
    for (uint64_t i = 0; i < outputs; ++i) {
        std::vector<char> name;
        get_vector(f, path, name);
        auto out = std::make_shared<Input>();
        get(f, path, out->ne, sizeof out->ne);
        const std::string weight(name.begin(), name.end());
        if (!std::regex_search(weight, only_)) {
            skip_vector<float>(f, path);
            continue;
        }
        get_vector(f, path, out->rows);
        outputs_[weight] = out;
    }
}

}  // namespace imx::engine
