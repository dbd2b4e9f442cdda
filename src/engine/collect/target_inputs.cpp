#include "engine/collect/target_inputs.h"

#include "engine/collect/graph_nodes.h"

#include "ggml-backend.h"
#include "ggml.h"

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
    last_input_ = last_ids_ = nullptr;
    last_.reset();
}

const TargetInputs::Input * TargetInputs::find(const std::string & weight) const {
    const auto it = inputs_.find(weight);
    return it == inputs_.end() ? nullptr : it->second.get();
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
    const ggml_tensor * x = t->src[1];
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
    const ggml_tensor * ids = t->op == GGML_OP_MUL_MAT_ID ? t->src[2] : nullptr;
    if (ids) {
        in->n_used = ids->ne[0];
        read_expert_ids(ids, copy_, in->ids);
    }
    last_recorded_ = weight_name(t->src[0]->name);
    inputs_[last_recorded_] = in;
    last_ = in;
    last_input_ = x;
    last_ids_ = ids;
    return !stop_after_last_ || last_recorded_ != final_;
}

}  // namespace imx::engine
