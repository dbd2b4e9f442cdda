#include "engine/stream/block_replay.h"

#include "core/error.h"
#include "core/interrupt.h"
#include "engine/collect/graph_nodes.h"
#include "engine/stream/block_runner.h"

#include "ggml-cpu.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>
#include <optional>
#include <set>

namespace imx::engine {

namespace {

bool is_matmul(const ggml_tensor & t) { return t.op == GGML_OP_MUL_MAT || t.op == GGML_OP_MUL_MAT_ID; }

// strides as ggml lays out a new tensor of this type and shape
bool laid_out_fresh(const ggml_tensor & t) {
    size_t nb = ggml_type_size(t.type);
    if (t.nb[0] != nb) {
        return false;
    }
    nb = ggml_row_size(t.type, t.ne[0]);
    for (int d = 1; d < GGML_MAX_DIMS; ++d) {
        if (t.nb[d] != nb) {
            return false;
        }
        nb *= (size_t) t.ne[d];
    }
    return true;
}

}  // namespace

// ---- the graph ----

int BlockGraph::add(const ggml_tensor * t, bool asked) {
    if (const auto it = index_.find(t); it != index_.end()) {
        return it->second;
    }
    Tensor x;
    x.copy = *t;
    std::fill(std::begin(x.copy.src), std::end(x.copy.src), nullptr);
    x.copy.view_src = nullptr;
    x.copy.data = nullptr;
    x.copy.buffer = nullptr;
    x.copy.extra = nullptr;
    std::fill(std::begin(x.src), std::end(x.src), -1);
    if (asked) {
        x.kind = Kind::node;
        for (int s = 0; s < GGML_MAX_SRC; ++s) {
            x.src[s] = t->src[s] ? add(t->src[s], false) : -1;
        }
        x.view_src = t->view_src ? add(t->view_src, false) : -1;
    } else if (t->op == GGML_OP_NONE && weight_name(t->name).rfind("blk.0.", 0) == 0) {
        x.kind = Kind::weight;
        x.weight = weight_name(t->name);
    } else if (t->op == GGML_OP_NONE && (t->flags & GGML_TENSOR_FLAG_INPUT) && t->type == GGML_TYPE_F32 &&
               (std::strcmp(t->name, "embd") == 0 || std::strcmp(t->name, "inp_embd") == 0)) {
        x.kind = Kind::input;  // llama.cpp's build_inp_embd names it inp_embd, then embd
    } else if (t->op == GGML_OP_NONE && (t->flags & GGML_TENSOR_FLAG_INPUT) && t->type == GGML_TYPE_I32 &&
               ggml_n_dims(t) == 1 && std::strcmp(t->name, "out_ids") == 0) {
        x.kind = Kind::out_ids;
    } else {
        x.kind = Kind::other;  // set by libllama (cache, positions, mask) or a node never asked about
    }
    tensors_.push_back(std::move(x));
    index_.emplace(t, (int) tensors_.size() - 1);
    return (int) tensors_.size() - 1;
}

bool BlockGraph::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<BlockGraph *>(user_data);
    if (!ask || self->done_) {
        return false;
    }
    const int i = self->add(t, true);
    if (std::strcmp(t->name, kBlockOutputNode) == 0) {
        self->output_ = i;
        self->done_ = true;  // the first graph's; later ones are the same block
    }
    return false;
}

// ---- the plan ----

