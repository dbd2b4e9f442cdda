#include "engine/collect/activation_collector.h"

#include "core/error.h"
#include "engine/collect/graph_nodes.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace imx::engine {

namespace {

bool all_finite(const double * v, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(v[i])) {
            return false;
        }
    }
    return true;
}

// The target model's input of expert e at token tok: the layer's input itself where all experts read one
// (gate/up: ne[1] == 1), else the slot the target routed to e. Where the target did not route the token to e,
// it never computed that expert's input: this model's own row stands in (no correction for that token).
const float * target_expert_row(const TargetInputs::Input & in, int64_t e, int64_t tok, const float * own) {
    if (in.ne[1] == 1) {
        return in.row(0, tok);
    }
    for (int64_t k = 0; k < in.n_used; ++k) {
        if (in.ids[tok * in.n_used + k] == e) {
            return in.row(k, tok);
        }
    }
    return own;
}

}  // namespace

bool ActivationCollector::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<ActivationCollector *>(user_data);
    if (ask) {
        self->note_gate_weights(t);
    }
    if (self->early_) {
        return ask ? self->ask_early(t) : self->collect_early();
    }
    if (ask) {
        if (self->stop_at_inputs_ && self->final_weight_.empty()) {  // the first chunk: learn the positions
            self->position_.emplace(t, (int) self->position_.size());
        }
        return self->wants(t);
    }
    if (self->stop_here_) {  // a matmul that shared its input with the one before: collected at the ask
        self->stop_here_ = false;
        return false;
    }
    return self->collect(t);
}

bool ActivationCollector::completes_expected(const std::string & name) {
    if (expected_.empty() || !stop_after_last_ || !final_weight_.empty()) {
        return false;
    }
    seen_.insert(name);
    return std::includes(seen_.begin(), seen_.end(), expected_.begin(), expected_.end());
}

void ActivationCollector::learn(const ggml_tensor * t) {
    if (!stop_at_inputs_ || !final_weight_.empty()) {
        return;
    }
    const auto at = [&](const ggml_tensor * x) {
        const auto it = position_.find(x);
        return it == position_.end() ? -1 : it->second;
    };
    PlannedMatmul p{*t, at(t->src[1]), -1, at(t), -1, t->src[1]->name, ""};
    const ggml_tensor * w = t->src[0];
    // the weight must outlive this graph: the model's own tensor, not a view made for it
    plan_ok_ = plan_ok_ && p.input >= 0 && p.self >= 0 && w->op == GGML_OP_NONE && !w->view_src;
    if (t->op == GGML_OP_MUL_MAT_ID) {
        p.ids = at(t->src[2]);
        p.ids_name = t->src[2]->name;
        plan_ok_ = plan_ok_ && p.ids >= 0;
        p.gate = gate_node_ ? at(gate_node_) : -1;  // computed by the stop, so that later chunks weight alike
    }
    planned_.push_back(std::move(p));
}

void ActivationCollector::plan_early_stop() {
    int first = std::numeric_limits<int>::max();
    for (const PlannedMatmul & p : planned_) {
        stop_at_ = std::max({stop_at_, p.input, p.ids, p.gate});
        first = std::min(first, p.self);
    }
    early_ = stop_at_inputs_ && stop_after_last_ && plan_ok_ && !planned_.empty() && stop_at_ < first;
    position_.clear();
}

bool ActivationCollector::ask_early(ggml_tensor * t) {
    nodes_.push_back(t);
    return (int) nodes_.size() - 1 == stop_at_;
}

// Every planned matmul, its input and routing taken from this chunk's nodes, collected as if the graph had
// computed it; then the graph stops.
bool ActivationCollector::collect_early() {
    const auto node = [&](int at, const std::string & name) -> ggml_tensor * {
        ggml_tensor * x = nodes_[(size_t) at];
        if (name != x->name) {
            error_ = "the graph of chunk " + std::to_string(first_chunk_) + " differs from the first chunk's: node " +
                     std::to_string(at) + " is " + x->name + ", not " + name;
            return nullptr;
        }
        return x;
    };
    for (const PlannedMatmul & p : planned_) {
        ggml_tensor t = p.node;
        t.src[1] = node(p.input, p.input_name);
        t.src[2] = p.ids >= 0 ? node(p.ids, p.ids_name) : nullptr;
        if (!t.src[1] || (p.ids >= 0 && !t.src[2])) {
            return false;
        }
        if (wants(&t)) {
            collect(&t);
        }
        if (!error_.empty()) {
            return false;
        }
    }
    return false;
}

