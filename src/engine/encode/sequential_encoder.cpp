#include "engine/encode/sequential_encoder.h"

#include "core/error.h"
#include "core/interrupt.h"
#include "engine/collect/activation_collector.h"
#include "engine/collect/calibration.h"
#include "engine/collect/collect.h"
#include "engine/collect/target_inputs.h"
#include "engine/model/llama_model.h"
#include "engine/stream/block_runner.h"
#include "engine/stream/hidden_stream.h"
#include "engine/stream/token_embeddings.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <regex>
#include <set>

namespace imx::engine {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Architectures the block runner is not written for: both models from their first layer again for every
// layer (collect --target-model, only layer l's weights; each pass ends after that layer).
std::vector<SequentialLayerReport> whole_model_passes(const std::string & model, const std::string & quantized,
                                                      const HessianOptions & o, const SequentialOptions & s, int layers,
                                                      const std::function<void(int, int)> & progress) {
    std::vector<SequentialLayerReport> reports;
    for (int l = 0; l < layers; ++l) {
        const std::string only = "^blk\\." + std::to_string(l) + "\\.";
        CollectOptions co;
        co.model = quantized;
        co.target_model = model;
        co.text_file = s.text_file;
        co.output = quantized + ".sequential";  // names the checkpoint, which is never written
        co.chunk_size = s.chunk_size;
        co.max_chunks = s.max_chunks;
        co.threads = o.threads;
        co.covariance_budget = s.covariance_budget;
        co.covariance_tensors = only;
        co.only_tensors = only;
        const auto t0 = std::chrono::steady_clock::now();
        const CollectResult r = collect(co, [](const CollectProgress &) {});
        SequentialLayerReport report;
        report.layer = l;
        report.seconds_collect = seconds_since(t0);
        // only layer l holds covariances in r.imatrix, so only its tensors are encoded again
        report.tensors = hessian_reencode(model, quantized, r.imatrix, o, [](int, int) {});
        reports.push_back(std::move(report));
        progress(l + 1, layers);
    }
    return reports;
}

// Block b's tensors as `quantized` holds them now (read afresh: the encoder rewrites them in place).
TensorReplacements block_tensors(const std::string & quantized, int b) {
    const TensorTable table(quantized);
    TensorIo io(table, false);
    TensorReplacements out;
    for (const std::string & name : table.names()) {
        if (block_of(name) == b) {
            const ggml_tensor * t = table.find(name);
            out[name] = {t->type, io.read(name, 0, ggml_nbytes(t))};
        }
    }
    return out;
}

// A regex matching exactly `weights`, for the collector's only_tensors.
std::string pattern_of(const std::vector<std::string> & weights) {
    std::string p;
    for (const std::string & w : weights) {
        p += (p.empty() ? "^(" : "|") + std::regex_replace(w, std::regex(R"(\.)"), R"(\.)");
    }
    return p + ")$";
}

}  // namespace