ReplayPlan plan_replays(const BlockGraph & g, const std::vector<std::vector<std::string>> & stages) {
    using Kind = BlockGraph::Kind;
    const std::vector<BlockGraph::Tensor> & ts = g.tensors();
    const int n_stages = (int) stages.size();
    std::map<std::string, int> stage_of;
    for (int k = 0; k < n_stages; ++k) {
        for (const std::string & w : stages[k]) {
            stage_of[w] = k;
        }
    }
    const auto srcs_of = [&](int i) {
        std::vector<int> s;
        for (int j : ts[i].src) {
            if (j >= 0) {
                s.push_back(j);
            }
        }
        if (ts[i].view_src >= 0) {
            s.push_back(ts[i].view_src);
        }
        return s;
    };
    // late[i]: the last stage whose weights node i depends on (−1: none); a node that reads what libllama sets (the
    // KV cache, stored into earlier in the graph) depends on every weight multiplied before it
    std::vector<int> late(ts.size(), -1);
    std::vector<bool> reads_other(ts.size(), false);
    std::vector<std::vector<int>> targets(n_stages);
    std::vector<std::set<std::string>> targeted(n_stages);
    int multiplied = -1;
    for (size_t i = 0; i < ts.size(); ++i) {
        const BlockGraph::Tensor & x = ts[i];
        if (x.kind == Kind::weight) {
            const auto it = stage_of.find(x.weight);
            late[i] = it == stage_of.end() ? -1 : it->second;
        }
        reads_other[i] = x.kind == Kind::other;
        if (x.kind != Kind::node) {
            continue;
        }
        for (int s : srcs_of((int) i)) {
            late[i] = std::max(late[i], late[(size_t) s]);
            reads_other[i] = reads_other[i] || reads_other[(size_t) s];
        }
        if (reads_other[i]) {
            late[i] = std::max(late[i], multiplied);
        }
        if (is_matmul(x.copy) && x.src[0] >= 0 && ts[(size_t) x.src[0]].kind == Kind::weight) {
            const auto it = stage_of.find(ts[(size_t) x.src[0]].weight);
            if (it != stage_of.end()) {
                targets[(size_t) it->second].push_back((int) i);
                targeted[(size_t) it->second].insert(it->first);
                multiplied = std::max(multiplied, it->second);
            }
        }
    }

    ReplayPlan p;
    p.stages.resize((size_t) n_stages);
    p.keep.resize((size_t) n_stages);
    std::map<int, int> kept_from;  // node → the stage whose run keeps it
    for (int k = 0; k <= n_stages; ++k) {
        const bool output = k == n_stages;
        std::vector<int> roots;  // what the part computes: the inputs of stage k's matmuls, or the block's output
        std::set<int> gates;
        if (output) {
            if (g.output() < 0) {
                break;
            }
            roots.push_back(g.output());
        } else {
            for (int t : targets[(size_t) k]) {
                for (int s : srcs_of(t)) {
                    roots.push_back(s);
                }
            }
            // expert matmuls: the gate weights too, which the collector reads with their inputs (ActivationCollector::
            // weight_experts_by_gates), computed or kept
            const bool experts = std::any_of(targets[(size_t) k].begin(), targets[(size_t) k].end(),
                                             [&](int t) { return ts[(size_t) t].copy.op == GGML_OP_MUL_MAT_ID; });
            for (size_t i = 0; experts && i < ts.size(); ++i) {
                if (ts[i].kind == Kind::node && is_expert_gate_weights(ts[i].copy.name)) {
                    roots.push_back((int) i);
                    gates.insert((int) i);
                }
            }
        }
        std::set<int> compute, kept;
        bool ok = output || targeted[(size_t) k].size() == stages[(size_t) k].size();
        const std::function<void(int)> visit = [&](int i) {
            const BlockGraph::Tensor & x = ts[(size_t) i];
            if (!ok || compute.contains(i) || kept.contains(i) || x.kind == Kind::weight || x.kind == Kind::input ||
                x.kind == Kind::out_ids) {
                return;
            }
            if (x.kind == Kind::other || (x.view_src < 0 && !laid_out_fresh(x.copy))) {
                ok = false;
                return;
            }
            if (kept_from.contains(i)) {
                kept.insert(i);
                return;
            }
            compute.insert(i);
            for (int s : srcs_of(i)) {
                visit(s);
            }
        };
        for (int r : roots) {
            visit(r);
        }
        for (int i : compute) {  // a view reads its source's bytes as the graph laid them out
            const int v = ts[(size_t) i].view_src;
            ok = ok && !(v >= 0 && kept.contains(v) && ts[(size_t) v].view_src >= 0);
        }
        std::set<int> computed;  // what this stage's run computes, replayed or not
        if (ok) {
            GraphPart part;
            part.compute.assign(compute.begin(), compute.end());
            part.kept.assign(kept.begin(), kept.end());
            std::set<int> shown(compute);
            if (!output) {
                shown.insert(targets[(size_t) k].begin(), targets[(size_t) k].end());
                shown.insert(gates.begin(), gates.end());  // kept ones too: their values are loaded before the asks
            }
            part.shown.assign(shown.begin(), shown.end());
            for (int i : kept) {
                std::vector<int> & keep = p.keep[(size_t) kept_from[i]];
                if (std::find(keep.begin(), keep.end(), i) == keep.end()) {
                    keep.push_back(i);
                }
            }
            computed = compute;
            (output ? p.output : p.stages[(size_t) k]) = std::move(part);
        } else if (!output) {  // a run of the block: every node the stage's inputs depend on
            std::vector<int> todo = roots;
            while (!todo.empty()) {
                const int i = todo.back();
                todo.pop_back();
                if (ts[(size_t) i].kind == Kind::node && computed.insert(i).second) {
                    for (int s : srcs_of(i)) {
                        todo.push_back(s);
                    }
                }
            }
        }
        for (int i : computed) {
            const ggml_tensor & c = ts[(size_t) i].copy;
            if (!output && late[(size_t) i] < k && c.type == GGML_TYPE_F32 && ggml_is_contiguous(&c) &&
                !kept_from.contains(i)) {
                kept_from[i] = k;
            }
        }
    }
    for (std::vector<int> & keep : p.keep) {
        std::sort(keep.begin(), keep.end());
    }
    return p;
}

