#include "engine/model/synth_model.h"

#include "core/format/atomic_file.h"
#include "core/error.h"
#include "core/interrupt.h"

#include "ggml.h"
#include "gguf.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace imx::engine {

namespace {

struct GgufFree { void operator()(gguf_context * c) const { gguf_free(c); } };
struct GgmlFree { void operator()(ggml_context * c) const { ggml_free(c); } };

// xorshift64*: fast, reproducible; uniform in [-a, a]
struct Rng {
    uint64_t s;
    float next(float a) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        const uint64_t r = s * 2685821657736338717ull;
        return a * (2.0f * (float) (r >> 40) / (float) (1ull << 24) - 1.0f);
    }
};

// The tokenizer's per-token arrays grown to n_vocab: control tokens that no text tokenizes to, so the model's
// embedding and output head have a real vocabulary's width while tokenization stays the source's.
void pad_vocabulary(gguf_context * dst, const gguf_context * src, int64_t n_source, int64_t n_vocab) {
    const int64_t tokens = gguf_find_key(src, "tokenizer.ggml.tokens");
    std::vector<std::string> names;
    for (int64_t i = 0; i < n_source; ++i) {
        names.push_back(gguf_get_arr_str(src, tokens, i));
    }
    for (int64_t i = n_source; i < n_vocab; ++i) {
        names.push_back("<|imx_pad_" + std::to_string(i) + "|>");
    }
    std::vector<const char *> ptrs;
    for (const std::string & n : names) {
        ptrs.push_back(n.c_str());
    }
    gguf_set_arr_str(dst, "tokenizer.ggml.tokens", ptrs.data(), ptrs.size());
    if (const int64_t k = gguf_find_key(src, "tokenizer.ggml.token_type"); k >= 0 && gguf_get_arr_type(src, k) == GGUF_TYPE_INT32) {
        std::vector<int32_t> types((size_t) n_vocab, 3);  // LLAMA_TOKEN_TYPE_CONTROL
        std::copy_n(static_cast<const int32_t *>(gguf_get_arr_data(src, k)), n_source, types.begin());
        gguf_set_arr_data(dst, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types.data(), types.size());
    }
    if (const int64_t k = gguf_find_key(src, "tokenizer.ggml.scores"); k >= 0 && gguf_get_arr_type(src, k) == GGUF_TYPE_FLOAT32) {
        std::vector<float> scores((size_t) n_vocab, 0.0f);
        std::copy_n(static_cast<const float *>(gguf_get_arr_data(src, k)), n_source, scores.begin());
        gguf_set_arr_data(dst, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores.data(), scores.size());
    }
}

}  // namespace