Imatrix shifted_block_statistics(const TensorTable & model, TensorIo & io, int b, const TensorReplacements & quantized,
                                 const HiddenStates & h, const HiddenStates & hq, HiddenStates & next,
                                 const BlockPassSettings & s, InputTape * recorded, const std::vector<std::string> & stage,
                                 BlockReplay * replay, size_t stage_index) {
    TargetInputs float_inputs;
    float_inputs.stop_after_last_input(false);
    float_inputs.record_outputs_of(kBlockOutputMatrices);
    std::unique_ptr<ScratchFile> float_file;
    std::unique_ptr<BlockRunner> float_runner;
    if (recorded && !stage.empty()) {
        float_inputs.only(pattern_of(stage));  // the tape holds every stage's inputs: this stage's are read
    }
    if (!recorded) {
        float_file = std::make_unique<ScratchFile>(s.scratch + ".block.gguf");
        write_block_model(model, io, b, {}, float_file->path());
        float_runner = std::make_unique<BlockRunner>(float_file->path(), s.chunk_size, s.threads, s.n_gpu_layers,
                                                     TargetInputs::eval_callback, &float_inputs);
    }
    ActivationCollector quant_cov(s.chunk_size, false, false, s.threads, s.covariance_budget);
    quant_cov.stop_after_last_weight(!stage.empty());
    if (!stage.empty()) {
        quant_cov.only_tensors(pattern_of(stage));
        quant_cov.stop_at_inputs(true);  // a stage's run: its own matmuls' outputs are not needed
        quant_cov.expect_weights({stage.begin(), stage.end()});
    }
    quant_cov.cross_with(&float_inputs);
    // the quantized stream: the part of the block's graph that is new replayed, else a run of the block model
    std::unique_ptr<GraphReplay> quant_replay =
        replay ? replay->stage(stage_index, model, io, b, quantized, s.threads, ActivationCollector::eval_callback, &quant_cov)
               : nullptr;
    EvalChain chain;
    chain.add(ActivationCollector::eval_callback, &quant_cov);
    if (replay && !quant_replay) {
        chain.add(BlockReplay::eval_callback, replay);
    }
    std::unique_ptr<ScratchFile> quant_file;
    std::unique_ptr<BlockRunner> quant_runner;
    if (!quant_replay) {
        quant_file = std::make_unique<ScratchFile>(s.scratch + ".qblock.gguf");
        write_block_model(model, io, b, quantized, quant_file->path(), s.weights);
        quant_runner = std::make_unique<BlockRunner>(quant_file->path(), s.chunk_size, s.threads, s.n_gpu_layers,
                                                     EvalChain::callback, &chain);
    }
    std::vector<float> in, out;
    for (size_t c = 0; c < hq.chunks(); ++c) {
        if (s.before_chunk) {
            s.before_chunk(c);
        }
        if (recorded) {
            recorded->read(float_inputs);
        } else {
            h.read(c, in);
            float_inputs.begin_chunk();
            float_runner->run(in, out, (uint32_t) c);
            next.write(c, out.data());
        }
        hq.read(c, in);
        quant_cov.begin_chunk((uint32_t) c);
        if (replay) {
            replay->begin_chunk(c);
        }
        const bool whole = quant_replay ? quant_replay->run(in, out, c) : quant_runner->run(in, out, (uint32_t) c);
        if ((!whole && stage.empty()) || !quant_cov.error().empty()) {
            throw Error(model.path() + ": " + quant_cov.error() + " (block " + std::to_string(b) +
                        ", the quantized stream, chunk " + std::to_string(c) + ")");
        }
        if (s.after_chunk) {
            s.after_chunk(c);
        }
    }
    Imatrix shifted;
    add_block(shifted, std::move(quant_cov.data()), b);
    return shifted;
}

void record_float_block(const TensorTable & model, TensorIo & io, int b, const HiddenStates & h, HiddenStates & next,
                        const BlockPassSettings & s, InputTape & tape, BlockStages & stages, BlockGraph & graph,
                        ActivationCollector * sums) {
    const ScratchFile block_file(s.scratch + ".block.gguf");
    // as given: the type search collects its blocks with `collect`'s runner and expects these sums to the byte
    write_block_model(model, io, b, {}, block_file.path());
    TargetInputs inputs;
    inputs.stop_after_last_input(false);
    inputs.record_outputs_of(kBlockOutputMatrices);  // step 2's cross term for them: X̃ᵀY
    EvalChain chain;
    if (sums) {
        chain.add(ActivationCollector::eval_callback, sums);
    }
    chain.add(TargetInputs::eval_callback, &inputs);
    chain.add(BlockStages::eval_callback, &stages);
    chain.add(BlockGraph::eval_callback, &graph);
    BlockRunner runner(block_file.path(), s.chunk_size, s.threads, s.n_gpu_layers, EvalChain::callback, &chain);
    std::vector<float> in, out;
    for (size_t c = 0; c < h.chunks(); ++c) {
        if (s.before_chunk) {
            s.before_chunk(c);
        }
        h.read(c, in);
        if (sums) {
            sums->begin_chunk((uint32_t) c);
        }
        inputs.begin_chunk();
        const bool ok = runner.run(in, out, (uint32_t) c);
        if (!ok || (sums && !sums->error().empty())) {
            throw Error(model.path() + ": " + (sums ? sums->error() : std::string("the float block stopped early")) +
                        " (block " + std::to_string(b) + ")");
        }
        stages.stop();
        next.write(c, out.data());
        tape.write(inputs);
        if (s.after_chunk) {
            s.after_chunk(c);
        }
    }
}