// ---- the values kept ----

// A node's values over every chunk: in memory while the block's kept values fit, else in a scratch file.
struct BlockReplay::Kept {
    size_t                       width;
    std::vector<float>           values;  // tokens × width, chunk after chunk
    std::unique_ptr<ScratchFile> file;
    std::optional<HiddenStates>  states;
    size_t                       got = 0;  // chunks, in order
    bool                         broken = false;
    Kept(const std::string & path, const std::vector<size_t> & tokens, size_t w, bool in_memory) : width(w) {
        if (in_memory) {
            values.resize(std::accumulate(tokens.begin(), tokens.end(), size_t{0}) * width);
        } else {
            file = std::make_unique<ScratchFile>(path);
            states.emplace(file->path(), tokens, width);
        }
    }
    // Every chunk has as many tokens here (replays need it): chunk c's values start at c · its size.
    void write(size_t chunk, const float * data, size_t n) {
        if (states) {
            states->write(chunk, data);
        } else {
            std::memcpy(values.data() + chunk * n, data, n * sizeof(float));
        }
    }
    void read(size_t chunk, float * out, size_t n) const {
        if (states) {
            states->read(chunk, out, n);
        } else {
            std::memcpy(out, values.data() + chunk * n, n * sizeof(float));
        }
    }
};

BlockReplay::BlockReplay(const BlockGraph & g, const std::vector<std::vector<std::string>> & stages,
                         const std::vector<size_t> & tokens, const std::string & scratch, bool cpu_f16,
                         uint64_t kept_in_memory)
    : graph_(g), tokens_(tokens), scratch_(scratch), kept_memory_(kept_in_memory) {
    const bool even = !tokens.empty() && std::all_of(tokens.begin(), tokens.end(), [&](size_t n) { return n == tokens[0]; });
    if (cpu_f16 && even && g.output() >= 0) {
        plan_ = plan_replays(g, stages);
    } else {
        plan_.stages.resize(stages.size());
        plan_.keep.resize(stages.size());
    }
    int position = 0;
    for (size_t i = 0; i < g.tensors().size(); ++i) {
        if (g.tensors()[i].kind == BlockGraph::Kind::node) {
            position_of_[(int) i] = position++;
        }
    }
}

BlockReplay::~BlockReplay() = default;

bool BlockReplay::complete(int node) const {
    const auto it = kept_.find(node);
    return it != kept_.end() && !it->second->broken && it->second->got == tokens_.size();
}