// Matmuls whose first operand is a weight of a transformer block (collected_weight); the output head is left
// out as upstream does by default.
//
// A matmul whose input is the very tensor the previous collected matmul read (q, k and v read one input; an
// expert layer's gate and up read one input with one routing) gets that contribution again without stopping
// the graph: the sums are the same numbers, and each stop costs a synchronisation.
bool ActivationCollector::wants(const ggml_tensor * t) {
    const std::string name = collected_weight(t, process_output_, only_regex_);
    if (name.empty()) {
        return false;
    }
    if (same_input_as_last(t)) {
        learn(t);
        apply(name);  // a non-finite contribution already stopped the run at its first use
        last_collected_ = name;
        if (last_all_experts_input_) {
            add_all_experts_row(name, all_experts_->input_sums(), 1);
        }
        if (last_covariance_ >= 0) {
            auto & readers = data_.covariances[last_covariance_].readers;
            if (std::find(readers.begin(), readers.end(), name) == readers.end()) {
                readers.push_back(name);
                std::sort(readers.begin(), readers.end());
                covariance_index_[name] = last_covariance_;
            }
        }
        // the first chunk's last expected weight: asked for, so that the graph stops right after it
        stop_here_ = completes_expected(name);
        return stop_here_;
    }
    return true;
}

bool ActivationCollector::same_input_as_last(const ggml_tensor * t) const {
    if (!last_.input || t->src[1] != last_.input || t->op != last_.op) {
        return false;
    }
    const bool experts = t->op == GGML_OP_MUL_MAT_ID;
    const int64_t n_mat = experts ? t->src[0]->ne[2] : t->src[0]->ne[2] * t->src[0]->ne[3];
    return n_mat == last_.n_mat && (!experts || t->src[2] == last_.ids) && (experts || t->src[0]->ne[2] == 1);
}

bool ActivationCollector::collect(const ggml_tensor * t) {
    learn(t);
    const ggml_tensor * src1 = t->src[1];
    const std::string name = weight_name(t->src[0]->name);
    const bool on_host = ggml_backend_buffer_is_host(src1->buffer);
    bool computed = false;
    if ((!on_host || force_device_) && !force_host_) {
        computed = t->op == GGML_OP_MUL_MAT_ID ? experts_on_device(t) : dense_on_device(t);
    }
    const char * data = nullptr;
    auto host_data = [&] {
        if (!data) {
            data = static_cast<const char *>(src1->data);
            if (!on_host) {
                // the input lives on a device (and the device path cannot take this shape, or XᵀX is wanted)
                host_copy_.resize(ggml_nbytes(src1));
                ggml_backend_tensor_get(src1, host_copy_.data(), 0, host_copy_.size());
                data = host_copy_.data();
            }
        }
        return data;
    };
    if (!computed) {
        t->op == GGML_OP_MUL_MAT_ID ? experts_on_host(t, host_data()) : dense_on_host(t, host_data());
    }
    if (!on_host) {
        traffic_.device_inputs += ggml_nbytes(src1);
        traffic_.read_back += computed ? delta_.sums.size() * sizeof(float) : ggml_nbytes(src1);
    }
    last_ = {src1, t->op == GGML_OP_MUL_MAT_ID ? t->src[2] : nullptr, t->op,
             (int64_t) delta_.sums.size() / delta_.n_cols};
    bool ok = apply(name);
    last_collected_ = name;
    last_covariance_ = -1;
    last_all_experts_input_ = false;
    if (ok && all_experts_ && t->op == GGML_OP_MUL_MAT_ID) {
        // down reads what the experts made of the layer's input; gate, up (or a merged gate_up) read that input
        const bool down = name.find("ffn_down_exps") != std::string::npos;
        try {
            ok = add_all_experts(t, name, down ? nullptr : host_data());
        } catch (const std::exception & e) {  // not through llama_decode: stop the graph, report after it
            error_ = e.what();
            ok = false;
        }
    }
    if (ok && covariance_budget_ > 0) {
        try {
            add_covariance(t, name, host_data());
        } catch (const std::exception & e) {  // not through llama_decode: stop the graph, report after it
            error_ = e.what();
            ok = false;
        }
    }
    // false ends this graph split: after the final weight only the output head is left
    const bool complete = completes_expected(name);
    return ok && !complete && (!stop_after_last_ || name != final_weight_);
}