void run_block(const TensorTable & model, TensorIo & io, int b, const TensorReplacements & tensors,
               const HiddenStates & in, HiddenStates & out, const BlockPassSettings & s) {
    const ScratchFile file(s.scratch + ".qblock.gguf");
    write_block_model(model, io, b, tensors, file.path(), s.weights);
    BlockRunner runner(file.path(), s.chunk_size, s.threads, s.n_gpu_layers);
    std::vector<float> x, y;
    for (size_t c = 0; c < in.chunks(); ++c) {
        if (s.before_chunk) {
            s.before_chunk(c);
        }
        in.read(c, x);
        runner.run(x, y, (uint32_t) c);
        out.write(c, y.data());
        if (s.after_chunk) {
            s.after_chunk(c);
        }
    }
}

std::unique_ptr<BlockReplay> block_replay(const BlockGraph & graph, const std::vector<std::vector<std::string>> & stages,
                                          const HiddenStates & hq, const BlockPassSettings & s, bool norms_change,
                                          uint64_t kept_in_memory) {
    std::vector<size_t> tokens;
    const int out = graph.output();
    if (out >= 0) {
        const auto n_embd = (size_t) graph.tensors()[(size_t) out].copy.ne[0];
        for (size_t c = 0; c < hq.chunks(); ++c) {
            tokens.push_back(hq.floats(c) / n_embd);
        }
    }
    // f16: the CPU (fastest_block_weights), where the replays multiply as the graph does
    return std::make_unique<BlockReplay>(graph, stages, tokens, s.scratch, s.weights == BlockWeights::f16 && !norms_change,
                                         kept_in_memory);
}

void finish_quantized_block(const TensorTable & model, TensorIo & io, int b, const TensorReplacements & tensors,
                            const HiddenStates & in, HiddenStates & out, const BlockPassSettings & s,
                            BlockReplay * replay) {
    const std::unique_ptr<GraphReplay> r = replay ? replay->output(model, io, b, tensors, s.threads) : nullptr;
    if (!r) {
        run_block(model, io, b, tensors, in, out, s);
        return;
    }
    std::vector<float> x, y;
    for (size_t c = 0; c < in.chunks(); ++c) {
        if (s.before_chunk) {
            s.before_chunk(c);
        }
        in.read(c, x);
        r->run(x, y, c);
        out.write(c, y.data());
        if (s.after_chunk) {
            s.after_chunk(c);
        }
    }
}

