#include "engine/encode/stream_quantize.h"

#include "core/error.h"
#include "core/format/atomic_file.h"
#include "core/format/checkpoint.h"
#include "core/format/imatrix_file.h"
#include "core/hash.h"
#include "core/interrupt.h"
#include "core/math/linear_algebra.h"
#include "core/math/norm_refit.h"
#include "engine/collect/activation_collector.h"
#include "engine/collect/calibration.h"
#include "engine/collect/target_inputs.h"
#include "engine/collect/collect.h"
#include "engine/encode/model_writer.h"
#include "engine/encode/sequential_encoder.h"
#include "engine/model/llama_model.h"
#include "engine/stream/block_model.h"
#include "engine/stream/block_runner.h"
#include "engine/stream/block_stages.h"
#include "engine/stream/head_statistics.h"
#include "engine/stream/hidden_stream.h"
#include "engine/stream/input_tape.h"
#include "engine/stream/token_embeddings.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <set>
#include <thread>

namespace imx::engine {

namespace fs = std::filesystem;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Weights of 1 for every matrix of the blocks: llama-quantize's mix depends on whether an imatrix is given
// (IQ3_XXS, IQ4 mixes), not on its values, so the plan is made as with the one collected later.
QuantWeights planning_weights(const TensorTable & t) {
    QuantWeights w;
    for (const std::string & name : t.names()) {
        const ggml_tensor * x = t.find(name);
        if (block_of(name) >= 0 && ggml_n_dims(x) >= 2) {
            w.tensors[name].assign((size_t) (x->ne[0] * x->ne[2]), 1.0f);
        }
    }
    return w;
}

std::string fingerprint(const StreamQuantizeOptions & o, const std::vector<Chunk> & chunks) {
    uint64_t h = kFnv1aOffset;
    for (const Chunk & c : chunks) {
        h = fnv1a(h, c.data(), c.size() * sizeof(llama_token));
    }
    std::string tt;
    for (const std::string & t : o.quantize.tensor_types) {
        tt += t + ";";
    }
    const auto & ho = o.hessian_options;
    return "quantize-by-blocks model=" + fs::absolute(o.quantize.model).string() + " bytes=" +
           std::to_string(model_file_bytes(o.quantize.model)) + " type=" + o.quantize.type + " tensor_types=" + tt +
           " chunks=" + std::to_string(chunks.size()) + ":" + std::to_string(h) + " c=" + std::to_string(o.chunk_size) +
           " prior=" + std::to_string(o.prior.weight) + "/" + prior_target_name(o.prior.target) +
           (o.hessian ? " hessian damp=" + std::to_string(ho.rounding.damp) + " refinements=" +
                            std::to_string(ho.rounding.refinements) + " prior=" + std::to_string(ho.prior_weight) +
                            " per_head=" + std::to_string(ho.per_head) + " only=" + ho.tensors +
                            " budget=" + std::to_string(o.covariance_budget)
                      : "") +
           (o.sequential ? " sequential step=" + std::to_string(ho.sequential_step) : "") +
           (o.refit_norms ? " refit-norms" : "");
}

}  // namespace

void refuse_for_blocks(const StreamQuantizeOptions & o) {
    if (o.quantize.keep_split) {
        throw Error("--keep-split is not written for a block-by-block quantization: write one file, then split it "
                    "with llama-gguf-split --split");
    }
    if (o.prior.target == PriorTarget::all_experts) {
        throw Error("--prior all-experts needs imx collect --all-experts first, which a block-by-block run does not "
                    "collect: give --imatrix");
    }
    if (o.sequential && !o.hessian) {
        throw Error("--sequential goes with --method hessian");
    }
    if (o.refit_norms && !o.hessian) {
        throw Error("--refit-norms goes with --method hessian (it fits against the covariances that collects)");
    }
}

namespace {

// One run's state, block after block.
class BlockQuantizer {
public:
    explicit BlockQuantizer(const StreamQuantizeOptions & o);
    StreamQuantizeResult run();

private:
    void write_tensor(const std::string & name, const QuantWeights * weights);
    void encode_block(int b, const Imatrix & sums, const Imatrix * covariances);
    void pass_plain(int b, const HiddenStates & in, HiddenStates * next, Imatrix & sums);
    TensorReplacements encoded_block(int b, const std::set<std::string> & except = {}) const;
    void encode_again(const Imatrix & shifted, bool fresh);
    void refit_norms(int b, const Imatrix & stats);
    void pass_sequential(int b, const HiddenStates & in, const HiddenStates & in_q, HiddenStates & next,
                         HiddenStates & next_q, Imatrix & sums);
    void encode_head(const Imatrix & head);
    void check_interrupt(int b) const;
    void progress(int b);
    void plan_progress(int b, size_t stages);