namespace {

// The matmul weights' type, after checking the shape options make a model.
ggml_type checked_weight_type(const SynthOptions & o) {
    const bool moe = o.arch == "qwen3moe" || o.arch == "deepseek2";
    if (o.arch != "qwen3" && !moe) {
        throw Error("synth: unknown architecture '" + o.arch + "' (qwen3, qwen3moe, deepseek2)");
    }
    if (moe && (o.experts < 2 || o.experts_used < 1 || o.experts_used > o.experts)) {
        throw Error("synth: " + o.arch + " needs --experts >= 2 and 1 <= --experts-used <= --experts");
    }
    const ggml_type wtype = o.weight_type == "q8_0" ? GGML_TYPE_Q8_0 : o.weight_type == "q4_0" ? GGML_TYPE_Q4_0
                                                                                                : GGML_TYPE_F16;
    if (wtype == GGML_TYPE_F16 && o.weight_type != "f16") {
        throw Error("synth: --weight-type '" + o.weight_type + "' (f16, q8_0, q4_0)");
    }
    return wtype;
}

// The architecture's keys, as llama.cpp's converter writes them for this shape.
void set_architecture_keys(gguf_context * dst, const SynthOptions & o, ggml_type wtype) {
    const bool mla = o.arch == "deepseek2";
    const bool moe = o.arch == "qwen3moe" || mla;
    const std::string a = o.arch;
    gguf_set_val_str(dst, "general.architecture", a.c_str());
    gguf_set_val_str(dst, "general.name", ("imx synthetic " + a).c_str());
    gguf_set_val_u32(dst, "general.file_type", wtype == GGML_TYPE_Q8_0 ? 7 : wtype == GGML_TYPE_Q4_0 ? 2 : 1);
    gguf_set_val_u32(dst, (a + ".block_count").c_str(), o.layers);
    gguf_set_val_u32(dst, (a + ".context_length").c_str(), o.context);
    gguf_set_val_u32(dst, (a + ".embedding_length").c_str(), o.embd);
    gguf_set_val_u32(dst, (a + ".feed_forward_length").c_str(), o.ff);
    gguf_set_val_u32(dst, (a + ".attention.head_count").c_str(), o.heads);
    if (mla) {  // the absorbed MLA layout llama.cpp converts DeepSeek-V3 to: one latent KV "head"
        gguf_set_val_u32(dst, (a + ".attention.head_count_kv").c_str(), 1);
        gguf_set_val_u32(dst, (a + ".attention.key_length").c_str(), o.kv_lora + o.rope_dim);
        gguf_set_val_u32(dst, (a + ".attention.value_length").c_str(), o.kv_lora);
        gguf_set_val_u32(dst, (a + ".attention.key_length_mla").c_str(), o.head_dim + o.rope_dim);
        gguf_set_val_u32(dst, (a + ".attention.value_length_mla").c_str(), o.head_dim);
        gguf_set_val_u32(dst, (a + ".attention.q_lora_rank").c_str(), o.q_lora);
        gguf_set_val_u32(dst, (a + ".attention.kv_lora_rank").c_str(), o.kv_lora);
        gguf_set_val_u32(dst, (a + ".rope.dimension_count").c_str(), o.rope_dim);
        gguf_set_val_u32(dst, (a + ".leading_dense_block_count").c_str(), o.dense_layers);
        gguf_set_val_u32(dst, (a + ".expert_shared_count").c_str(), o.shared_experts);
        gguf_set_val_f32(dst, (a + ".expert_weights_scale").c_str(), 2.5f);
        gguf_set_val_bool(dst, (a + ".expert_weights_norm").c_str(), true);
        gguf_set_val_u32(dst, (a + ".expert_gating_func").c_str(), 2);  // sigmoid, as DeepSeek-V3
        gguf_set_val_u32(dst, (a + ".expert_group_count").c_str(), 1);
        gguf_set_val_u32(dst, (a + ".expert_group_used_count").c_str(), 1);
    } else {
        gguf_set_val_u32(dst, (a + ".attention.head_count_kv").c_str(), o.kv_heads);
        gguf_set_val_u32(dst, (a + ".attention.key_length").c_str(), o.head_dim);
        gguf_set_val_u32(dst, (a + ".attention.value_length").c_str(), o.head_dim);
    }
    gguf_set_val_f32(dst, (a + ".attention.layer_norm_rms_epsilon").c_str(), 1e-6f);
    gguf_set_val_f32(dst, (a + ".rope.freq_base").c_str(), 1000000.0f);
    if (moe) {
        gguf_set_val_u32(dst, (a + ".expert_count").c_str(), o.experts);
        gguf_set_val_u32(dst, (a + ".expert_used_count").c_str(), o.experts_used);
        gguf_set_val_u32(dst, (a + ".expert_feed_forward_length").c_str(), o.expert_ff);
    }
}

// Every tensor's name, type and shape (metadata only: the data is streamed by write_tensors).
std::vector<ggml_tensor *> declare_tensors(ggml_context * ctx, gguf_context * dst, const SynthOptions & o,
                                           int64_t n_vocab, ggml_type wtype) {
    const bool mla = o.arch == "deepseek2";
    const bool moe = o.arch == "qwen3moe" || mla;
        std::vector<ggml_tensor *> tensors;
    auto add = [&](const std::string & name, ggml_type type, std::vector<int64_t> ne) {
        ggml_tensor * t = ggml_new_tensor(ctx, type, (int) ne.size(), ne.data());
        ggml_set_name(t, name.c_str());
        gguf_add_tensor(dst, t);
        tensors.push_back(t);
    };
    const int64_t q = (int64_t) o.heads * o.head_dim, kv = (int64_t) o.kv_heads * o.head_dim;
    add("token_embd.weight", GGML_TYPE_F16, {o.embd, n_vocab});
    add("output_norm.weight", GGML_TYPE_F32, {o.embd});
    add("output.weight", GGML_TYPE_F16, {o.embd, n_vocab});
    const ggml_type W = wtype;
    for (int il = 0; il < o.layers; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        add(p + "attn_norm.weight", GGML_TYPE_F32, {o.embd});
        if (mla) {
            const int64_t qk = o.head_dim + o.rope_dim;
            add(p + "attn_q_a.weight", W, {o.embd, o.q_lora});
            add(p + "attn_q_a_norm.weight", GGML_TYPE_F32, {o.q_lora});
            add(p + "attn_q_b.weight", W, {o.q_lora, o.heads * qk});
            add(p + "attn_kv_a_mqa.weight", W, {o.embd, o.kv_lora + o.rope_dim});
            add(p + "attn_kv_a_norm.weight", GGML_TYPE_F32, {o.kv_lora});
            add(p + "attn_k_b.weight", W, {o.head_dim, o.kv_lora, o.heads});
            add(p + "attn_v_b.weight", W, {o.kv_lora, o.head_dim, o.heads});
            add(p + "attn_output.weight", W, {(int64_t) o.heads * o.head_dim, o.embd});
        } else {
            add(p + "attn_q.weight", W, {o.embd, q});
            add(p + "attn_k.weight", W, {o.embd, kv});
            add(p + "attn_v.weight", W, {o.embd, kv});
            add(p + "attn_output.weight", W, {q, o.embd});
            add(p + "attn_q_norm.weight", GGML_TYPE_F32, {o.head_dim});
            add(p + "attn_k_norm.weight", GGML_TYPE_F32, {o.head_dim});
        }
        add(p + "ffn_norm.weight", GGML_TYPE_F32, {o.embd});
        if (moe && il >= (mla ? o.dense_layers : 0)) {
            add(p + "ffn_gate_inp.weight", GGML_TYPE_F32, {o.embd, o.experts});
            add(p + "ffn_gate_exps.weight", W, {o.embd, o.expert_ff, o.experts});
            add(p + "ffn_up_exps.weight", W, {o.embd, o.expert_ff, o.experts});
            add(p + "ffn_down_exps.weight", W, {o.expert_ff, o.embd, o.experts});
            if (mla) {
                add(p + "exp_probs_b.bias", GGML_TYPE_F32, {o.experts});
                const int64_t shared_ff = (int64_t) o.expert_ff * o.shared_experts;
                add(p + "ffn_gate_shexp.weight", W, {o.embd, shared_ff});
                add(p + "ffn_up_shexp.weight", W, {o.embd, shared_ff});
                add(p + "ffn_down_shexp.weight", W, {shared_ff, o.embd});
            }
        } else {
            add(p + "ffn_gate.weight", W, {o.embd, o.ff});
            add(p + "ffn_up.weight", W, {o.embd, o.ff});
            add(p + "ffn_down.weight", W, {o.ff, o.embd});
        }
    }
    return tensors;
}

// The header, then every tensor's random data; returns the number of parameters. Atomic.
uint64_t write_tensors(const SynthOptions & o, gguf_context * dst, const std::vector<ggml_tensor *> & tensors,
                       int64_t nan_row) {
    const TemporaryFile tmp_file(temporary_path(o.output));
    const std::string & tmp = tmp_file.path();
    FILE * f = std::fopen(tmp.c_str(), "wb");
    if (!f) {
        throw Error(o.output + ": cannot create");
    }
    std::vector<uint8_t> meta(gguf_get_meta_size(dst));
    gguf_get_meta_data(dst, meta.data());
    bool ok = std::fwrite(meta.data(), 1, meta.size(), f) == meta.size();
    Rng rng{o.seed * 0x9E3779B97F4A7C15ull + 1};
    uint64_t n_params = 0;
    std::vector<float> row;
    std::vector<ggml_fp16_t> half;
    std::vector<uint8_t> packed;
    for (ggml_tensor * t : tensors) {
        const int64_t n = ggml_nelements(t);
        n_params += n;
        const bool norm = t->type == GGML_TYPE_F32 && std::string(t->name).find("norm") != std::string::npos;
        // scale so a matmul keeps activations of order 1: uniform(±a) has variance a²/3, times ne[0] inputs
        const float spread = std::sqrt(3.0f / (float) t->ne[0]);
        const int64_t chunk = std::max<int64_t>(1, (1 << 20) / t->ne[0]) * t->ne[0];  // whole rows
        for (int64_t done = 0; ok && done < n; done += chunk) {
            const int64_t m = std::min(chunk, n - done);
            row.resize(m);
            for (int64_t i = 0; i < m; ++i) {
                row[i] = norm ? 1.0f : rng.next(spread);
                const bool poisoned = nan_row >= 0 && std::string(t->name) == "token_embd.weight" &&
                                      (done + i) / t->ne[0] == nan_row;
                if (poisoned) {
                    row[i] = NAN;
                }
            }
            if (ggml_is_quantized(t->type)) {
                packed.resize(ggml_row_size(t->type, t->ne[0]) * (m / t->ne[0]));
                ggml_quantize_chunk(t->type, row.data(), packed.data(), 0, m / t->ne[0], t->ne[0], nullptr);
                ok = std::fwrite(packed.data(), 1, packed.size(), f) == packed.size();
            } else if (t->type == GGML_TYPE_F16) {
                half.resize(m);
                ggml_fp32_to_fp16_row(row.data(), half.data(), m);
                ok = std::fwrite(half.data(), sizeof(ggml_fp16_t), m, f) == (size_t) m;
            } else {
                ok = std::fwrite(row.data(), sizeof(float), m, f) == (size_t) m;
            }
        }
        const size_t pad = GGML_PAD(ggml_nbytes(t), 32) - ggml_nbytes(t);
        const std::vector<uint8_t> zeros(pad, 0);
        ok = ok && std::fwrite(zeros.data(), 1, pad, f) == pad;
    }
    ok = (std::fclose(f) == 0) && ok;
    if (!ok || std::rename(tmp.c_str(), o.output.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw Error(o.output + ": write failed");
    }
    return n_params;
}

}  // namespace

uint64_t write_synthetic_model(const SynthOptions & o) {
    const ggml_type wtype = checked_weight_type(o);
    ggml_context * meta_ctx = nullptr;
    std::unique_ptr<gguf_context, GgufFree> src(gguf_init_from_file(o.vocab_from.c_str(), {true, &meta_ctx}));
    std::unique_ptr<ggml_context, GgmlFree> src_ctx(meta_ctx);
    if (!src) {
        throw Error(o.vocab_from + ": not a GGUF model");
    }
    const int64_t tokens_key = gguf_find_key(src.get(), "tokenizer.ggml.tokens");
    if (tokens_key < 0) {
        throw Error(o.vocab_from + ": no tokenizer.ggml.tokens");
    }
    const int64_t n_source = (int64_t) gguf_get_arr_n(src.get(), tokens_key);
    if (o.vocab_size > 0 && o.vocab_size < n_source) {
        throw Error("synth: --vocab-size " + std::to_string(o.vocab_size) + " is below " + o.vocab_from + "'s " +
                    std::to_string(n_source) + " tokens");
    }
    const int64_t n_vocab = std::max<int64_t>(n_source, o.vocab_size);
    int64_t nan_row = -1;
    for (int64_t i = 0; !o.nan_token.empty() && i < n_source; ++i) {
        if (o.nan_token == gguf_get_arr_str(src.get(), tokens_key, i)) {
            nan_row = i;
        }
    }
    if (!o.nan_token.empty() && nan_row < 0) {
        throw Error(o.vocab_from + ": no token '" + o.nan_token + "'");
    }

    std::unique_ptr<gguf_context, GgufFree> dst(gguf_init_empty());
    gguf_set_kv(dst.get(), src.get());
    // keep the tokenizer, drop everything that describes the source model
    for (int64_t i = gguf_get_n_kv(dst.get()) - 1; i >= 0; --i) {
        const std::string key = gguf_get_key(dst.get(), i);
        if (key.rfind("tokenizer.", 0) != 0) {
            gguf_remove_key(dst.get(), key.c_str());
        }
    }
    if (n_vocab > n_source) {
        pad_vocabulary(dst.get(), src.get(), n_source, n_vocab);
    }
    set_architecture_keys(dst.get(), o, wtype);
    std::unique_ptr<ggml_context, GgmlFree> ctx(ggml_init({ggml_tensor_overhead() * (24 * o.layers + 16), nullptr, true}));
    const std::vector<ggml_tensor *> tensors = declare_tensors(ctx.get(), dst.get(), o, n_vocab, wtype);
    return write_tensors(o, dst.get(), tensors, nan_row);
}

}  // namespace imx::engine