void BlockReplay::keep(int node, size_t chunk, const ggml_tensor * t) {
    const ggml_tensor & c = graph_.tensors()[(size_t) node].copy;
    auto it = kept_.find(node);
    if (it == kept_.end()) {
        const size_t width = (size_t) ggml_nelements(&c) / tokens_[0];
        const uint64_t bytes = std::accumulate(tokens_.begin(), tokens_.end(), uint64_t{0}) * width * sizeof(float);
        const bool in_memory = kept_in_memory_ + bytes <= kept_memory_;
        kept_in_memory_ += in_memory ? bytes : 0;
        it = kept_.emplace(node, std::make_unique<Kept>(scratch_ + ".node" + std::to_string(node), tokens_, width,
                                                        in_memory)).first;
    }
    Kept & k = *it->second;
    if (k.broken || chunk != k.got || t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t) || !ggml_are_same_shape(t, &c) ||
        std::strcmp(t->name, c.name) != 0) {
        k.broken = true;  // not the node the float graph had: the stages that read it run the block
        return;
    }
    const size_t n = (size_t) ggml_nelements(t);
    if (t->buffer && !ggml_backend_buffer_is_host(t->buffer)) {
        std::vector<float> host(n);
        ggml_backend_tensor_get(t, host.data(), 0, ggml_nbytes(t));
        k.write(chunk, host.data(), n);
    } else {
        k.write(chunk, static_cast<const float *>(t->data), n);
    }
    ++k.got;
}

void BlockReplay::begin_chunk(size_t chunk) {
    chunk_ = chunk;
    position_ = 0;
    asked_ = -1;
}

bool BlockReplay::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<BlockReplay *>(user_data);
    if (ask) {
        const auto it = self->keeping_at_.find(self->position_++);
        self->asked_ = it == self->keeping_at_.end() ? -1 : it->second;
        return self->asked_ >= 0;
    }
    if (self->asked_ >= 0) {
        self->keep(self->asked_, self->chunk_, t);
    }
    return true;
}

std::unique_ptr<GraphReplay> BlockReplay::stage(size_t k, const TensorTable & model, TensorIo & io, int b,
                                                const TensorReplacements & tensors, int threads,
                                                ggml_backend_sched_eval_callback inner, void * inner_data) {
    keeping_at_.clear();
    std::unique_ptr<GraphReplay> r;
    if (k < plan_.stages.size() && plan_.stages[k]) {
        r = replay(*plan_.stages[k], plan_.keep[k], model, io, b, tensors, threads, inner, inner_data);
    }
    if (!r && k < plan_.keep.size()) {
        for (int i : plan_.keep[k]) {
            keeping_at_[position_of_.at(i)] = i;
        }
    }
    return r;
}

std::unique_ptr<GraphReplay> BlockReplay::output(const TensorTable & model, TensorIo & io, int b,
                                                 const TensorReplacements & tensors, int threads) {
    keeping_at_.clear();
    std::unique_ptr<GraphReplay> r =
        plan_.output ? replay(*plan_.output, {}, model, io, b, tensors, threads, nullptr, nullptr) : nullptr;
    if (r) {
        r->output_ = true;
    }
    return r;
}

// ---- the replay ----

struct GraphReplay::Tensors {
    ggml_context *                       ctx = nullptr;
    ggml_backend_buffer_t                values = nullptr;  // nodes, kept values, the block's input
    std::map<int, ggml_tensor *>         of;                // the graph's tensor i here
    ggml_tensor *                        input = nullptr;
    ggml_cgraph *                        graph = nullptr;
    ggml_cplan                           plan{};
    std::vector<uint8_t>                 work;
    ~Tensors() {
        if (values) {
            ggml_backend_buffer_free(values);
        }
        if (ctx) {
            ggml_free(ctx);
        }
    }
};

GraphReplay::~GraphReplay() = default;

