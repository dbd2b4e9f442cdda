// What the collectors (ActivationCollector; TargetInputs, the target model's side of collect --target-model) read
// from llama.cpp's graph nodes: which matmuls they take, the weight's name, and a MUL_MAT_ID's routing.
#pragma once

#include <cstdint>
#include <regex>
#include <string>
#include <vector>

struct ggml_tensor;

namespace imx::engine {

// "CUDA0#blk.0.attn_q.weight#0" (a weight copied to another backend) → "blk.0.attn_q.weight"
std::string weight_name(const char * raw);

// The weight a matmul node multiplies, if it is one the collectors take: MUL_MAT or MUL_MAT_ID with an F32 input
// and a transformer block's weight (upstream's rule: attention's K·Q and KQ·V multiply activations by activations,
// their src0 the KV cache), or the output head when asked; and matching `only`. Empty otherwise.
std::string collected_weight(const ggml_tensor * t, bool output_head, const std::regex & only);

// A MoE layer's gate weights as libllama names them, [1, n_used, n_tokens] or [n_used, n_tokens] (the router's
// probabilities of the chosen experts, "ffn_moe_weights-<layer>", then normalised and scaled as the architecture
// does: "ffn_moe_weights_norm", "ffn_moe_weights_scaled"); the last one before a layer's expert matmuls is what
// multiplies the experts' outputs. Their sums and views are not.
bool is_expert_gate_weights(const char * node_name);
// "ffn_moe_weighted": where it comes before the experts' matmuls (Llama 4), the gate weights multiply their input.
bool is_expert_weighted_input(const char * node_name);

// The expert ids of every token of a MUL_MAT_ID, out[tok·n_used + k], copied from wherever they are (they are
// small; possibly not contiguous). `scratch` is reused between calls.
void read_expert_ids(const ggml_tensor * ids, std::vector<char> & scratch, std::vector<int32_t> & out);

}  // namespace imx::engine
