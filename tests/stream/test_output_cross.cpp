// Step 2 of --sequential takes the cross term of a block's last matrix (a dense ffn_down, fewer rows than
// columns) as X̃ᵀY against the float block's outputs Y = X Wᵀ instead of X̃ᵀX (core/covariance.h: cross_out).
// On deepseek3-tiny's dense block 0, the two ways give the same statistics and the same shifted targets: the
// covariances are the same bytes, X̃ᵀY is X̃ᵀX·Wᵀ to ggml's F16 rounding of X in its own product, and the other
// inputs keep their X̃ᵀX.
#include "helpers.h"
#include "stream/quantized_block.h"

#include "core/math/covariance.h"
#include "engine/collect/calibration.h"
#include "engine/collect/target_inputs.h"
#include "engine/encode/matrix_hessian.h"
#include "engine/encode/sequential_encoder.h"
#include "engine/model/llama_model.h"
#include "engine/model/tensor_file.h"
#include "engine/stream/block_model.h"
#include "engine/stream/block_runner.h"
#include "engine/stream/hidden_states.h"
#include "engine/stream/input_tape.h"
#include "engine/stream/token_embeddings.h"

#include "ggml.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

using namespace imx;
using namespace imx::test;
using namespace imx::engine;

TEST(OutputCross, TheFloatOutputsGiveTheSameShiftedTargets) {
    const std::string path = shared("models/deepseek3-tiny.gguf");
    init_llama(false);
    const TensorTable model(path);
    TensorIo io(model, false);
    const ModelPtr vocab = load_vocab_only(path);
    const std::vector<Chunk> chunks =
        calibration_chunks({shared("data/calibration.txt"), 128, 0, 3, false, false, ""}, vocab.get());
    ASSERT_EQ(chunks.size(), 3u);
    std::vector<size_t> tokens;
    for (const Chunk & c : chunks) {
        tokens.push_back(c.size());
    }
    const size_t n_embd = (size_t) embedding_length(model);
    const std::string dir = fresh_dir("output-cross");
    HiddenStates h(dir + "/h", tokens, n_embd), hq(dir + "/hq", tokens, n_embd), next(dir + "/next", tokens, n_embd);
    embed_chunks(model, io, chunks, nullptr, h);
    embed_chunks(model, io, chunks, nullptr, hq);  // the quantized stream differs by block 0's own encoding

    // the float block's matmul inputs recorded twice: as they are, and with ffn_down's outputs instead
    write_block_model(model, io, 0, {}, dir + "/block.gguf");
    InputTape inputs(dir + "/inputs.tape"), outputs(dir + "/outputs.tape");
    for (InputTape * tape : {&inputs, &outputs}) {
        TargetInputs ti;
        ti.stop_after_last_input(false);
        if (tape == &outputs) {
            ti.record_outputs_of(kBlockOutputMatrices);
        }
        BlockRunner runner(dir + "/block.gguf", 128, 2, 0, TargetInputs::eval_callback, &ti);
        std::vector<float> in, out;
        for (size_t c = 0; c < chunks.size(); ++c) {
            h.read(c, in);
            ti.begin_chunk();
            ASSERT_TRUE(runner.run(in, out, (uint32_t) c));
            if (tape == &outputs) {
                ASSERT_NE(ti.find_output("blk.0.ffn_down.weight"), nullptr);
                EXPECT_EQ(ti.find("blk.0.ffn_down.weight"), nullptr);
            }
            tape->write(ti);
        }
        tape->rewind();
    }
    const TensorReplacements repl = quantized_block(model, io, GGML_TYPE_Q4_0);
    const BlockPassSettings bp{dir + "/scratch", 128, 2, 0, BlockWeights::as_given, 1ull << 30, nullptr, nullptr};
    const Imatrix a = shifted_block_statistics(model, io, 0, repl, h, hq, next, bp, &inputs);
    const Imatrix b = shifted_block_statistics(model, io, 0, repl, h, hq, next, bp, &outputs);

    ASSERT_EQ(a.covariances.size(), b.covariances.size());
    int others = 0;
    for (size_t i = 0; i < a.covariances.size(); ++i) {
        const Covariance & ca = a.covariances[i], & cb = b.covariances[i];
        ASSERT_EQ(ca.readers, cb.readers);
        EXPECT_EQ(ca.values, cb.values) << ca.readers[0];  // the quantized block over hq, both times
        EXPECT_EQ(ca.counts, cb.counts) << ca.readers[0];
        if (ca.readers[0] != "blk.0.ffn_down.weight" && ca.full() && ca.n_mat == 1) {
            EXPECT_EQ(ca.cross, cb.cross) << ca.readers[0];
            EXPECT_TRUE(cb.cross_out.empty()) << ca.readers[0];
            ++others;
        }
    }
    EXPECT_GE(others, 2);  // attn_q_a/attn_kv_a_mqa's input, ffn_gate/up's, attn_output's

    const Covariance * ca = a.covariance_of("blk.0.ffn_down.weight");
    const Covariance * cb = b.covariance_of("blk.0.ffn_down.weight");
    ASSERT_TRUE(ca && cb);
    ASSERT_TRUE(ca->full() && cb->full());
    const int64_t n = ca->n_cols;
    const ggml_tensor * wt = model.find("blk.0.ffn_down.weight");
    const int64_t rows = wt->ne[1];
    ASSERT_LT(rows, n);
    ASSERT_EQ(ca->cross.size(), (size_t) (n * n));
    EXPECT_TRUE(ca->cross_out.empty());
    EXPECT_TRUE(cb->cross.empty());
    ASSERT_EQ(cb->out_rows, rows);
    ASSERT_EQ(cb->cross_out.size(), (size_t) (n * rows));
    std::vector<float> w((size_t) (rows * n));
    to_float(wt->type, io.read(wt->name, 0, ggml_nbytes(wt)).data(), w.data(), rows * n);

    // X̃ᵀY = X̃ᵀX·Wᵀ, to ggml's rounding of X to F16 in its product (2⁻¹¹ relative, on each term's size)
    double worst = 0;
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t r = 0; r < rows; ++r) {
            double expected = 0, size = 0;
            for (int64_t j = 0; j < n; ++j) {
                const double term = ca->cross[(size_t) (i * n + j)] * w[(size_t) (r * n + j)];
                expected += term;
                size += std::fabs(term);
            }
            const double got = cb->cross_out[(size_t) (i * rows + r)];
            worst = std::max(worst, std::fabs(got - expected) / (size + 1e-30));
        }
    }
    EXPECT_LT(worst, 5e-4);

    // the shifted targets: the same to a small fraction of the shift itself, which is not nothing
    const MatrixHessians ha(*ca, a.tensors.at("blk.0.ffn_down.weight"), 1, 1.0);
    const MatrixHessian hm = ha.of(0);
    const HessianRounder rounder(hm.values, hm.scale, n, n, 32, HessianRoundingOptions{});
    std::vector<float> ta = w, tb = w;
    const TargetShift sa = cross_shift(*ca, 0, 1.0, 1.0), sb = cross_shift(*cb, 0, 1.0, 1.0);
    ASSERT_FALSE(sa.d.empty());
    ASSERT_FALSE(sb.p.empty());
    shift_targets(rounder, sa, ta.data(), rows);
    shift_targets(rounder, sb, tb.data(), rows);
    double shift = 0, diff = 0;
    for (size_t k = 0; k < w.size(); ++k) {
        shift += (double) (ta[k] - w[k]) * (ta[k] - w[k]);
        diff += (double) (ta[k] - tb[k]) * (ta[k] - tb[k]);
    }
    EXPECT_GT(shift, 0.0);
    EXPECT_LT(std::sqrt(diff), 3e-2 * std::sqrt(shift));  // measured: 0.6% (F16 rounding, H⁻¹)
    // a subset of rows, as the type search samples them, gets the same rows' targets
    const std::vector<int64_t> picked = {1, 7, rows - 1};
    std::vector<float> some((size_t) (picked.size() * n));
    for (size_t k = 0; k < picked.size(); ++k) {
        std::copy_n(w.data() + picked[k] * n, n, some.data() + k * n);
    }
    shift_targets(rounder, sb, some.data(), (int64_t) picked.size(), picked.data());
    // to 0.1% of the row's largest shift: the solves round by the row's sums, not by one value's shift (OpenBLAS's
    // Haswell kernels on 3 rows and on all of them differed by 1.3e-6 on a value its shift moved by 1.2e-3)
    for (size_t k = 0; k < picked.size(); ++k) {
        double row_shift = 0;
        for (int64_t j = 0; j < n; ++j) {
            row_shift = std::max(row_shift, (double) std::fabs(tb[(size_t) (picked[k] * n + j)] - w[(size_t) (picked[k] * n + j)]));
        }
        for (int64_t j = 0; j < n; ++j) {
            const float want = tb[(size_t) (picked[k] * n + j)];
            ASSERT_NEAR(some[k * n + j], want, 1e-3 * row_shift + 1e-6 * std::fabs(want)) << "row " << picked[k];
        }
    }
}
