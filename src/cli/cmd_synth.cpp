// imx synth: a random-weight GGUF model of a chosen architecture and size, for speed and shape tests.
#include "commands.h"
#include "engine/model/synth_model.h"

#include <cstdio>

namespace imx::cli {

Run add_synth(CLI::App & app) {
    auto o = std::make_shared<engine::SynthOptions>();
    app.add_option("--arch", o->arch, "qwen3 (dense), qwen3moe, or deepseek2 (MLA attention, routed + shared experts)")
        ->capture_default_str();
    app.add_option("--vocab-from", o->vocab_from, "GGUF model whose tokenizer is copied")->required();
    app.add_option("--vocab-size", o->vocab_size,
                   "grow the copied vocabulary to this many tokens with control tokens no text produces (e.g. 151936, "
                   "Qwen3's): output head and embedding at a real model's size")
        ->check(CLI::PositiveNumber);
    app.add_option("-o,--output", o->output, "model file to write")->required();
    app.add_option("--layers", o->layers, "blocks")->capture_default_str();
    app.add_option("--embd", o->embd, "embedding width")->capture_default_str();
    app.add_option("--ff", o->ff, "dense FFN width")->capture_default_str();
    app.add_option("--heads", o->heads, "attention heads")->capture_default_str();
    app.add_option("--kv-heads", o->kv_heads, "key/value heads")->capture_default_str();
    app.add_option("--head-dim", o->head_dim, "width of a head")->capture_default_str();
    app.add_option("--experts", o->experts, "experts per MoE layer (qwen3moe, deepseek2)");
    app.add_option("--experts-used", o->experts_used, "experts per token (qwen3moe, deepseek2)");
    app.add_option("--expert-ff", o->expert_ff, "expert FFN width (qwen3moe, deepseek2)")->capture_default_str();
    app.add_option("--q-lora", o->q_lora, "deepseek2: query LoRA rank")->capture_default_str();
    app.add_option("--kv-lora", o->kv_lora, "deepseek2: compressed KV width")->capture_default_str();
    app.add_option("--rope-dim", o->rope_dim, "deepseek2: rotary part of a query/key head (--head-dim: the rest)")
        ->capture_default_str();
    app.add_option("--shared-experts", o->shared_experts, "deepseek2: shared experts per MoE layer")->capture_default_str();
    app.add_option("--dense-layers", o->dense_layers, "deepseek2: leading blocks with a dense FFN (--ff)")
        ->capture_default_str();
    app.add_option("--weight-type", o->weight_type, "matmul weights: f16, q8_0 or q4_0 (models too large for memory "
                                                     "in F16)")->capture_default_str();
    app.add_option("--seed", o->seed, "random seed")->capture_default_str();
    app.add_option("--nan-token", o->nan_token, "for tests: make this token's embedding NaN (token text as in the vocab)");
    return [o] {
        const uint64_t n = engine::write_synthetic_model(*o);
        std::fprintf(stderr, "imx: wrote %s (%s, %.2fB parameters)\n", o->output.c_str(), o->arch.c_str(), n / 1e9);
    };
}

}  // namespace imx::cli