std::unique_ptr<GraphReplay> BlockReplay::replay(const GraphPart & part, const std::vector<int> & keep,
                                                 const TensorTable & model, TensorIo & io, int b,
                                                 const TensorReplacements & tensors, int threads,
                                                 ggml_backend_sched_eval_callback inner, void * inner_data) {
    using Kind = BlockGraph::Kind;
    const std::vector<BlockGraph::Tensor> & ts = graph_.tensors();
    for (int i : part.kept) {
        if (!complete(i)) {
            return nullptr;
        }
    }
    std::set<int> computed(part.compute.begin(), part.compute.end()), kept(part.kept.begin(), part.kept.end());
    std::set<int> need(part.shown.begin(), part.shown.end());
    need.insert(kept.begin(), kept.end());
    for (int i : part.shown) {
        for (int s : ts[(size_t) i].src) {
            if (s >= 0) {
                need.insert(s);
            }
        }
    }
    auto t = std::make_unique<GraphReplay::Tensors>();
    const size_t graph_size = std::max<size_t>(GGML_DEFAULT_GRAPH_SIZE, 2 * need.size());
    t->ctx = ggml_init({ggml_tensor_overhead() * (need.size() + 1) + ggml_graph_overhead_custom(graph_size, false),
                        nullptr, true});
    // the block's weights as the block model would hold them, in a type the CPU multiplies as the graph does
    std::map<int, TensorBytes> weights;
    for (int i : need) {
        if (ts[(size_t) i].kind == Kind::weight) {
            const std::string name = "blk." + std::to_string(b) + ts[(size_t) i].weight.substr(5);
            TensorBytes w = block_model_tensor(model, io, b, tensors, name, BlockWeights::f16);
            if (w.type != GGML_TYPE_F16 && w.type != GGML_TYPE_F32) {
                return nullptr;  // a layout the CPU may repack: the graph's own run
            }
            weights.emplace(i, std::move(w));
        }
    }
    // the values: weights, every tensor computed (not a view) or read from before, 64-byte aligned in one CPU buffer
    const auto own_values = [&](int i) {
        return weights.contains(i) || kept.contains(i) || ts[(size_t) i].kind == Kind::input ||
               ts[(size_t) i].kind == Kind::out_ids ||
               (computed.contains(i) && ts[(size_t) i].view_src < 0);
    };
    size_t bytes = 0;
    for (int i : need) {
        if (own_values(i)) {
            bytes += GGML_PAD(weights.contains(i) ? weights[i].bytes.size() : ggml_nbytes(&ts[(size_t) i].copy), 64);
        }
    }
    t->values = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), std::max<size_t>(bytes, 64));
    auto * base = static_cast<uint8_t *>(ggml_backend_buffer_get_base(t->values));
    size_t offset = 0;
    for (int i : need) {  // in the graph's order: a tensor's sources before it
        const BlockGraph::Tensor & x = ts[(size_t) i];
        ggml_tensor * n = nullptr;
        if (x.kind == Kind::weight) {
            n = ggml_new_tensor(t->ctx, weights[i].type, GGML_MAX_DIMS, x.copy.ne);
            if (ggml_nbytes(n) != weights[i].bytes.size()) {
                return nullptr;
            }
        } else if (x.kind == Kind::out_ids) {
            n = ggml_new_tensor(t->ctx, GGML_TYPE_I32, GGML_MAX_DIMS, x.copy.ne);
        } else if (x.kind != Kind::node || kept.contains(i)) {  // the block's input, a kept value
            if (x.copy.type != GGML_TYPE_F32 || (x.kind != Kind::input && !kept.contains(i))) {
                return nullptr;
            }
            n = ggml_new_tensor(t->ctx, GGML_TYPE_F32, GGML_MAX_DIMS, x.copy.ne);
        } else {  // a node: ggml's operation on the counterparts of its sources
            n = ggml_new_tensor(t->ctx, x.copy.type, GGML_MAX_DIMS, x.copy.ne);
            n->op = x.copy.op;
            std::memcpy(n->op_params, x.copy.op_params, sizeof n->op_params);
            for (int s = 0; s < GGML_MAX_SRC; ++s) {
                if (x.src[s] >= 0) {
                    const auto it = t->of.find(x.src[s]);
                    if (it == t->of.end()) {
                        return nullptr;
                    }
                    n->src[s] = it->second;
                }
            }
            if (x.view_src >= 0) {
                const auto it = t->of.find(x.view_src);
                if (it == t->of.end() || !it->second->data) {
                    return nullptr;
                }
                n->view_src = it->second;
                n->view_offs = x.copy.view_offs;
                std::copy(std::begin(x.copy.nb), std::end(x.copy.nb), std::begin(n->nb));
                ggml_backend_view_init(n);
            }
        }
        if (own_values(i)) {
            ggml_backend_tensor_alloc(t->values, n, base + offset);
            offset += GGML_PAD(ggml_nbytes(n), 64);
            if (x.kind == Kind::weight) {
                std::memcpy(n->data, weights[i].bytes.data(), weights[i].bytes.size());
            } else if (x.kind == Kind::out_ids) {
                // every token is an output of a block run (block_runner.h): llama.cpp's ids are then 0, 1, …
                auto * ids = static_cast<int32_t *>(n->data);
                for (int64_t k = 0; k < n->ne[0]; ++k) {
                    ids[k] = (int32_t) k;
                }
            }
        }
        ggml_set_name(n, x.copy.name);
        t->of[i] = n;
        if (x.kind == Kind::input) {
            t->input = n;
        }
    }
    t->graph = ggml_new_graph_custom(t->ctx, graph_size, false);
    for (int i : part.compute) {  // in the graph's order, so that ggml fuses what it fused there (RMS_NORM + MUL)
        ggml_build_forward_expand(t->graph, t->of.at(i));
    }
    t->plan = ggml_graph_plan(t->graph, threads, nullptr);
    t->work.resize(t->plan.work_size);
    t->plan.work_data = t->work.data();

    ++replayed_;
    std::unique_ptr<GraphReplay> r(new GraphReplay());
    r->owner_ = this;
    r->part_ = &part;
    r->keep_ = keep;
    r->t_ = std::move(t);
    r->inner_ = inner;
    r->inner_data_ = inner_data;
    return r;
}

