// Accumulates Σx² of every matmul input during llama.cpp's forward pass, through ggml's eval callback.
//
// For a weight W consumed by MUL_MAT (y = W·x) the input x has one row of n_cols values per token; we add
// x_j² for every token to sums[j]. A 3-D weight (MLA's attn_k_b: [cols, rows, heads]) multiplies each head
// h with its own slice of the input, so its sums are kept per head: sums[h*cols + j], with one token count
// shared by all heads (upstream's layout). For MUL_MAT_ID (MoE experts) each token is routed to n_used of the
// n_expert matrices: ids[k, t] names the expert of slot k for token t, and we add x² to that expert's row
// and count the token for that expert only.
//
// Speed: the forward pass ends at the last collected matmul (see final_weight_): the output head is skipped.
//
// Determinism: every product is widened to double and summed in token order (token-major, then routing slot)
// over the ubatch — always exactly one chunk — then added to the totals; so the result depends only on the
// activations. Matmuls that read the same input (q/k/v; gate/up) share one contribution.
//
// Covariance (optional, for the Hessian encoder): XᵀX of each distinct input, per expert, on the host (core/
// covariance.h). Its layout is chosen when an input is first seen: whole while the memory budget lasts, then
// diagonal blocks of 256, then none. Per-head 3-D weights (attn_k_b) get none: their encoder stays diagonal.
#pragma once

#include "engine/collect/all_experts_pass.h"
#include "engine/model/backend_pool.h"
#include "core/imatrix.h"
#include "engine/collect/device_sums.h"
#include "engine/collect/target_inputs.h"

#include <cstdint>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "ggml.h"

namespace imx::engine {

class ActivationCollector {
public:
    // Activations on a GPU are summed there (DeviceSums). force_device: do the same for host activations, on
    // the CPU backend with cpu_threads (tests of that path). force_host: copy device activations to the host
    // and sum there instead (upstream's way; to compare the two paths).
    // covariance_budget: bytes of XᵀX to keep in memory; 0 collects none.
    ActivationCollector(uint32_t chunk_size, bool force_device, bool force_host, int cpu_threads,
                        uint64_t covariance_budget = 0, bool covariance_blocks_only = false,
                        bool covariance_pool_experts = false)
        : chunk_size_(chunk_size), force_device_(force_device), force_host_(force_host), pool_(cpu_threads), device_(pool_),
          covariance_budget_(covariance_budget),
          covariance_blocks_only_(covariance_blocks_only), covariance_pool_experts_(covariance_pool_experts) {}

    // Expert covariances weighted by the router (`--gate-weights`; off by default: measured, docs/hessian.md): an
    // expert's output enters the layer's as g·E(x), g the token's gate weight for it, so its matrices' output error
    // on that token counts g² times — each token's row is scaled by |g| before XᵀX (the cross terms alike). The sums
    // (the imatrix) stay unweighted, as upstream's. Process-wide: every collector of a run weights alike.
    static void weight_experts_by_gates(bool on);

    // The ggml_backend_sched_eval_callback: user_data is the collector.
    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);