void ActivationCollector::dense_on_host(const ggml_tensor * t, const char * data) {
    const ggml_tensor * w = t->src[0];
    const ggml_tensor * x = t->src[1];
    const int64_t n_cols = x->ne[0];
    const int64_t n_mat = w->ne[2] * w->ne[3];
    delta_.reset(n_cols, n_mat, 1);
    // rows of x for each (i2, i3) slice go to the matrix (head) that slice multiplies; broadcast slices wrap
    for (int64_t i3 = 0; i3 < x->ne[3]; ++i3) {
        for (int64_t i2 = 0; i2 < x->ne[2]; ++i2) {
            const int64_t m = (i3 % w->ne[3]) * w->ne[2] + (i2 % w->ne[2]);
            double * acc = delta_.sums.data() + m * n_cols;
            for (int64_t r = 0; r < x->ne[1]; ++r) {
                const float * row = (const float *) (data + r * x->nb[1] + i2 * x->nb[2] + i3 * x->nb[3]);
                for (int64_t j = 0; j < n_cols; ++j) {
                    acc[j] += (double) row[j] * row[j];
                }
            }
        }
    }
    delta_.counts[0] = ggml_nrows(x) / n_mat;
    delta_.tokens = delta_.counts[0];
}

void ActivationCollector::experts_on_host(const ggml_tensor * t, const char * data) {
    const ggml_tensor * x = t->src[1];    // [n_cols, 1 or n_used, n_tokens]
    const ggml_tensor * ids = t->src[2];  // [n_used, n_tokens], i32, possibly not contiguous
    const int64_t n_cols = x->ne[0], n_expert = t->src[0]->ne[2], n_used = ids->ne[0], n_tokens = ids->ne[1];
    const std::vector<int32_t> & routed = host_ids(ids);
    delta_.reset(n_cols, n_expert, n_expert);
    for (int64_t tok = 0; tok < n_tokens; ++tok) {
        for (int64_t k = 0; k < n_used; ++k) {
            const int32_t e = routed[tok * n_used + k];
            if (e < 0 || e >= n_expert) {
                continue;  // not routed (some graphs pad with -1)
            }
            const float * row = (const float *) (data + (k % x->ne[1]) * x->nb[1] + tok * x->nb[2]);
            double * acc = delta_.sums.data() + e * n_cols;
            for (int64_t j = 0; j < n_cols; ++j) {
                acc[j] += (double) row[j] * row[j];
            }
            delta_.counts[e] += 1;
        }
    }
    delta_.tokens = n_tokens;
}

bool ActivationCollector::dense_on_device(const ggml_tensor * t) {
    const ggml_tensor * w = t->src[0];
    const ggml_tensor * x = t->src[1];
    if (w->ne[3] != 1 || x->ne[2] % w->ne[2] != 0 || !device_.dense(x, device_out_)) {
        return false;
    }
    const int64_t n_cols = x->ne[0], n_mat = w->ne[2];
    delta_.reset(n_cols, n_mat, 1);
    for (int64_t i2 = 0; i2 < x->ne[2]; ++i2) {  // input slices map onto the weight's heads, wrapping
        for (int64_t j = 0; j < n_cols; ++j) {
            delta_.sums[(i2 % n_mat) * n_cols + j] += device_out_[i2 * n_cols + j];
        }
    }
    delta_.counts[0] = ggml_nrows(x) / n_mat;
    delta_.tokens = delta_.counts[0];
    return true;
}

bool ActivationCollector::experts_on_device(const ggml_tensor * t) {
    const ggml_tensor * x = t->src[1];
    const ggml_tensor * ids = t->src[2];
    const int64_t n_cols = x->ne[0], n_expert = t->src[0]->ne[2], n_used = ids->ne[0];
    const std::vector<int32_t> & routed = host_ids(ids);
    if (!device_.experts(x, routed, n_used, n_expert, device_out_)) {
        return false;
    }
    delta_.reset(n_cols, n_expert, n_expert);
    for (int32_t e : routed) {
        if (e >= 0 && e < n_expert) {
            delta_.counts[e] += 1;
        }
    }
    for (int64_t i = 0; i < n_cols * n_expert; ++i) {
        delta_.sums[i] = device_out_[i];
    }
    delta_.tokens = ids->ne[1];
    return true;
}

