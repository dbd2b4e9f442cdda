// --sequential's quantized stream without a run of the whole block for every stage. A stage's run over the
// quantized stream (block_stages.h) ends where its matrices' inputs are made, and each starts again from the block's
// input: in a dense Qwen3 block the gate/up stage computes q/k/v, attention and attn_output again, the down stage all
// of that and gate/up, and the block's output one more run. Most of that part of the graph depends only on matrices
// already final, whose values an earlier stage's run computed: kept then, the part that is left is replayed —
// ggml's own operations, copied node by node from the block's graph, on the CPU over the same operands — the same
// bytes as a run of the block (tests: BlockReplay*), for the work of the part that is new.
//
// Nothing here knows an architecture. The graph is the one ggml's scheduler showed for the float block's first chunk
// (every node asked about, in order, with the tensors it reads). A part replays where every tensor it reads is a
// block weight (in a type the CPU multiplies as the graph does: F16, F32), the block's input (inp_embd) or a node
// kept before; attention reads the KV cache, the positions and the mask, which libllama sets, and so runs the block:
// in a dense block the q/k/v stage (its input is the first norm of the block's input), the gate/up stage (from
// attention's output), the down stage (from the norm before the FFN) and the block's output (from down's input and
// the residual) replay; the attn_output stage runs the block.
#pragma once

#include "engine/model/tensor_file.h"
#include "engine/stream/block_model.h"
#include "engine/stream/hidden_states.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace imx::engine {

// A block's graph as ggml's scheduler showed it for the first chunk of a run: the nodes asked about, in that order,
// and the tensors they read. The ggml_backend_sched_eval_callback (user_data: the graph) never asks for data.
class BlockGraph {
public:
    // input: the block's input (inp_embd); out_ids: the rows kept for output (all: 0, 1, …); other: the KV cache,
    // the positions, the mask — or a node never asked about
    enum class Kind { node, weight, input, out_ids, other };
    struct Tensor {
        ggml_tensor copy{};               // op, op_params, type, shape, strides, name; its pointers cleared
        int         src[GGML_MAX_SRC];    // by index, −1: none
        int         view_src = -1;
        Kind        kind = Kind::node;
        std::string weight;               // kind weight: as the block model names it (blk.0.ffn_up.weight)
    };

    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);
    const std::vector<Tensor> & tensors() const { return tensors_; }
    int output() const { return output_; }  // the block's output node (kBlockOutputNode), −1 if not seen

private:
    int add(const ggml_tensor * t, bool asked);
    std::vector<Tensor>                         tensors_;  // leaves where first read, nodes in the order asked
    std::unordered_map<const ggml_tensor *, int> index_;
    int                                         output_ = -1;
    bool                                        done_ = false;
};

// A part of the graph computed again from values kept before.
struct GraphPart {
    std::vector<int> compute;  // nodes computed, in the graph's order
    std::vector<int> shown;    // what the eval callback is asked about: compute and the stage's matmuls (not computed)
    std::vector<int> kept;     // nodes whose values an earlier run kept
};

// Which stages replay and what each run keeps for the later ones.
struct ReplayPlan {
    std::vector<std::optional<GraphPart>> stages;  // none: the stage runs the block
    std::optional<GraphPart>              output;  // the block's output (every matrix encoded); none: a run
    std::vector<std::vector<int>>         keep;    // per stage: the nodes its run keeps
};

// `stages`: the weights of each stage as the block model names them (BlockStages::stages). A node is kept only
// from a run where the weights it depends on were final (those of the stages before), and only if it is F32 and
// contiguous; a node that reads the KV cache depends on every weight multiplied before it in the graph.
ReplayPlan plan_replays(const BlockGraph & g, const std::vector<std::vector<std::string>> & stages);

class GraphReplay;

// Kept values held in memory a block (≈ 400 MB at the Qwen3-1.7B shape with 16 chunks: the scratch files' write
// and read-back go); past it, in scratch files (a long text's).
constexpr uint64_t kKeptInMemory = 1ull << 30;

