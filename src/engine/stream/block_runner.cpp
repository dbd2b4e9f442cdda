#include "engine/stream/block_runner.h"

#include "core/error.h"

#include "ggml.h"

#include <algorithm>
#include <cstring>

namespace imx::engine {

BlockRunner::BlockRunner(const std::string & block_file, uint32_t chunk_tokens, int threads, int n_gpu_layers,
                         ggml_backend_sched_eval_callback inner, void * inner_data)
    : path_(block_file), tokens_(chunk_tokens), inner_(inner), inner_data_(inner_data) {
    model_ = load_model(block_file, {n_gpu_layers, 0});
    n_embd_ = llama_model_n_embd(model_.get());
    llama_context_params cp = chunk_context_params(chunk_tokens, threads);
    cp.cb_eval = eval_callback;
    cp.cb_eval_user_data = this;
    ctx_.reset(llama_init_from_model(model_.get(), cp));
    if (!ctx_) {
        throw Error(block_file + ": could not create a context of " + std::to_string(chunk_tokens) + " tokens");
    }
    batch_ = llama_batch_init((int32_t) chunk_tokens, (int32_t) n_embd_, 1);
}

BlockRunner::~BlockRunner() { llama_batch_free(batch_); }

bool BlockRunner::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<BlockRunner *>(user_data);
    const bool output = std::strcmp(t->name, kBlockOutputNode) == 0;
    if (ask) {  // the inner callback sees the output node asked about too (BlockGraph copies it)
        const bool inner_wants = self->inner_ && self->inner_(t, true, self->inner_data_);
        return output || inner_wants;
    }
    if (output) {
        self->out_->resize((size_t) ggml_nelements(t));
        ggml_backend_tensor_get(t, self->out_->data(), 0, ggml_nbytes(t));
        self->got_out_ = true;
        return false;  // the block is done; what follows is the output head
    }
    const bool go_on = !self->inner_ || self->inner_(t, false, self->inner_data_);
    self->inner_stopped_ = self->inner_stopped_ || !go_on;
    return go_on;
}

bool BlockRunner::run(const std::vector<float> & in, std::vector<float> & out, uint32_t chunk) {
    const size_t n = in.size() / (size_t) n_embd_;
    if (n == 0 || n > tokens_ || n * (size_t) n_embd_ != in.size()) {
        throw Error(path_ + ": chunk " + std::to_string(chunk) + " has " + std::to_string(in.size()) +
                    " values, not tokens × " + std::to_string(n_embd_));
    }
    batch_.n_tokens = (int32_t) n;
    std::copy(in.begin(), in.end(), batch_.embd);
    for (size_t k = 0; k < n; ++k) {
        batch_.pos[k] = (llama_pos) k;
        batch_.n_seq_id[k] = 1;
        batch_.seq_id[k][0] = 0;
        batch_.logits[k] = 1;  // every token an output: the block's FFN runs for all of them
    }
    llama_memory_clear(llama_get_memory(ctx_.get()), true);
    out_ = &out;
    got_out_ = false;
    inner_stopped_ = false;
    const int32_t rc = llama_decode(ctx_.get(), batch_);
    if (rc != 0) {
        throw Error(path_ + ": llama_decode failed (" + std::to_string(rc) + ") at chunk " + std::to_string(chunk));
    }
    if (inner_stopped_) {
        return false;
    }
    if (!got_out_) {
        throw Error(path_ + ": the graph has no node " + kBlockOutputNode + " (chunk " + std::to_string(chunk) +
                    "): this architecture names its blocks' outputs otherwise");
    }
    return true;
}

BlockWeights fastest_block_weights(int n_gpu_layers) {
    const bool gpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU) || ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_IGPU);
    return n_gpu_layers == 0 || !gpu ? BlockWeights::f16 : BlockWeights::as_given;
}

bool EvalChain::callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<EvalChain *>(user_data);
    if (ask) {
        // ggml's scheduler asks about a node and, if wanted, computes up to it and calls back for it before it
        // asks about the next one: one node's answers are kept
        self->asked_node_ = t;
        self->wanted_.assign(self->links_.size(), false);
        bool any = false;
        for (size_t i = 0; i < self->links_.size(); ++i) {
            self->wanted_[i] = self->links_[i].cb(t, true, self->links_[i].data);
            any = any || self->wanted_[i];
        }
        return any;
    }
    bool go_on = true;
    for (size_t i = 0; i < self->links_.size(); ++i) {
        if (t == self->asked_node_ && self->wanted_[i]) {
            go_on = self->links_[i].cb(t, false, self->links_[i].data) && go_on;
        }
    }
    return go_on;
}

}  // namespace imx::engine