// Adds the last contribution to `name`; false (and error_ set) if it holds a non-finite value.
bool ActivationCollector::apply(const std::string & name) {
    const int64_t n_cols = delta_.n_cols, n_mat = (int64_t) delta_.sums.size() / n_cols;
    int64_t & before = tokens_this_batch_[name];
    const bool per_matrix_counts = delta_.counts.size() > 1;
    for (int64_t m = 0; m < n_mat; ++m) {
        const bool touched = !per_matrix_counts || delta_.counts[m] > 0;
        if (touched && !all_finite(delta_.sums.data() + m * n_cols, n_cols)) {
            return fail(name, m, n_mat > 1, before);
        }
    }
    TensorStats & ts = data_.tensors[name];
    if (ts.counts.empty()) {
        ts.sums.assign(delta_.sums.size(), 0.0);
        ts.counts.assign(delta_.counts.size(), 0);
    }
    for (size_t i = 0; i < ts.sums.size(); ++i) {
        ts.sums[i] += delta_.sums[i];
    }
    for (size_t i = 0; i < ts.counts.size(); ++i) {
        ts.counts[i] += delta_.counts[i];
    }
    before += delta_.tokens;
    return true;
}

void ActivationCollector::Contribution::reset(int64_t cols, int64_t n_mat, int64_t n_counts) {
    n_cols = cols;
    sums.assign(cols * n_mat, 0.0);
    counts.assign(n_counts, 0);
    tokens = 0;
}

// The expert ids of every token, [n_tokens][n_used], copied from wherever they are (they are small).
const std::vector<int32_t> & ActivationCollector::host_ids(const ggml_tensor * ids) {
    read_expert_ids(ids, ids_copy_, ids_host_);
    return ids_host_;
}

int ActivationCollector::covariance_index(const ggml_tensor * t, const std::string & name) {
    if (const auto it = covariance_index_.find(name); it != covariance_index_.end()) {
        return it->second;
    }
    int index = -1;
    for (size_t i = 0; i < data_.covariances.size(); ++i) {  // resumed from a checkpoint
        const auto & readers = data_.covariances[i].readers;
        if (std::find(readers.begin(), readers.end(), name) != readers.end()) {
            index = (int) i;
        }
    }
    const ggml_tensor * w = t->src[0];
    const bool experts = t->op == GGML_OP_MUL_MAT_ID;
    const int64_t n_cols = t->src[1]->ne[0], n_mat = w->ne[2];  // experts, heads, or 1
    const uint64_t left = covariance_budget_ - std::min(covariance_budget_, covariance_used_);
    if (index >= 0) {
        const Covariance & c = data_.covariances[index];
        covariance_used_ += covariance_bytes(c.n_cols, c.block, c.n_mat);
    } else if ((experts || w->ne[3] == 1) && std::regex_search(name, covariance_regex_)) {
        // with a target model a whole matrix carries its cross term, as large again
        const uint64_t share = target_ ? 2 : 1;
        const CovarianceLayout l = choose_covariance_layout(n_cols, experts ? n_mat : 1, left / share,
                                                            covariance_blocks_only_, covariance_pool_experts_);
        const int64_t mats = l.pooled ? 1 : n_mat;
        if (l.block > 0) {
            data_.covariances.emplace_back(n_cols, l.block, mats);
            data_.covariances.back().readers = {name};
            covariance_used_ += covariance_bytes(n_cols, l.block, mats) * share;
            index = (int) data_.covariances.size() - 1;
        }
    }
    covariance_index_[name] = index;
    return index;
}

