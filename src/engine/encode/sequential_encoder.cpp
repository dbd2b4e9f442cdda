#include "engine/encode/sequential_encoder.h"

#include "engine/collect/collect.h"
#include "core/error.h"
#include "engine/model/tensor_file.h"

#include <chrono>
#include <regex>

namespace imx::engine {

namespace {

// The number of blocks: one more than the highest N of the model's "blk.N." tensors.
int count_layers(const std::string & model) {
    const TensorTable t(model);
    int layers = 0;
    const std::regex blk("^blk\\.([0-9]+)\\.");
    for (const std::string & name : t.names()) {
        std::smatch m;
        if (std::regex_search(name, m, blk)) {
            layers = std::max(layers, std::stoi(m[1].str()) + 1);
        }
    }
    return layers;
}

}  // namespace

std::vector<SequentialLayerReport> sequential_reencode(const std::string & model, const std::string & quantized,
                                                       const HessianOptions & o, const SequentialOptions & s,
                                                       const std::function<void(int, int)> & progress) {
    const int layers = count_layers(model);
    if (layers == 0) {
        throw Error(model + ": no blk.N. tensors to quantize in sequence");
    }
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
        report.seconds_collect = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        // only layer l holds covariances in r.imatrix, so only its tensors are encoded again
        report.tensors = hessian_reencode(model, quantized, r.imatrix, o, [](int, int) {});
        reports.push_back(std::move(report));
        progress(l + 1, layers);
    }
    return reports;
}

}  // namespace imx::engine