std::vector<SequentialLayerReport> sequential_reencode(const std::string & model, const std::string & quantized,
                                                       const HessianOptions & o, const SequentialOptions & s,
                                                       const std::function<void(int, int)> & progress) {
    const TensorTable table(model);
    const int layers = block_count(table);
    if (layers == 0) {
        throw Error(model + ": no blocks to quantize in sequence");
    }
    if (!block_streaming_supported(table)) {
        return whole_model_passes(model, quantized, o, s, layers, progress);
    }
    TensorIo io(table, false);
    ModelPtr vocab = load_vocab_only(model);
    const CalibrationOptions co{s.text_file, s.chunk_size, 0, s.max_chunks, false, is_chat_file(s.text_file), ""};
    const std::vector<Chunk> chunks = calibration_chunks(co, vocab.get());
    if (chunks.empty()) {
        throw Error(s.text_file + ": shorter than one chunk of " + std::to_string(s.chunk_size) + " tokens");
    }
    std::vector<size_t> tokens;
    for (const Chunk & c : chunks) {
        tokens.push_back(c.size());
    }
    const size_t n_embd = (size_t) embedding_length(table);
    const std::string base = quantized + ".seq";
    HiddenStream h(base + ".hidden", false, tokens, n_embd), hq(base + ".qhidden", false, tokens, n_embd);
    embed_chunks(table, io, chunks, nullptr, h.begin());
    {
        const TensorTable qt(quantized);
        TensorIo qio(qt, false);
        const ggml_tensor * e = qt.find("token_embd.weight");
        if (!e) {
            throw Error(quantized + ": no token_embd.weight");
        }
        const TensorBytes embd{e->type, qio.read("token_embd.weight", 0, ggml_nbytes(e))};
        embed_chunks(table, io, chunks, &embd, hq.begin());
    }
    BlockPassSettings bp{base, s.chunk_size, o.threads, 0, fastest_block_weights(0), s.covariance_budget, nullptr, nullptr};
    int layer = 0;
    bp.before_chunk = [&](size_t c) {
        if (const int sig = interrupted()) {
            throw Interrupted(sig, "interrupted (signal " + std::to_string(sig) + ") in the sequential pass, layer " +
                                       std::to_string(layer) + ", chunk " + std::to_string(c));
        }
    };
    std::vector<SequentialLayerReport> reports;
    for (; layer < layers; ++layer) {
        SequentialLayerReport report;
        report.layer = layer;
        auto t0 = std::chrono::steady_clock::now();
        InputTape tape(base + ".inputs");
        BlockStages order;
        BlockGraph graph;
        HiddenStates & next = h.output();  // (each call of output() starts a new file)
        record_float_block(table, io, layer, h.input(), next, bp, tape, order, graph);
        report.seconds_collect = seconds_since(t0);
        // stage by stage (as the block-by-block --sequential: engine/encode/stream_quantize.cpp), each matrix
        // against the inputs the matrices before it give it, as re-encoded in this pass
        const TensorTable qt(quantized);
        const std::string prefix = "blk." + std::to_string(layer) + ".";
        std::set<std::string> changed;  // by their names in the block model
        for (const std::string & name : table.names()) {
            const ggml_tensor * q = qt.find(name);
            if (block_of(name) == layer && q && q->type != table.find(name)->type) {
                changed.insert("blk.0." + name.substr(prefix.size()));
            }
        }
        const std::vector<std::vector<std::string>> stages = order.stages(changed);
        const std::unique_ptr<BlockReplay> replay = block_replay(graph, stages, hq.input(), bp, false);
        for (size_t k = 0; k < stages.size(); ++k) {
            t0 = std::chrono::steady_clock::now();
            tape.rewind();
            const Imatrix shifted = shifted_block_statistics(table, io, layer, block_tensors(quantized, layer), h.input(),
                                                             hq.input(), next, bp, &tape, stages[k], replay.get(), k);
            report.seconds_collect += seconds_since(t0);
            std::vector<HessianTensorReport> r = hessian_reencode(model, quantized, shifted, o, [](int, int) {});
            report.tensors.insert(report.tensors.end(), r.begin(), r.end());
        }
        t0 = std::chrono::steady_clock::now();
        finish_quantized_block(table, io, layer, block_tensors(quantized, layer), hq.input(), hq.output(), bp,
                               replay.get());
        report.seconds_collect += seconds_since(t0);
        reports.push_back(std::move(report));
        h.advance();
        hq.advance();
        progress(layer + 1, layers);
    }
    return reports;
}

}  // namespace imx::engine