void ActivationCollector::add_covariance(const ggml_tensor * t, const std::string & name, const char * data) {
    last_covariance_ = covariance_index(t, name);
    if (last_covariance_ < 0) {
        return;
    }
    Covariance & c = data_.covariances[last_covariance_];
    const ggml_tensor * x = t->src[1];
    const int64_t n_cols = x->ne[0];
    const bool pooled = c.n_mat == 1 && t->src[0]->ne[2] > 1;
    // the cross term where the encoder can use it: whole matrices, one per expert or head; against the target's
    // outputs where it recorded them (TargetInputs::record_outputs_of: plain 2-D matmuls, one reader)
    const bool crossed = target_ && c.full() && !pooled;
    const TargetInputs::Input * outputs = crossed ? target_->find_output(name) : nullptr;
    const int64_t rows_out = t->ne[0];
    if (outputs && (t->op != GGML_OP_MUL_MAT || t->src[0]->ne[2] != 1 || c.readers.size() != 1 ||
                    outputs->ne[0] != rows_out || ggml_nrows(t) != outputs->ne[1] * outputs->ne[2] * outputs->ne[3])) {
        throw Error("the target model's output of " + name + " does not match this model's matmul (in chunk " +
                    std::to_string(first_chunk_) + ")");
    }
    const TargetInputs::Input * target = crossed && !outputs ? &target_input(name, x) : nullptr;
    if (t->op != GGML_OP_MUL_MAT_ID) {
        // every row of x (over ne[1..3]) is one token of the matrix (head) its slice multiplies, as in
        // dense_on_host; a 2-D weight has one matrix
        const int64_t n_heads = t->src[0]->ne[2];
        const bool contiguous = n_heads == 1 && x->nb[1] == (size_t) n_cols * sizeof(float) && x->ne[2] == 1 && x->ne[3] == 1;
        if (contiguous) {  // the usual case: the tokens' rows as they lie
            c.add(0, (const float *) data, x->ne[1], n_cols);
            if (target) {
                c.add_cross(0, (const float *) data, target->rows.data(), x->ne[1], n_cols);
            }
            if (outputs) {
                c.add_cross_output(0, (const float *) data, outputs->rows.data(), x->ne[1], n_cols, rows_out);
            }
            c.counts[0] += x->ne[1];
            return;
        }
        for (int64_t m = 0; m < n_heads; ++m) {
            int64_t n_rows = 0;
            for (int64_t i2 = m; i2 < x->ne[2]; i2 += n_heads) {
                n_rows += x->ne[1] * x->ne[3];
            }
            rows_.resize(n_cols * n_rows);
            target_rows_.resize(target ? n_cols * n_rows : 0);
            int64_t r = 0;
            for (int64_t i3 = 0; i3 < x->ne[3]; ++i3) {
                for (int64_t i2 = m; i2 < x->ne[2]; i2 += n_heads) {
                    for (int64_t i1 = 0; i1 < x->ne[1]; ++i1, ++r) {
                        const float * row = (const float *) (data + i1 * x->nb[1] + i2 * x->nb[2] + i3 * x->nb[3]);
                        std::copy_n(row, n_cols, rows_.data() + r * n_cols);
                        if (target) {
                            std::copy_n(target->row(i1, i2, i3), n_cols, target_rows_.data() + r * n_cols);
                        }
                    }
                }
            }
            c.add(m, rows_.data(), n_rows, n_cols);
            if (target) {
                c.add_cross(m, rows_.data(), target_rows_.data(), n_rows, n_cols);
            }
            if (outputs) {  // one matrix (checked above): the output rows lie in the gathered rows' token order
                c.add_cross_output(m, rows_.data(), outputs->rows.data(), n_rows, n_cols, rows_out);
            }
            c.counts[m] += n_rows;
        }
        return;
    }
    // experts: the tokens routed to each, in token order (ids_host_ is this matmul's routing, see host_ids);
    // pooled over experts: every routed token (slot) into the one matrix
    const int64_t n_used = t->src[2]->ne[0], n_tokens = t->src[2]->ne[1];
    std::vector<const float *> rows, target_rows;
    std::vector<float> scales;
    const std::vector<float> * gates = gate_weights_for(name, n_used * n_tokens);
    for (int64_t e = 0; e < c.n_mat; ++e) {
        rows.clear();
        target_rows.clear();
        scales.clear();
        for (int64_t tok = 0; tok < n_tokens; ++tok) {
            for (int64_t k = 0; k < n_used; ++k) {
                if (pooled || ids_host_[tok * n_used + k] == e) {
                    rows.push_back((const float *) (data + (k % x->ne[1]) * x->nb[1] + tok * x->nb[2]));
                    scales.push_back(gates ? std::fabs((*gates)[tok * n_used + k]) : 1.0f);
                    if (target) {
                        target_rows.push_back(target_expert_row(*target, e, tok, rows.back()));
                    }
                }
            }
        }
        const int64_t n_rows = (int64_t) rows.size();
        // the rows side by side, each times its token's |g| (1 unweighted): this model's, and the target's alike
        const auto gather = [&](const std::vector<const float *> & from, std::vector<float> & to) {
            to.resize(n_cols * n_rows);
            for (int64_t r = 0; r < n_rows; ++r) {
                for (int64_t j = 0; j < n_cols; ++j) {
                    to[r * n_cols + j] = from[r][j] * scales[r];
                }
            }
        };
        gather(rows, rows_);
        c.add(e, rows_.data(), n_rows, n_cols);
        if (target) {
            gather(target_rows, target_rows_);
            c.add_cross(e, rows_.data(), target_rows_.data(), n_rows, n_cols);
        }
        c.counts[e] += n_rows;
    }
}

