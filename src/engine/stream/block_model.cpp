#include "engine/stream/block_model.h"

#include "core/error.h"

#include "ggml.h"
#include "gguf.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <regex>

namespace imx::engine {

namespace {

struct GgufFree { void operator()(gguf_context * c) const { gguf_free(c); } };
struct GgmlFree { void operator()(ggml_context * c) const { ggml_free(c); } };

const char * const kStreamable[] = {"qwen3", "qwen3moe", "deepseek2"};

std::string string_key(const gguf_context * ctx, const std::string & key) {
    const int64_t k = gguf_find_key(ctx, key.c_str());
    return k >= 0 && gguf_get_kv_type(ctx, k) == GGUF_TYPE_STRING ? gguf_get_val_str(ctx, k) : "";
}

// An unsigned key of any integer width (converters differ), or `fallback`.
int64_t integer_key(const gguf_context * ctx, const std::string & key, int64_t fallback) {
    const int64_t k = gguf_find_key(ctx, key.c_str());
    if (k < 0) {
        return fallback;
    }
    switch (gguf_get_kv_type(ctx, k)) {
        case GGUF_TYPE_UINT8: return gguf_get_val_u8(ctx, k);
        case GGUF_TYPE_INT8: return gguf_get_val_i8(ctx, k);
        case GGUF_TYPE_UINT16: return gguf_get_val_u16(ctx, k);
        case GGUF_TYPE_INT16: return gguf_get_val_i16(ctx, k);
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(ctx, k);
        case GGUF_TYPE_INT32: return gguf_get_val_i32(ctx, k);
        case GGUF_TYPE_UINT64: return (int64_t) gguf_get_val_u64(ctx, k);
        case GGUF_TYPE_INT64: return gguf_get_val_i64(ctx, k);
        default: return fallback;
    }
}

// A per-block array's entry `i` set as a scalar of the same type (libllama's get_key_or_arr fills every block
// from a scalar).
void set_scalar_from_array(gguf_context * dst, const gguf_context * src, int64_t k, size_t i) {
    const char * key = gguf_get_key(src, k);
    const void * data = gguf_get_arr_data(src, k);
    switch (gguf_get_arr_type(src, k)) {
        case GGUF_TYPE_UINT8: gguf_set_val_u8(dst, key, static_cast<const uint8_t *>(data)[i]); break;
        case GGUF_TYPE_INT8: gguf_set_val_i8(dst, key, static_cast<const int8_t *>(data)[i]); break;
        case GGUF_TYPE_UINT16: gguf_set_val_u16(dst, key, static_cast<const uint16_t *>(data)[i]); break;
        case GGUF_TYPE_INT16: gguf_set_val_i16(dst, key, static_cast<const int16_t *>(data)[i]); break;
        case GGUF_TYPE_UINT32: gguf_set_val_u32(dst, key, static_cast<const uint32_t *>(data)[i]); break;
        case GGUF_TYPE_INT32: gguf_set_val_i32(dst, key, static_cast<const int32_t *>(data)[i]); break;
        case GGUF_TYPE_FLOAT32: gguf_set_val_f32(dst, key, static_cast<const float *>(data)[i]); break;
        case GGUF_TYPE_BOOL: gguf_set_val_bool(dst, key, static_cast<const int8_t *>(data)[i] != 0); break;
        default: throw Error(std::string("per-block key ") + key + " holds a type a single block cannot be given");
    }
}

// The model's keys for block `block` alone (see the header).
void set_block_keys(gguf_context * dst, const gguf_context * src, const std::string & arch, int block, int n_layer) {
    gguf_set_kv(dst, src);
    for (const char * key : {"split.no", "split.count", "split.tensors.count"}) {
        gguf_remove_key(dst, key);
    }
    const std::string a = arch + ".";
    for (int64_t k = 0; k < gguf_get_n_kv(src); ++k) {
        const std::string key = gguf_get_key(src, k);
        if (key.rfind("tokenizer.", 0) == 0) {
            gguf_remove_key(dst, key.c_str());
        } else if (key.rfind(a, 0) == 0 && gguf_get_kv_type(src, k) == GGUF_TYPE_ARRAY &&
                   gguf_get_arr_type(src, k) != GGUF_TYPE_STRING && gguf_get_arr_n(src, k) == (size_t) n_layer &&
                   key != a + "rope.dimension_sections") {
            set_scalar_from_array(dst, src, k, (size_t) block);
        }
    }
    gguf_set_val_str(dst, "tokenizer.ggml.model", "no_vocab");
    gguf_set_val_u32(dst, (a + "vocab_size").c_str(), 1);
    gguf_set_val_u32(dst, (a + "block_count").c_str(), 1);
    gguf_remove_key(dst, (a + "nextn_predict_layers").c_str());
    if (arch == "deepseek2") {
        const int64_t lead = integer_key(src, a + "leading_dense_block_count", 0);
        gguf_set_val_u32(dst, (a + "leading_dense_block_count").c_str(), block < lead ? 1 : 0);
        // what deepseek2's loader infers from the whole model's block count and vocabulary (the pinned commit)
        const int64_t tokens_key = gguf_find_key(src, "tokenizer.ggml.tokens");
        const int64_t n_vocab = integer_key(src, a + "vocab_size", tokens_key >= 0 ? (int64_t) gguf_get_arr_n(src, tokens_key) : 0);
        const bool lite = n_layer == 27 || n_layer == 26 || (n_layer == 48 && n_vocab == 128256);
        if (lite) {
            gguf_set_val_u32(dst, (a + "attention.q_lora_rank").c_str(), 0);
        }
        if (integer_key(src, a + "expert_gating_func", 0) == 0) {
            const bool sigmoid = (n_layer == 47 || n_layer == 48) && n_vocab == 154880;
            gguf_set_val_u32(dst, (a + "expert_gating_func").c_str(), sigmoid ? 2 : 1);
        }
    }
}

// A tensor's type in a block model: the replacement's, or the model's.
ggml_type given_type(const TensorTable & model, const TensorReplacements & replace, const std::string & name) {
    const auto r = replace.find(name);
    return r == replace.end() ? model.find(name)->type : r->second.type;
}

// The block's matrices a block model of `weights` holds decoded to F16: its quantized 2-D ones, unless together
// they would take more than kDecodedBlockLimit.
std::vector<std::string> decoded_to_f16(const TensorTable & model, int block, const TensorReplacements & replace,
                                        BlockWeights weights) {
    std::vector<std::string> quantized;
    uint64_t f16_bytes = 0;
    for (const std::string & name : model.names()) {
        if (weights == BlockWeights::f16 && block_of(name) == block && ggml_n_dims(model.find(name)) == 2 &&
            ggml_is_quantized(given_type(model, replace, name))) {
            quantized.push_back(name);
            f16_bytes += (uint64_t) ggml_nelements(model.find(name)) * sizeof(ggml_fp16_t);
        }
    }
    return f16_bytes <= kDecodedBlockLimit ? quantized : std::vector<std::string>();
}

// A matrix's values as F16, or nothing where F16 cannot hold them (beyond ±65504): it keeps its type.
std::vector<uint8_t> f16_of(ggml_type type, const std::vector<uint8_t> & bytes, int64_t n) {
    std::vector<float> values((size_t) n);
    to_float(type, bytes.data(), values.data(), n);
    if (!std::all_of(values.begin(), values.end(), [](float v) { return std::fabs(v) <= 65504.0f; })) {
        return {};
    }
    std::vector<uint8_t> half((size_t) n * sizeof(ggml_fp16_t));
    ggml_fp32_to_fp16_row(values.data(), reinterpret_cast<ggml_fp16_t *>(half.data()), n);
    return half;
}

}  // namespace

int block_of(const std::string & tensor) {
    static const std::regex blk("^blk\\.([0-9]+)\\.");
    std::smatch m;
    return std::regex_search(tensor, m, blk) ? std::stoi(m[1].str()) : -1;
}

bool block_streaming_supported(const TensorTable & model) {
    const std::string arch = string_key(model.metadata(), "general.architecture");
    return std::any_of(std::begin(kStreamable), std::end(kStreamable), [&](const char * a) { return arch == a; });
}

std::string check_block_streaming(const TensorTable & model) {
    const std::string arch = string_key(model.metadata(), "general.architecture");
    if (block_streaming_supported(model)) {
        return arch;
    }
    throw Error(model.path() + ": block-by-block runs are written for qwen3, qwen3moe and deepseek2, not " +
                (arch.empty() ? std::string("this model (no general.architecture)") : arch) +
                " (the whole-model path takes it: imx collect, then imx quantize --imatrix)");
}

int block_count(const TensorTable & model) {
    const std::string arch = string_key(model.metadata(), "general.architecture");
    return (int) integer_key(model.metadata(), arch + ".block_count", 0);
}

int64_t embedding_length(const TensorTable & model) {
    const std::string arch = string_key(model.metadata(), "general.architecture");
    return integer_key(model.metadata(), arch + ".embedding_length", 0);
}

void write_block_model(const TensorTable & model, TensorIo & io, int block, const TensorReplacements & replace,
                       const std::string & path, BlockWeights weights) {
    const std::string arch = check_block_streaming(model);
    const int n_layer = block_count(model);
    const int64_t n_embd = embedding_length(model);
    std::unique_ptr<gguf_context, GgufFree> dst(gguf_init_empty());
    set_block_keys(dst.get(), model.metadata(), arch, block, n_layer);

    // the tensors: their new names and types, in the model's order
    struct Entry {
        std::string source;  // empty: zeros (the dummy embedding)
        ggml_tensor * t;
    };
    std::vector<Entry> entries;
    std::unique_ptr<ggml_context, GgmlFree> meta(
        ggml_init({ggml_tensor_overhead() * (model.names().size() + 2), nullptr, true}));
    auto add = [&](const std::string & source, const std::string & name, ggml_type type, const int64_t * ne, int dims) {
        ggml_tensor * t = ggml_new_tensor(meta.get(), type, dims, ne);
        ggml_set_name(t, name.c_str());
        gguf_add_tensor(dst.get(), t);
        entries.push_back({source, t});
    };
    const int64_t embd_ne[2] = {n_embd, 1};
    add("", "token_embd.weight", GGML_TYPE_F32, embd_ne, 2);
    const std::string prefix = "blk." + std::to_string(block) + ".";
    const auto type_of = [&](const std::string & name) { return given_type(model, replace, name); };
    // a tensor's bytes in the type it is given in: the replacement's, or read from the model
    std::vector<uint8_t> read;
    const auto bytes_of = [&](const std::string & name) -> const std::vector<uint8_t> & {
        const ggml_tensor * t = model.find(name);
        const size_t stored = ggml_row_size(type_of(name), t->ne[0]) * (size_t) (ggml_nelements(t) / t->ne[0]);
        const auto r = replace.find(name);
        if (r == replace.end()) {
            return read = io.read(name, 0, stored);
        }
        if (r->second.bytes.size() != stored) {
            throw Error("block " + std::to_string(block) + ": " + name + " has " +
                        std::to_string(r->second.bytes.size()) + " bytes for " + std::to_string(stored));
        }
        return r->second.bytes;
    };
    // --sequential's quantized stream on the CPU: the quantized matrices decoded to F16 up front (BlockWeights)
    std::map<std::string, std::vector<uint8_t>> decoded;
    for (const std::string & name : decoded_to_f16(model, block, replace, weights)) {
        std::vector<uint8_t> half = f16_of(type_of(name), bytes_of(name), ggml_nelements(model.find(name)));
        if (!half.empty()) {
            decoded[name] = std::move(half);
        }
    }
    for (const std::string & name : model.names()) {
        const int b = block_of(name);
        if (b < 0 ? (name == "token_embd.weight" || name == "output.weight") : b != block) {
            continue;
        }
        const ggml_tensor * t = model.find(name);
        const std::string renamed = b < 0 ? name : "blk.0." + name.substr(prefix.size());
        add(name, renamed, decoded.contains(name) ? GGML_TYPE_F16 : type_of(name), t->ne, ggml_n_dims(t));
    }

    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    std::vector<uint8_t> header(gguf_get_meta_size(dst.get()));
    gguf_get_meta_data(dst.get(), header.data());
    out.write(reinterpret_cast<const char *>(header.data()), (std::streamsize) header.size());
    const size_t align = gguf_get_alignment(dst.get());
    for (const Entry & e : entries) {
        const size_t n = ggml_nbytes(e.t);
        const auto half = decoded.find(e.source);
        const std::vector<uint8_t> zeros(e.source.empty() ? n : 0, 0);
        const std::vector<uint8_t> & data = e.source.empty() ? zeros : half != decoded.end() ? half->second : bytes_of(e.source);
        out.write(reinterpret_cast<const char *>(data.data()), (std::streamsize) n);
        const std::vector<char> pad(GGML_PAD(n, align) - n, 0);
        out.write(pad.data(), (std::streamsize) pad.size());
    }
    out.flush();
    if (!out) {
        throw Error(path + ": cannot write block " + std::to_string(block) + " of " + model.path());
    }
}

TensorBytes block_model_tensor(const TensorTable & model, TensorIo & io, int block, const TensorReplacements & replace,
                               const std::string & name, BlockWeights weights) {
    const ggml_tensor * t = model.find(name);
    if (!t || block_of(name) != block) {
        throw Error(model.path() + ": no tensor " + name + " in block " + std::to_string(block));
    }
    const auto r = replace.find(name);
    TensorBytes given{given_type(model, replace, name), r != replace.end() ? r->second.bytes : io.read(name, 0, ggml_nbytes(t))};
    const std::vector<std::string> decoded = decoded_to_f16(model, block, replace, weights);
    if (std::find(decoded.begin(), decoded.end(), name) != decoded.end()) {
        std::vector<uint8_t> half = f16_of(given.type, given.bytes, ggml_nelements(t));
        if (!half.empty()) {
            return {GGML_TYPE_F16, std::move(half)};
        }
    }
    return given;
}

}  // namespace imx::engine
