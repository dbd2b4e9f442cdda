// Random-weight GGUF models of a chosen shape, for speed tests at realistic sizes and fast shape tests.
// The vocabulary (tokenizer.* keys) is copied from a real model, so any text tokenizes; weights are F16 with
// a small uniform spread (norms F32, 1), so activations stay finite through any depth.
#pragma once

#include <cstdint>
#include <string>

namespace imx::engine {

struct SynthOptions {
    std::string arch = "qwen3";  // qwen3 (dense), qwen3moe, or deepseek2 (MLA attention, MoE with shared experts)
    std::string vocab_from;      // a GGUF model whose tokenizer is copied
    int         vocab_size = 0;  // > its size: padded with control tokens "<|imx_pad_N|>" (a real vocabulary's width)
    std::string output;
    int         layers = 4;
    int         embd = 512;
    int         ff = 1536;         // dense FFN width
    int         heads = 8;
    int         kv_heads = 4;
    int         head_dim = 64;
    int         experts = 0;       // qwen3moe, deepseek2
    int         experts_used = 0;
    int         expert_ff = 256;
    // deepseek2: head_dim is the no-rope part of a query/key head (and a value head's width)
    int         q_lora = 1536;
    int         kv_lora = 512;
    int         rope_dim = 64;
    int         shared_experts = 1;
    int         dense_layers = 0;  // leading blocks with a dense FFN (--ff) instead of experts
    std::string weight_type = "f16";  // matmul weights: f16, q8_0 or q4_0 (a DeepSeek-V3 MoE layer is 22 GB in F16)
    int         context = 4096;
    uint64_t    seed = 1;
    std::string nan_token;  // tests: the embedding of this token (by its text) is NaN

};

// Writes the model atomically; returns the number of parameters.
uint64_t write_synthetic_model(const SynthOptions & o);

}  // namespace imx::engine
