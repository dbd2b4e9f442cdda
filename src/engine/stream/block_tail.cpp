#include "engine/stream/block_tail.h"

#include "core/error.h"
#include "core/interrupt.h"
#include "engine/collect/graph_nodes.h"
#include "engine/stream/block_runner.h"
#include "engine/stream/hidden_states.h"

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <cstring>
#include <memory>

namespace imx::engine {

namespace {

bool plain_rows(const ggml_tensor * t) {
    return t->type == GGML_TYPE_F32 && ggml_is_contiguous(t) && t->ne[2] == 1 && t->ne[3] == 1 && t->name[0] != '\0';
}

}  // namespace

bool BlockTailFinder::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<BlockTailFinder *>(user_data);
    if (!ask || self->seen_output_ || std::strcmp(t->name, kBlockOutputNode) != 0) {
        return false;
    }
    self->seen_output_ = true;  // the first graph's; later ones are the same block
    if (t->op != GGML_OP_ADD) {
        return false;
    }
    for (int k = 0; k < 2; ++k) {
        const ggml_tensor * mm = t->src[k];
        const ggml_tensor * r = t->src[1 - k];
        if (mm->op != GGML_OP_MUL_MAT || mm->src[0]->op != GGML_OP_NONE || !ggml_are_same_shape(mm, t) ||
            !ggml_are_same_shape(r, t) || !plain_rows(mm->src[1]) || !plain_rows(r) ||
            std::strcmp(mm->src[1]->name, r->name) == 0) {
            continue;
        }
        const std::string w = weight_name(mm->src[0]->name);
        if (w.rfind("blk.0.", 0) == 0) {
            self->tail_ = {w, mm->src[1]->name, r->name, mm->src[1]->ne[0], r->ne[0]};
        }
    }
    return false;
}

struct TailRecorder::Files {
    ScratchFile  x_file, r_file;
    HiddenStates x, r;
    Files(const std::string & base, const std::vector<size_t> & tokens, const BlockTail & t)
        : x_file(base + ".tail-x"), r_file(base + ".tail-r"), x(x_file.path(), tokens, (size_t) t.input_width),
          r(r_file.path(), tokens, (size_t) t.width) {}
};

TailRecorder::TailRecorder(const BlockTail & tail, const std::string & scratch, const std::vector<size_t> & tokens)
    : tail_(tail), tokens_(tokens), files_(std::make_unique<Files>(scratch, tokens, tail)) {}

TailRecorder::~TailRecorder() = default;

void TailRecorder::begin_chunk(size_t chunk) {
    complete_ = complete_ && (chunk == 0 || got_ == 3);
    chunk_ = chunk;
    got_ = 0;
}

bool TailRecorder::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<TailRecorder *>(user_data);
    const bool input = self->tail_.input == t->name, residual = self->tail_.residual == t->name;
    if (ask || (!input && !residual)) {
        return input || residual;
    }
    const int64_t width = input ? self->tail_.input_width : self->tail_.width;
    if (!plain_rows(t) || t->ne[0] != width || (size_t) t->ne[1] != self->tokens_[self->chunk_]) {
        self->complete_ = false;  // not the node the float graph had: the block is run instead
        return true;
    }
    std::vector<float> values((size_t) ggml_nelements(t));
    ggml_backend_tensor_get(t, values.data(), 0, ggml_nbytes(t));
    (input ? self->files_->x : self->files_->r).write(self->chunk_, values.data());
    self->got_ |= input ? 1 : 2;
    return true;
}

void TailRecorder::output(size_t chunk, const TensorBytes & w, int threads, std::vector<float> & out) const {
    if (!complete()) {
        throw Error("the block's tail was not recorded for every chunk");
    }
    const int64_t n = tail_.input_width, rows = tail_.width, tokens = (int64_t) tokens_[chunk];
    if (w.bytes.size() != ggml_row_size(w.type, n) * (size_t) rows) {
        throw Error(tail_.weight + ": " + std::to_string(w.bytes.size()) + " bytes, not " + std::to_string(rows) +
                    " rows of " + std::to_string(n));
    }
    std::vector<float> x, r, product((size_t) (rows * tokens));
    files_->x.read(chunk, x);
    files_->r.read(chunk, r);
    out.resize(product.size());
    // the block graph's two operations, l_out = ADD(MUL_MAT(W, X), R), on tensors over these buffers
    std::unique_ptr<ggml_context, decltype(&ggml_free)> ctx(
        ggml_init({ggml_tensor_overhead() * 8 + ggml_graph_overhead(), nullptr, true}), &ggml_free);
    ggml_tensor * wt = ggml_new_tensor_2d(ctx.get(), w.type, n, rows);
    ggml_tensor * xt = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, n, tokens);
    ggml_tensor * rt = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, rows, tokens);
    ggml_tensor * mm = ggml_mul_mat(ctx.get(), wt, xt);
    ggml_tensor * sum = ggml_add(ctx.get(), mm, rt);
    wt->data = const_cast<uint8_t *>(w.bytes.data());
    xt->data = x.data();
    rt->data = r.data();
    mm->data = product.data();
    sum->data = out.data();
    ggml_cgraph * graph = ggml_new_graph(ctx.get());
    ggml_build_forward_expand(graph, sum);
    ggml_cplan plan = ggml_graph_plan(graph, threads, nullptr);
    std::vector<uint8_t> work(plan.work_size);
    plan.work_data = work.data();
    if (ggml_graph_compute(graph, &plan) != GGML_STATUS_SUCCESS) {
        throw Error(tail_.weight + ": ggml could not compute the block's output (chunk " + std::to_string(chunk) + ")");
    }
}

}  // namespace imx::engine