// One block's replays over the quantized stream: the plan, the kept values (in memory up to 1 GiB a block, past
// it in scratch files beside `scratch`, removed with this, or on a signal), and the eval callback that keeps
// them from a run of the block.
class BlockReplay {
public:
    // `tokens`: of each chunk of the quantized stream. Replays only where every chunk has the first one's length
    // (the graph's shapes are the first chunk's) and `cpu_f16` (the quantized stream's block models in F16 on the CPU).
    // `kept_in_memory`: bytes of kept values held in memory; the nodes past it go to scratch files.
    BlockReplay(const BlockGraph & g, const std::vector<std::vector<std::string>> & stages,
                const std::vector<size_t> & tokens, const std::string & scratch, bool cpu_f16,
                uint64_t kept_in_memory = kKeptInMemory);
    ~BlockReplay();
    BlockReplay(const BlockReplay &) = delete;
    BlockReplay & operator=(const BlockReplay &) = delete;

    // Stage k's replay with the block's tensors as `tensors` gives them (else the float model's), or null: run the
    // block, with eval_callback below in its chain (it then keeps what stage k's run keeps in the plan).
    std::unique_ptr<GraphReplay> stage(size_t k, const TensorTable & model, TensorIo & io, int b,
                                       const TensorReplacements & tensors, int threads,
                                       ggml_backend_sched_eval_callback inner, void * inner_data);
    // The block's output replayed, or null: run the block.
    std::unique_ptr<GraphReplay> output(const TensorTable & model, TensorIo & io, int b,
                                        const TensorReplacements & tensors, int threads);

    // Where stage(k) gave none, a run of the block keeps the plan's nodes: this eval callback (user_data: this) in
    // its chain, begin_chunk before each chunk.
    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);
    void begin_chunk(size_t chunk);

    const ReplayPlan & plan() const { return plan_; }
    int replayed() const { return replayed_; }  // parts replayed so far (stages and the output)

private:
    friend class GraphReplay;
    struct Kept;
    std::unique_ptr<GraphReplay> replay(const GraphPart & part, const std::vector<int> & keep, const TensorTable & model,
                                        TensorIo & io, int b, const TensorReplacements & tensors, int threads,
                                        ggml_backend_sched_eval_callback inner, void * inner_data);
    bool complete(int node) const;
    void keep(int node, size_t chunk, const ggml_tensor * t);

    const BlockGraph &                 graph_;
    ReplayPlan                         plan_;
    std::vector<size_t>                tokens_;
    std::string                        scratch_;
    std::map<int, std::unique_ptr<Kept>> kept_;
    uint64_t                           kept_memory_;         // bytes of kept values that may be held in memory
    uint64_t                           kept_in_memory_ = 0;  // and held
    std::map<int, int>                 position_of_;  // node → its place among the nodes the scheduler asks about
    // a run of the block: the nodes it keeps (by position), and where this chunk's asks are
    std::map<int, int> keeping_at_;
    size_t             chunk_ = 0;
    int                position_ = 0;
    int                asked_ = -1;
    int                replayed_ = 0;
};

// A part of the block's graph on ggml's CPU backend, chunk by chunk.
class GraphReplay {
public:
    ~GraphReplay();
    // One chunk: `in` the block's input (tokens × n_embd). The eval callback is asked about the part's nodes in the
    // graph's order after they are computed (a stage's matmuls are shown, not computed); false when it stopped.
    // `out`: the last node computed (the block's output, for BlockReplay::output).
    bool run(const std::vector<float> & in, std::vector<float> & out, size_t chunk);

private:
    friend class BlockReplay;
    GraphReplay() = default;
    struct Tensors;
    BlockReplay *                    owner_ = nullptr;
    const GraphPart *                part_ = nullptr;
    std::vector<int>                 keep_;  // nodes of this part the plan keeps from this run
    bool                             output_ = false;  // the block's output: `out` gets it
    std::unique_ptr<Tensors>         t_;
    ggml_backend_sched_eval_callback inner_ = nullptr;
    void *                           inner_data_ = nullptr;
};

}  // namespace imx::engine