bool GraphReplay::run(const std::vector<float> & in, std::vector<float> & out, size_t chunk) {
    Tensors & t = *t_;
    if (t.input) {
        if (in.size() * sizeof(float) != ggml_nbytes(t.input)) {
            throw Error("chunk " + std::to_string(chunk) + ": " + std::to_string(in.size()) +
                        " input values, not the block graph's " + std::to_string(ggml_nelements(t.input)));
        }
        std::memcpy(t.input->data, in.data(), ggml_nbytes(t.input));
    }
    for (int i : part_->kept) {
        const BlockReplay::Kept & k = *owner_->kept_.at(i);
        ggml_tensor * n = t.of.at(i);
        if ((size_t) ggml_nelements(n) != owner_->tokens_[chunk] * k.width) {
            throw Error(std::string(n->name) + ": kept values of chunk " + std::to_string(chunk) + " differ in size");
        }
        k.read(chunk, static_cast<float *>(n->data), (size_t) ggml_nelements(n));
    }
    if (!part_->compute.empty() && ggml_graph_compute(t.graph, &t.plan) != GGML_STATUS_SUCCESS) {
        throw Error("ggml could not compute the block's graph again (chunk " + std::to_string(chunk) + ")");
    }
    for (int i : keep_) {
        owner_->keep(i, chunk, t.of.at(i));
    }
    if (output_) {
        const ggml_tensor * last = t.of.at(part_->compute.back());
        out.resize((size_t) ggml_nelements(last));
        std::memcpy(out.data(), last->data, ggml_nbytes(last));
    }
    // what ggml's scheduler does with an eval callback, on values already computed
    if (inner_) {
        for (int i : part_->shown) {
            ggml_tensor * n = t.of.at(i);
            if (inner_(n, true, inner_data_) && !inner_(n, false, inner_data_)) {
                return false;
            }
        }
    }
    return true;
}

}  // namespace imx::engine