namespace {
bool weight_by_gates = false;
}

void ActivationCollector::weight_experts_by_gates(bool on) { weight_by_gates = on; }

void ActivationCollector::note_gate_weights(const ggml_tensor * t) {
    if (is_expert_gate_weights(t->name)) {
        gate_node_ = t;
    } else if (is_expert_weighted_input(t->name)) {
        gate_node_ = nullptr;  // the weights multiplied the experts' input (Llama 4): that input carries them already
    }
}

const std::vector<float> * ActivationCollector::gate_weights_for(const std::string & name, int64_t n) {
    if (!weight_by_gates || !gate_node_ || ggml_nelements(gate_node_) != n || gate_node_->type != GGML_TYPE_F32 ||
        !ggml_is_contiguous(gate_node_)) {
        return nullptr;
    }
    // the node's layer ("ffn_moe_weights_norm-3") must be the weight's: a graph whose gate weights were not shown
    // (a run stopped before them) may still hold an earlier layer's
    const std::string node = gate_node_->name;
    if (name.rfind("blk." + node.substr(node.rfind('-') + 1) + ".", 0) != 0) {
        return nullptr;
    }
    gate_values_.resize((size_t) n);
    if (!gate_node_->buffer || ggml_backend_buffer_is_host(gate_node_->buffer)) {  // a replay's tensors have no buffer
        std::memcpy(gate_values_.data(), gate_node_->data, (size_t) n * sizeof(float));
    } else {
        ggml_backend_tensor_get(gate_node_, gate_values_.data(), 0, (size_t) n * sizeof(float));
    }
    return &gate_values_;
}

const TargetInputs::Input & ActivationCollector::target_input(const std::string & name, const ggml_tensor * x) const {
    const TargetInputs::Input * in = target_->find(name);
    bool same = in != nullptr;
    for (int d = 0; same && d < 4; ++d) {
        same = in->ne[d] == x->ne[d];
    }
    if (!same) {
        throw Error("the target model " + std::string(in ? "feeds " + name + " another shape of input than this model"
                                                         : "has no matmul reading " + name) +
                    " (in chunk " + std::to_string(first_chunk_) + ")");
    }
    return *in;
}

bool ActivationCollector::add_all_experts(const ggml_tensor * t, const std::string & name, const char * data) {
    if (data) {  // gate/up
        all_experts_->keep_input(t, data);
        add_all_experts_row(name, all_experts_->input_sums(), 1);
        last_all_experts_input_ = true;
        return true;
    }
    all_experts_->down_sums(t, all_down_);
    const int64_t n_expert = t->src[0]->ne[2], n_cols = t->src[0]->ne[0];
    for (int64_t e = 0; e < n_expert; ++e) {
        if (!all_finite(all_down_.data() + e * n_cols, n_cols)) {
            return fail(name + " (all experts)", e, true, tokens_this_batch_[name] - all_experts_->tokens());
        }
    }
    add_all_experts_row(name, all_down_, n_expert);
    return true;
}

void ActivationCollector::add_all_experts_row(const std::string & name, const std::vector<double> & sums,
                                              int64_t n_rows) {
    AllExpertStats & a = data_.all_experts[name];
    if (a.sums.empty()) {
        a.sums.assign(sums.size(), 0.0);
        a.n_rows = n_rows;
    }
    for (size_t i = 0; i < sums.size(); ++i) {
        a.sums[i] += sums[i];
    }
    a.tokens += all_experts_->tokens();
}

bool ActivationCollector::fail(const std::string & name, int64_t matrix, bool expert, int64_t tokens_before) {
    const int64_t chunk = first_chunk_ + tokens_before / chunk_size_;
    error_ = "non-finite activation in the input of " + name + (expert ? " (matrix " + std::to_string(matrix) + ")" : "") +
             " in chunk " + std::to_string(chunk);
    return false;  // stops the graph computation
}

}  // namespace imx::engine
