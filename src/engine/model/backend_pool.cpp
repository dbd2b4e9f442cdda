#include "engine/model/backend_pool.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <stdexcept>

namespace imx::engine {

BackendPool::~BackendPool() {
    for (auto & [b, a] : allocators_) {
        ggml_gallocr_free(a);
    }
    for (auto & [dev, b] : backends_) {
        ggml_backend_free(b);
    }
}

ggml_backend * BackendPool::backend_for(const ggml_tensor * t) {
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(ggml_backend_buffer_get_type(t->buffer));
    if (!dev || ggml_backend_buffer_is_host(t->buffer)) {
        dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);  // host memory (no device of its own)
    }
    auto it = backends_.find(dev);
    if (it == backends_.end()) {
        ggml_backend * b = ggml_backend_dev_init(dev, nullptr);
        if (!b) {
            throw std::runtime_error("cannot open the device that holds " + std::string(t->name));
        }
        if (ggml_backend_is_cpu(b)) {
            ggml_backend_cpu_set_n_threads(b, cpu_threads_);
        }
        it = backends_.emplace(dev, b).first;
        allocators_[b] = ggml_gallocr_new(ggml_backend_get_default_buffer_type(b));
    }
    return it->second;
}

GraphContext::GraphContext(size_t n_nodes) {
    ggml_init_params p{ggml_tensor_overhead() * (n_nodes + 8) + ggml_graph_overhead_custom(n_nodes, false), nullptr,
                       true};
    ctx = ggml_init(p);
}

GraphContext::~GraphContext() { ggml_free(ctx); }

ggml_tensor * alias(ggml_context * ctx, const ggml_tensor * t) {
    ggml_tensor * a = ggml_new_tensor(ctx, t->type, GGML_MAX_DIMS, t->ne);
    for (int i = 0; i < GGML_MAX_DIMS; ++i) {
        a->nb[i] = t->nb[i];
    }
    if (ggml_backend_tensor_alloc(t->buffer, a, t->data) != GGML_STATUS_SUCCESS) {
        throw std::runtime_error(std::string("cannot read ") + t->name + " where it lies");
    }
    return a;
}

}  // namespace imx::engine
