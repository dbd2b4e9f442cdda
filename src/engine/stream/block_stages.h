// The order in which --sequential encodes a block's matrices: a matrix is encoded after every encoded matrix its
// input depends on, so that the quantized stream's inputs it is fitted to are the ones the output file gives it
// (GPTQ's "true sequential"). Learned from the block's own graph, whatever the architecture: while a block runs,
// ggml's scheduler asks about every node; each matmul's input is traced back through its sources to the weights
// it depends on. The KV cache breaks that trace (a store into it and a later read of it are separate nodes), so a
// read of a cache tensor depends on whatever was stored into it before in the same graph.
#pragma once

#include <deque>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

struct ggml_tensor;

namespace imx::engine {

class BlockStages {
public:
    // The ggml_backend_sched_eval_callback: user_data is the BlockStages. It never asks for a node's data.
    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);
    // After the first graph: later graphs (the same block over other chunks) are not traced.
    void stop() { tracing_ = false; }
    // `encoded` (block weights as the graph names them) grouped into stages: stage k holds the matrices whose
    // inputs depend on encoded matrices of stages below k only, at least one of them in stage k − 1. Weights of
    // `encoded` the graph never multiplied are in none.
    std::vector<std::vector<std::string>> stages(const std::set<std::string> & encoded) const;
    // The weights the input of matmul weight `name` depends on (empty if the graph had no such matmul).
    const std::set<std::string> & input_depends_on(const std::string & name) const;

private:
    const std::set<std::string> & depends(const ggml_tensor * t);

    bool                                                      tracing_ = true;
    std::unordered_map<const ggml_tensor *, std::set<std::string>> memo_;
    std::map<const ggml_tensor *, std::set<std::string>>     stored_;  // cache tensor → what was stored into it
    std::map<std::string, std::set<std::string>>             inputs_;  // matmul weight → its input's weights
    std::deque<std::set<std::string>>                        scratch_;  // the sets of nodes not remembered
};

}  // namespace imx::engine