    const StreamQuantizeOptions & o_;
    const TensorTable             table_;
    TensorIo                      io_;
    const int                     threads_;
    int                           blocks_ = 0;
    size_t                        n_embd_ = 0;
    std::vector<Chunk>            chunks_;
    std::vector<size_t>           tokens_;
    std::vector<PlannedTensor>    plan_;
    ModelShapes                   shapes_;
    std::string                   ckpt_, scratch_base_;
    std::unique_ptr<QuantizedModelWriter> writer_;
    StreamQuantizeResult          res_;
    uint64_t                      passes_done_ = 0, passes_total_ = 0;
};

BlockQuantizer::BlockQuantizer(const StreamQuantizeOptions & o)
    : o_(o), table_(o.quantize.model), io_(table_, false),
      threads_(o.quantize.threads > 0 ? o.quantize.threads : (int) std::max(1u, std::thread::hardware_concurrency())) {
    check_block_streaming(table_);
    blocks_ = block_count(table_);
    n_embd_ = (size_t) embedding_length(table_);
    ModelPtr vocab = load_vocab_only(o.quantize.model);
    const CalibrationOptions co{o.text_file, o.chunk_size, 0, o.max_chunks, o.parse_special, is_chat_file(o.text_file), ""};
    chunks_ = calibration_chunks(co, vocab.get());
    if (chunks_.empty()) {
        throw Error(o.text_file + ": shorter than one chunk of " + std::to_string(o.chunk_size) + " tokens");
    }
    for (const Chunk & c : chunks_) {
        tokens_.push_back(c.size());
    }
    const QuantWeights ones = planning_weights(table_);
    QuantizeOptions plan = o.quantize;
    plan.weights = &ones;
    plan_ = plan_quantization(plan);
    shapes_ = model_tensor_shapes(o.quantize.model);
    ckpt_ = checkpoint_path(o.quantize.output);
    scratch_base_ = temporary_path(o.quantize.output);
}

// A tensor as llama-quantize writes it: copied where its type stays, else its rows in F32 through ggml's quantizer
// with the imatrix weights of its matrices — slab by slab (whole matrices, or ~64 MiB of F32 rows), so that a
// large embedding never sits in memory in F32 at once.
void BlockQuantizer::write_tensor(const std::string & name, const QuantWeights * weights) {
    const ggml_tensor * t = table_.find(name);
    const ggml_type to = writer_->type_of(name);
    if (to == t->type) {
        writer_->write(name, io_.read(name, 0, ggml_nbytes(t)));
        return;
    }
    const int64_t n = t->ne[0], rows = ggml_nrows(t), per_matrix = t->ne[1];
    const float * w = nullptr;
    if (weights) {
        const auto it = weights->tensors.find(name);
        w = it == weights->tensors.end() ? nullptr : it->second.data();
    }
    if (!w && ggml_quantize_requires_imatrix(to)) {
        throw Error(o_.quantize.model + ": " + o_.quantize.type + " needs an importance matrix for tensor " + name +
                    ", and the calibration text gave it none");
    }
    const size_t src_row = ggml_row_size(t->type, n), dst_row = ggml_row_size(to, n);
    // a slab: whole matrices where one is small, else a part of one (rows never span two matrices)
    const int64_t target = std::max<int64_t>(1, (64ll << 20) / (int64_t) (n * sizeof(float)));
    const int64_t slab = per_matrix <= target ? per_matrix * std::max<int64_t>(1, target / per_matrix) : target;
    std::vector<float> f;
    for (int64_t r0 = 0; r0 < rows;) {
        const int64_t r1 = std::min(rows, per_matrix <= target ? r0 + slab : std::min(r0 + slab, (r0 / per_matrix + 1) * per_matrix));
        const std::vector<uint8_t> src = io_.read(name, (size_t) r0 * src_row, (size_t) (r1 - r0) * src_row);
        f.resize((size_t) ((r1 - r0) * n));
        for (int64_t r = 0; r < r1 - r0; ++r) {
            to_float(t->type, src.data() + r * src_row, f.data() + r * n, n);
        }
        // rows_per_matrix as seen from r0: the slab starts a matrix, or lies inside one
        const std::vector<uint8_t> q = quantize_rows(to, f.data(), n, r1 - r0, per_matrix,
                                                     w ? w + (r0 / per_matrix) * n : nullptr, threads_);
        writer_->write_at(name, (size_t) r0 * dst_row, q.data(), q.size());
        r0 = r1;
    }
}

// Block b's tensors: the diagonal encoding with the unquantized stream's sums, then the Hessian encoder's
// rows where they are better. (--sequential encodes its blocks in pass_sequential.)
void BlockQuantizer::encode_block(int b, const Imatrix & sums, const Imatrix * covariances) {
    const auto t0 = std::chrono::steady_clock::now();
    const QuantWeights qw = quant_weights(sums, o_.prior, shapes_);
    for (const PlannedTensor & p : plan_) {
        if (block_of(p.name) == b) {
            write_tensor(p.name, &qw);
        }
    }
    if (covariances && !covariances->covariances.empty()) {
        HessianOptions h = o_.hessian_options;
        h.threads = threads_;
        std::vector<HessianTensorReport> r =
            hessian_reencode(o_.quantize.model, writer_->path(), *covariances, h, [](int, int) {});
        res_.reports.insert(res_.reports.end(), r.begin(), r.end());
        if (o_.refit_norms) {
            refit_norms(b, *covariances);
        }
    }
    res_.seconds_encode += seconds_since(t0);
}

namespace {

// The matrices that read each norm's output, by llama.cpp's names (a norm missing from a block is skipped).
struct NormReaders {
    const char *              norm;
    std::vector<const char *> readers;
};
const NormReaders kNormReaders[] = {
    {"attn_norm", {"attn_q", "attn_k", "attn_v", "attn_qkv", "attn_q_a", "attn_kv_a_mqa"}},
    {"ffn_norm", {"ffn_gate", "ffn_up", "ffn_gate_exps", "ffn_up_exps", "ffn_gate_shexp", "ffn_up_shexp", "ffn_gate_inp"}},
    {"attn_q_a_norm", {"attn_q_b"}},
};

std::vector<float> as_floats(ggml_type type, const std::vector<uint8_t> & bytes, int64_t n) {
    const size_t row = ggml_row_size(type, n);
    const size_t rows = bytes.size() / row;
    std::vector<float> out(rows * (size_t) n);
    for (size_t r = 0; r < rows; ++r) {
        to_float(type, bytes.data() + r * row, out.data() + r * (size_t) n, n);
    }
    return out;
}

}  // namespace

// Each norm of block b whose quantized readers all have a whole covariance: its weights times the fitted scales;
// F32 readers (kept unquantized: a MoE router) take the inverse scales on their columns. A norm with a reader
// that can take neither (an unquantized F16 one, a covariance in blocks or pooled over experts) is left as is.
void BlockQuantizer::refit_norms(int b, const Imatrix & stats) {
    const std::string p = "blk." + std::to_string(b) + ".";
    for (const NormReaders & nr : kNormReaders) {
        const std::string norm = p + nr.norm + ".weight";
        const ggml_tensor * g = table_.find(norm);
        if (!g || g->type != GGML_TYPE_F32 || writer_->type_of(norm) != GGML_TYPE_F32) {
            continue;
        }
        const int64_t n = g->ne[0];
        NormRefit fit(n);
        std::vector<std::string> exact;
        bool ok = true;
        int fitted = 0;
        for (const char * r : nr.readers) {
            const std::string name = p + r + ".weight";
            const ggml_tensor * t = table_.find(name);
            if (!t) {
                continue;
            }
            const ggml_type to = writer_->type_of(name);
            const Covariance * cv = stats.covariance_of(name);
            if (t->ne[0] != n) {
                ok = false;
            } else if (to == t->type) {
                ok = t->type == GGML_TYPE_F32;
                exact.push_back(name);
            } else if (!cv || !cv->full() || cv->n_mat != t->ne[2] || !cv->cross_out.empty()) {
                ok = false;
            } else {
                const std::vector<float> w = as_floats(t->type, io_.read(name, 0, ggml_nbytes(t)), n);
                const std::vector<float> wq = as_floats(to, writer_->read(name), n);
                const int64_t rows = t->ne[1];
                for (int64_t m = 0; m < cv->n_mat; ++m) {
                    if (cv->counts[m] > 0) {
                        const std::vector<double> h = cv->dense(m);
                        fit.add(w.data() + m * rows * n, wq.data() + m * rows * n, rows, h.data(),
                                cv->cross.empty() ? nullptr : cv->cross.data() + m * n * n);
                    }
                }
                fitted += 1;
            }
            if (!ok) {
                break;
            }
        }
        double gain = 0;
        const std::vector<double> s = ok && fitted > 0 ? fit.solve(o_.hessian_options.rounding.damp, &gain)
                                                       : std::vector<double>();
        if (!(gain > 0)) {
            continue;
        }
        std::vector<float> gv = as_floats(GGML_TYPE_F32, io_.read(norm, 0, ggml_nbytes(g)), n);
        for (int64_t i = 0; i < n; ++i) {
            gv[(size_t) i] *= (float) s[(size_t) i];
        }
        writer_->write_at(norm, 0, reinterpret_cast<const uint8_t *>(gv.data()), gv.size() * sizeof(float));
        for (const std::string & name : exact) {
            std::vector<float> x = as_floats(GGML_TYPE_F32, writer_->read(name), n);
            for (size_t k = 0; k < x.size(); ++k) {
                x[k] /= (float) s[k % (size_t) n];
            }
            writer_->write_at(name, 0, reinterpret_cast<const uint8_t *>(x.data()), x.size() * sizeof(float));
        }
        res_.norms_refit += 1;
        res_.norm_gain += gain;
    }
}

// --sequential's encoding toward the shifted targets: `fresh`, of matrices not written yet (a stage of a block);
// else row by row the better of it and what the output holds, under the shifted objective (the output head).
void BlockQuantizer::encode_again(const Imatrix & shifted, bool fresh) {
    const auto t0 = std::chrono::steady_clock::now();
    HessianOptions h = o_.hessian_options;
    h.threads = threads_;
    h.fresh = fresh;
    std::vector<HessianTensorReport> r = hessian_reencode(o_.quantize.model, writer_->path(), shifted, h, [](int, int) {});
    res_.sequential_reports.insert(res_.sequential_reports.end(), r.begin(), r.end());
    res_.seconds_encode += seconds_since(t0);
}

// The output head, whose input is the final norm of the last block's output: written first without imatrix
// weights (as llama-quantize writes a tensor its imatrix does not hold), then re-encoded row by row where the
// Hessian encoder does better under its input's covariance — with --sequential, that of the quantized stream's
// inputs, toward the targets shifted by the cross term against the float stream's, as every block's matrices in
// step 2. A head tied to token_embd is re-encoded under that objective with the lookup's own (add_lookup_term).
void BlockQuantizer::encode_head(const Imatrix & head) {
    if (!head.covariances.front().cross.empty()) {
        encode_again(head, false);
        return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    HessianOptions h = o_.hessian_options;
    h.threads = threads_;
    const std::vector<HessianTensorReport> r = hessian_reencode(o_.quantize.model, writer_->path(), head, h, [](int, int) {});
    res_.reports.insert(res_.reports.end(), r.begin(), r.end());
    res_.seconds_encode += seconds_since(t0);
}

void BlockQuantizer::check_interrupt(int b) const {
    if (const int sig = interrupted()) {
        throw Interrupted(sig, "interrupted (signal " + std::to_string(sig) + ") in block " + std::to_string(b) + " of " +
                                   std::to_string(blocks_) +
                                   (o_.save_every_block && b > 0
                                        ? "; " + ckpt_ + " holds blocks 0-" + std::to_string(b - 1) + ", --resume continues"
                                        : "; nothing saved (--save-every N keeps a checkpoint per block)"));
    }
}

// --sequential's chunk passes a block: step 1, a stage's run each, step 3 (passes_total_ assumed 3 until the
// first block's stages are known; every block of a model has as many).
void BlockQuantizer::plan_progress(int b, size_t stages) {
    const uint64_t chunks = chunks_.size();
    passes_total_ = passes_done_ + stages * chunks + chunks + (stages + 2) * chunks * (uint64_t) (blocks_ - b - 1);
}

void BlockQuantizer::progress(int b) {
    passes_done_ += 1;
    if (o_.progress) {
        o_.progress(b, blocks_, passes_done_, passes_total_);
    }
}

// The float block over h: sums (and covariances) into `sums`, its output into `next`.
void BlockQuantizer::pass_plain(int b, const HiddenStates & h, HiddenStates * next, Imatrix & sums) {
    const ScratchFile block_file(scratch_base_ + ".block.gguf");
    // as given: the type search collects its blocks with `collect`'s runner and expects these sums to the byte
    write_block_model(table_, io_, b, {}, block_file.path());
    ActivationCollector col(o_.chunk_size, false, false, threads_, o_.hessian ? o_.covariance_budget : 0);
    col.stop_after_last_weight(false);
    BlockRunner runner(block_file.path(), o_.chunk_size, threads_, o_.n_gpu_layers, ActivationCollector::eval_callback, &col);
    std::vector<float> in, out;
    for (size_t c = 0; c < chunks_.size(); ++c) {
        check_interrupt(b);
        h.read(c, in);
        col.begin_chunk((uint32_t) c);
        const bool ok = runner.run(in, out, (uint32_t) c);
        if (!ok || !col.error().empty()) {
            throw Error(o_.quantize.model + ": " + col.error() + " (block " + std::to_string(b) + ")");
        }
        if (next) {
            next->write(c, out.data());
        }
        progress(b);
    }
    add_block(sums, std::move(col.data()), b);
}

// The block's tensors as the output holds them now (but `except`), for a block model of the quantized stream.
TensorReplacements BlockQuantizer::encoded_block(int b, const std::set<std::string> & except) const {
    TensorReplacements encoded;
    for (const PlannedTensor & p : plan_) {
        if (block_of(p.name) == b && !except.contains(p.name)) {  // those kept in their type too: --refit-norms rewrites norms and routers
            encoded[p.name] = {writer_->type_of(p.name), writer_->read(p.name)};
        }
    }
    return encoded;
}

// --sequential, one block at a time:
//   1. the float block over h: sums, h_{b+1}, its matmul inputs X recorded chunk by chunk (engine/stream/
//      input_tape.h), and the order its matrices depend on one another in (engine/stream/block_stages.h);
//   2. stage by stage (q/k/v; attn_output; gate/up; down in a dense block), the block over h̃ with the matrices
//      of the stages before encoded and the rest in float, each run ending where the stage's inputs are made: their
//      X̃ᵀX̃ and X̃ᵀX (X̃ᵀY for ffn_down) → the stage encoded toward its shifted targets — so every matrix is fitted
//      to the inputs the file gives it, and encoded once;
//   3. the final block over h̃ → h̃_{b+1}.
//   Where a run of 2. or 3. needs only what earlier runs computed (a dense block: all but attn_output's stage), the
//   part of the block's graph that is new is replayed from the values they kept (engine/stream/block_replay.h).
// (Before, step 2 ran the whole block as a first Hessian encoding from XᵀX left it and encoded every matrix
// again: two encodings a block, and the later matrices fitted to inputs from the earlier ones' first encoding.
// Tried and not kept — cheaper, measured on held-out calibration text: the inputs within the block taken from
// the float block over h̃, or from the diagonal encoding: 5-7% higher KLD on both shared models; step 3 dropped,
// h̃_{b+1} taken from step 2's run: 13% higher on deepseek3-tiny; docs/streaming.md.)
void BlockQuantizer::pass_sequential(int b, const HiddenStates & h, const HiddenStates & hq, HiddenStates & next,
                                     HiddenStates & next_q, Imatrix & sums) {
    const auto t0 = std::chrono::steady_clock::now();
    const BlockPassSettings bp{scratch_base_,
                               o_.chunk_size,
                               threads_,
                               o_.n_gpu_layers,
                               fastest_block_weights(o_.n_gpu_layers),
                               o_.covariance_budget,
                               [&](size_t) { check_interrupt(b); },
                               [&](size_t) { progress(b); }};
    Imatrix first;  // step 1's sums
    InputTape float_inputs(scratch_base_ + ".inputs");
    BlockStages order;
    BlockGraph graph;
    {
        // --sequential encodes from the quantized stream's covariances alone: none of the float stream's
        ActivationCollector col(o_.chunk_size, false, false, threads_, 0);
        col.stop_after_last_weight(false);
        record_float_block(table_, io_, b, h, next, bp, float_inputs, order, graph, &col);
        add_block(first, std::move(col.data()), b);
    }
    for (const auto & [name, ts] : first.tensors) {
        sums.tensors[name] = ts;
    }
    res_.seconds_passes += seconds_since(t0);

    // the block model names block b's tensors blk.0.*
    const std::string prefix = "blk." + std::to_string(b) + ".";
    const auto in_model = [&](const std::string & graph_name) { return prefix + graph_name.substr(6); };
    const QuantWeights qw = quant_weights(first, o_.prior, shapes_);
    std::set<std::string> changed;  // by their names in the block model
    for (const PlannedTensor & p : plan_) {
        if (block_of(p.name) == b) {
            if (writer_->type_of(p.name) != table_.find(p.name)->type) {
                changed.insert("blk.0." + p.name.substr(prefix.size()));
            } else {
                write_tensor(p.name, &qw);  // norms, routers: as they are
            }
        }
    }
    const std::vector<std::vector<std::string>> stages = order.stages(changed);  // as the block model names them
    std::set<std::string> pending;  // not written yet: the block model takes them from the float model
    for (const std::vector<std::string> & stage : stages) {
        for (const std::string & w : stage) {
            pending.insert(in_model(w));
        }
    }
    for (const std::string & w : changed) {  // a matrix the graph never multiplied: the diagonal encoding
        if (!pending.contains(in_model(w))) {
            write_tensor(in_model(w), &qw);
        }
    }
    plan_progress(b, stages.size());
    res_.sequential_stages = std::max(res_.sequential_stages, (int) stages.size());
    const std::unique_ptr<BlockReplay> replay = block_replay(graph, stages, hq, bp, o_.refit_norms);
    for (const std::vector<std::string> & stage : stages) {
        const TensorReplacements done = encoded_block(b, pending);
        const auto t1 = std::chrono::steady_clock::now();
        float_inputs.rewind();
        Imatrix shifted = shifted_block_statistics(table_, io_, b, done, h, hq, next, bp, &float_inputs, stage, replay.get(),
                                                   (size_t) (&stage - stages.data()));
        res_.seconds_passes += seconds_since(t1);
        const size_t first_report = res_.sequential_reports.size();
        encode_again(shifted, true);
        if (o_.refit_norms) {
            refit_norms(b, shifted);
        }
        // a matrix without a covariance (budget, per-head weights) takes the diagonal encoding
        std::set<std::string> unencoded;
        for (const std::string & w : stage) {
            unencoded.insert(in_model(w));
        }
        for (size_t i = first_report; i < res_.sequential_reports.size(); ++i) {
            unencoded.erase(res_.sequential_reports[i].name);
        }
        for (const std::string & name : unencoded) {
            write_tensor(name, &qw);
        }
        for (const std::string & w : stage) {
            pending.erase(in_model(w));
        }
    }

    const auto t2 = std::chrono::steady_clock::now();
    finish_quantized_block(table_, io_, b, encoded_block(b), hq, next_q, bp, replay.get());
    res_.seconds_passes += seconds_since(t2);
}

StreamQuantizeResult BlockQuantizer::run() {
    const bool keep = o_.save_every_block || o_.resume;
    const std::string fp = fingerprint(o_, chunks_);
    if (o_.collected && (o_.sequential || keep)) {
        throw Error("statistics collected before go with neither --sequential nor checkpoints");
    }
    const int passes = o_.sequential ? 3 : 1;  // chunk passes counted: step 1, step 2 (plan_progress), step 3
    passes_total_ = o_.collected ? (uint64_t) blocks_ : (uint64_t) passes * chunks_.size() * (uint64_t) blocks_;
    QuantizedHeader header{o_.quantize.type,
                           o_.imatrix_output.empty() ? "imx quantize: collected block by block" : o_.imatrix_output,
                           o_.text_file, (uint32_t) chunks_.size()};

    // the hidden states of both streams, in scratch files or (kept) a checkpoint's
    const std::string stem = keep ? ckpt_ : scratch_base_;
    HiddenStream h(stem + ".hidden", keep, tokens_, n_embd_), hq(stem + ".qhidden", keep, tokens_, n_embd_);
    Imatrix sums;
    int start = 0;
    std::unique_ptr<ScratchFile> out_scratch;
    const std::string partial = keep ? ckpt_ + ".gguf" : scratch_base_;
    if (o_.resume && fs::exists(ckpt_)) {
        Checkpoint c = load_checkpoint(ckpt_);
        if (c.fingerprint != fp) {
            throw Error(ckpt_ + ": made by a different run (" + c.fingerprint + "), not this one (" + fp + ")");
        }
        start = (int) c.next_chunk;
        sums = std::move(c.data);
        writer_ = std::make_unique<QuantizedModelWriter>(table_, plan_, header, partial, true);
        h.resume(start);
        if (o_.sequential) {
            hq.resume(start);
        }
        res_.blocks_resumed = start;
        passes_done_ = (uint64_t) passes * chunks_.size() * (uint64_t) start;
    } else {
        out_scratch = std::make_unique<ScratchFile>(partial);
        writer_ = std::make_unique<QuantizedModelWriter>(table_, plan_, header, partial);
        for (const PlannedTensor & p : plan_) {  // outside the blocks: no imatrix weights, as llama-quantize
            if (block_of(p.name) < 0) {
                write_tensor(p.name, nullptr);
            }
        }
        if (!o_.collected) {
            embed_chunks(table_, io_, chunks_, nullptr, h.begin());
        }
        if (o_.sequential) {
            const ggml_type embd_type = writer_->type_of("token_embd.weight");
            const TensorBytes quantized{embd_type, writer_->read("token_embd.weight")};
            embed_chunks(table_, io_, chunks_, &quantized, hq.begin());
        }
    }

    const DeferInterrupts defer;
    for (int b = start; b < blocks_; ++b) {
        if (o_.sequential) {
            pass_sequential(b, h.input(), hq.input(), h.output(), hq.output(), sums);
        } else {
            const auto t0 = std::chrono::steady_clock::now();
            Imatrix block;
            if (o_.collected) {
                check_interrupt(b);
                block = o_.collected(b);
                progress(b);
            } else {
                pass_plain(b, h.input(), &h.output(), block);
            }
            res_.seconds_passes += seconds_since(t0);
            Imatrix block_sums;
            block_sums.tensors = block.tensors;
            for (auto & [name, ts] : block.tensors) {
                sums.tensors[name] = ts;
            }
            encode_block(b, block_sums, o_.hessian ? &block : nullptr);
        }
        if (keep) {
            writer_->sync();
            h.keep_output();
            if (o_.sequential) {
                hq.keep_output();
            }
            Checkpoint c{fp, (uint32_t) (b + 1), sums};
            save_checkpoint(c, ckpt_);
            if (out_scratch) {
                out_scratch->keep();  // the checkpoint's output so far
            }
        }
        if (!o_.collected) {
            h.advance();
        }
        if (o_.sequential) {
            hq.advance();
        }
    }
    if (o_.hessian) {
        const auto t0 = std::chrono::steady_clock::now();
        const int64_t n = (int64_t) n_embd_;
        Imatrix head;
        if (o_.collected) {
            head = o_.collected_head ? o_.collected_head() : Imatrix{};
        } else if (o_.sequential) {  // the cross term needs the whole covariance, and as much again
            if (2 * covariance_bytes(n, n, 1) <= o_.covariance_budget) {
                head = head_statistics(table_, io_, h.input(), n, &hq.input());
            }
        } else if (const int64_t block = choose_covariance_block(n, 1, o_.covariance_budget);
                   block == n || (block > 0 && has_output_head(table_))) {  // a tied head's objective: whole
            head = head_statistics(table_, io_, h.input(), block);
        }
        res_.seconds_passes += seconds_since(t0);
        if (!head.covariances.empty()) {
            if (!has_output_head(table_)) {
                add_lookup_term(head);
            }
            encode_head(head);
        }
    }
    h.finish();
    if (o_.sequential) {
        hq.finish();
    }
    const QuantWeights all = quant_weights(sums, o_.prior, shapes_);
    res_.matrices = all.n_matrices;
    res_.matrices_unseen = all.n_unseen;
    sums.meta = {.datasets = {o_.text_file}, .chunk_count = (uint32_t) chunks_.size(), .chunk_size = o_.chunk_size};
    if (!o_.imatrix_output.empty()) {
        save_imatrix(sums, o_.imatrix_output, ImatrixFormat::gguf);
    }
    writer_->finish((uint32_t) all.tensors.size(), o_.quantize.output);
    if (keep) {
        std::error_code ec;
        fs::remove(ckpt_, ec);
    }
    res_.imatrix = std::move(sums);
    res_.blocks = blocks_;
    res_.chunks = (uint32_t) chunks_.size();
    return res_;
}

}  // namespace

StreamQuantizeResult quantize_by_blocks(const StreamQuantizeOptions & o) {
    refuse_for_blocks(o);
    init_llama(o.verbose);
    return BlockQuantizer(o).run();
}

}  // namespace imx::engine