    // Also the output head (output.weight; llama-imatrix --process-output). Off: the pass stops before it.
    void collect_output_head(bool on) { process_output_ = on; }
    // Also each expert's inputs over every token, beside the routed ones (--all-experts, AllExpertsPass).
    void collect_all_experts(bool on) { all_experts_ = on ? std::make_unique<AllExpertsPass>(pool_) : nullptr; }
    // Only weights whose name matches are collected at all (sums too; empty: all): the pass then ends after the
    // last of them (sequential quantization collects one layer at a time).
    void only_tensors(const std::string & regex) { only_regex_ = std::regex(regex.empty() ? std::string(".*") : regex); }
    // Off: the pass goes on after the last collected weight (a block run alone reads the block's output after it).
    void stop_after_last_weight(bool on) { stop_after_last_ = on; }
    // With only_tensors and stop_after_last_weight: from the second chunk on, the pass stops as soon as the inputs
    // of the collected matmuls are computed, before the first of those matmuls runs — a --sequential stage's run
    // then skips its own matmuls, whose outputs nothing reads. The inputs are found by their position among the
    // graph's nodes, learned from the first chunk (every chunk's graph is built alike; a node's name is checked).
    // Where a collected matmul comes before another's input, the pass runs on to the last one as before: once its
    // last reader has run, an input's memory may hold another node.
    void stop_at_inputs(bool on) { stop_at_inputs_ = on; }
    // The weights the pass collects, where known (a --sequential stage's): with stop_after_last_weight the first
    // chunk then stops after the last of them too, instead of running on to learn which one is last.
    void expect_weights(std::set<std::string> names) { expected_ = std::move(names); }
    // True from the chunk on where stop_at_inputs takes effect (false where it cannot: see above).
    bool stops_at_inputs() const { return early_; }
    // Only inputs whose first reader's name matches get a covariance (--covariance-tensors; empty: all).
    void covariance_tensors(const std::string & regex) {
        covariance_regex_ = std::regex(regex.empty() ? std::string(".*") : regex);
    }
    // collect --target-model: the target model's inputs of the chunk, recorded before this model's pass; every
    // whole, per-matrix covariance then also gets its cross term X̃ᵀX (core/covariance.h), or X̃ᵀY where the target
    // recorded the matmul's outputs Y instead of its input (TargetInputs::record_outputs_of).
    void cross_with(const TargetInputs * target) { target_ = target; }
    // Called before each chunk's forward pass: lets errors name the chunk they happened in.
    void begin_chunk(uint32_t chunk) {
        first_chunk_ = chunk;
        gate_node_ = nullptr;
        tokens_this_batch_.clear();
        last_ = {};  // tensors of the next graph may reuse this one's addresses
        last_covariance_ = -1;
        last_all_experts_input_ = false;
        if (!last_collected_.empty() && final_weight_.empty()) {
            plan_early_stop();
        }
        if (!last_collected_.empty()) {
            final_weight_ = last_collected_;
        }
        nodes_.clear();
    }
    // Tensors and counts so far; after a resume, the checkpoint's. Covariances are made whole here: during the
    // pass only their upper triangles are kept current (Covariance::add).
    Imatrix & data() {
        for (Covariance & c : data_.covariances) {
            c.symmetrize();
        }
        return data_;
    }
    // Non-empty once a non-finite activation was seen; the forward pass is stopped at that point.
    const std::string & error() const { return error_; }
    // Bytes of matmul inputs that lived on a device (GPU, RPC server), and the bytes read back from there:
    // per-column sums where they were made on the device, whole inputs where they were copied.
    struct Traffic {
        uint64_t device_inputs = 0;
        uint64_t read_back = 0;
    };
    const Traffic & traffic() const { return traffic_; }

private:
    // What one matmul input adds: Σx² per column and matrix over this ubatch, and tokens per matrix.
    struct Contribution {
        std::vector<double>  sums;
        std::vector<int64_t> counts;
        int64_t              n_cols = 1;
        int64_t              tokens = 0;  // tokens in the ubatch
        void reset(int64_t cols, int64_t n_mat, int64_t n_counts);
    };
    // The input the last collected matmul read, to recognise the next matmul reading the same one.
    struct LastInput {
        const ggml_tensor * input = nullptr;
        const ggml_tensor * ids = nullptr;
        int                 op = 0;
        int64_t             n_mat = 0;
    };

    bool wants(const ggml_tensor * t);
    // stop_at_inputs: the first chunk's collected matmul t kept with its inputs' positions; the plan made from
    // them; and a later chunk's ask and callback, which take the planned matmuls at the last input's node.
    void learn(const ggml_tensor * t);
    // expect_weights: true once `name` completes them in the first chunk (the pass may stop after it)
    bool completes_expected(const std::string & name);
    void plan_early_stop();
    bool ask_early(ggml_tensor * t);
    bool collect_early();
    bool same_input_as_last(const ggml_tensor * t) const;
    bool collect(const ggml_tensor * t);
    void dense_on_host(const ggml_tensor * t, const char * data);
    void experts_on_host(const ggml_tensor * t, const char * data);
    // The same sums computed by DeviceSums where the input is; false if it cannot take this shape.
    bool dense_on_device(const ggml_tensor * t);
    bool experts_on_device(const ggml_tensor * t);
    bool apply(const std::string & name);
    const std::vector<int32_t> & host_ids(const ggml_tensor * ids);
    bool fail(const std::string & name, int64_t matrix, bool expert, int64_t tokens_before);
    // XᵀX of the input of weight `name` (host data); sets last_covariance_.
    void add_covariance(const ggml_tensor * t, const std::string & name, const char * data);
    // The target model's input of `name`, checked against this model's input x; throws imx::Error naming it.
    const TargetInputs::Input & target_input(const std::string & name, const ggml_tensor * x) const;
    int covariance_index(const ggml_tensor * t, const std::string & name);
    // The graph's gate weights node, noted when asked about (its values are read when an expert matmul of its
    // layer is collected: it lives until the experts' outputs are weighted, after them).
    void note_gate_weights(const ggml_tensor * t);
    // The gate weights of the MoE layer of expert weight `name`, n = n_used · n_tokens; null where not weighted.
    const std::vector<float> * gate_weights_for(const std::string & name, int64_t n);
    // --all-experts: the statistics of expert weight `name` (t: its MUL_MAT_ID; data: the input of gate/up in
    // host memory, null for down); false if non-finite.
    bool add_all_experts(const ggml_tensor * t, const std::string & name, const char * data);
    void add_all_experts_row(const std::string & name, const std::vector<double> & sums, int64_t n_rows);

    uint32_t                       chunk_size_;
    bool                           force_device_;
    bool                           force_host_;
    BackendPool                    pool_;
    DeviceSums                     device_;
    std::vector<float>             device_out_;
    Contribution                   delta_;
    LastInput                      last_;
    std::vector<int32_t>           ids_host_;
    uint32_t                       first_chunk_ = 0;
    Imatrix                        data_;
    std::map<std::string, int64_t> tokens_this_batch_;  // per tensor, to locate a failing token's chunk
    std::vector<char>              host_copy_;           // activations copied from a device, when needed
    std::vector<char>              ids_copy_;
    std::string                    error_;
    Traffic                        traffic_;
    // The last weight matmul of the graph, learned from the first chunk. Once it is collected, nothing that
    // is left of the graph (final norm, output head: the costliest matmul of small models) feeds a weight we
    // collect, so the callback stops the computation there. We never read the logits.
    std::string                    last_collected_;
    std::string                    final_weight_;
    bool                           stop_after_last_ = true;
    uint64_t                       covariance_budget_;
    bool                           covariance_blocks_only_;
    bool                           covariance_pool_experts_;  // one pooled XᵀX per expert input (core/covariance.h)
    std::regex                     covariance_regex_{".*"};
    std::regex                     only_regex_{".*"};
    bool                           process_output_ = false;
    uint64_t                       covariance_used_ = 0;
    std::map<std::string, int>     covariance_index_;     // weight → data_.covariances index, -1: none kept
    int                            last_covariance_ = -1;  // of the last collected input
    std::vector<float>             rows_;                 // one matrix's input rows, gathered (experts, heads)
    const ggml_tensor *            gate_node_ = nullptr;  // this graph's last gate weights node (note_gate_weights)
    std::vector<float>             gate_values_;
    const TargetInputs *           target_ = nullptr;     // --target-model
    std::vector<float>             target_rows_;          // the target model's rows of the same tokens
    std::unique_ptr<AllExpertsPass> all_experts_;          // null unless --all-experts
    bool                           last_all_experts_input_ = false;  // the last input was an expert gate/up's
    std::vector<double>            all_down_;
    // stop_at_inputs: a collected matmul of the first chunk (a copy: its weight — the model's own tensor —, op and
    // shape) and the positions of its input and routing among the nodes asked about (-1: none)
    struct PlannedMatmul {
        ggml_tensor node;
        int         input = -1, ids = -1, self = -1, gate = -1;
        std::string input_name, ids_name;
    };
    bool                              stop_at_inputs_ = false;
    bool                              plan_ok_ = true;    // every collected matmul's inputs found among the nodes
    bool                              early_ = false;     // this chunk stops at stop_at_
    int                               stop_at_ = -1;      // position of the last input needed
    std::map<const ggml_tensor *, int> position_;         // first chunk: node → position
    std::vector<PlannedMatmul>        planned_;
    std::vector<ggml_tensor *>        nodes_;             // this chunk's nodes by position, up to stop_at_
    std::set<std::string>             expected_, seen_;   // expect_weights; those of them seen in the first chunk
    bool                              stop_here_ = false; // the node asked for is where the first chunk ends
};

}  // namespace imx::engine
