#include "engine/model/llama_model.h"

#include "core/error.h"
#include "engine/model/tensor_file.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

namespace imx::engine {

namespace {

bool g_verbose = false;
LogCapture * g_capture = nullptr;
std::mutex g_capture_mutex;

void log_callback(ggml_log_level level, const char * text, void *) {
    {
        std::lock_guard<std::mutex> lock(g_capture_mutex);
        if (g_capture) {
            g_capture->on_line(level, text);
            if (level == GGML_LOG_LEVEL_ERROR && !g_verbose) {
                return;  // the capturing caller reports errors in its own words
            }
        }
    }
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) {
        std::fputs(text, stderr);
    }
}

ModelPtr load(const std::string & path, llama_model_params p) {
    if (!std::filesystem::exists(path)) {
        throw Error(path + ": no such file");
    }
    if (!p.vocab_only) {
        model_parts(path);  // a split model given by a later part, or with a part missing: one line naming it
    }
    llama_model * m = llama_model_load_from_file(path.c_str(), p);
    if (!m) {
        throw Error(path + ": llama.cpp could not load this model (see the message above)");
    }
    return ModelPtr(m);
}

}  // namespace

LogCapture::LogCapture(std::function<void(const std::string &)> on_info) : on_info_(std::move(on_info)) {
    std::lock_guard<std::mutex> lock(g_capture_mutex);
    g_capture = this;
}

LogCapture::~LogCapture() {
    std::lock_guard<std::mutex> lock(g_capture_mutex);
    g_capture = nullptr;
}

void LogCapture::on_line(int level, const char * text) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        errors_ += text;
    } else if (on_info_ && level != GGML_LOG_LEVEL_CONT) {
        on_info_(text);
    }
}

void init_llama(bool verbose) {
    static std::once_flag once;
    g_verbose = verbose;
    std::call_once(once, [] {
        llama_log_set(log_callback, nullptr);
        llama_backend_init();
    });
}

ModelPtr load_vocab_only(const std::string & path) {
    llama_model_params p = llama_model_default_params();
    p.vocab_only = true;
    return load(path, p);
}

std::string model_architecture(const std::string & path) {
    ModelPtr m = load_vocab_only(path);
    char buf[128] = {0};
    if (llama_model_meta_val_str(m.get(), "general.architecture", buf, sizeof buf) < 0) {
        throw Error(path + ": no general.architecture");
    }
    return buf;
}

ModelPtr load_model(const std::string & path, const ModelOptions & o) {
    llama_model_params p = llama_model_default_params();
    p.n_gpu_layers = o.n_gpu_layers;
    std::vector<llama_model_kv_override> overrides;
    if (o.experts_used > 0) {
        // as upstream's --override-kv ARCH.expert_used_count=int:N
        llama_model_kv_override kv{};
        kv.tag = LLAMA_KV_OVERRIDE_TYPE_INT;
        const std::string key = model_architecture(path) + ".expert_used_count";
        std::snprintf(kv.key, sizeof kv.key, "%s", key.c_str());
        kv.val_i64 = o.experts_used;
        overrides.push_back(kv);
        overrides.push_back(llama_model_kv_override{});  // terminator: empty key
        p.kv_overrides = overrides.data();
    }
    return load(path, p);
}

llama_context_params chunk_context_params(uint32_t chunk, int threads) {
    if (threads <= 0) {
        threads = (int) std::max(1u, std::thread::hardware_concurrency());
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = chunk;
    cp.n_batch = chunk;
    cp.n_ubatch = chunk;
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.no_perf = true;
    return cp;
}

void fill_batch(llama_batch & batch, const std::vector<llama_token> & tokens, size_t first_output) {
    batch.n_tokens = (int32_t) tokens.size();
    for (size_t k = 0; k < tokens.size(); ++k) {
        batch.token[k] = tokens[k];
        batch.pos[k] = (llama_pos) k;
        batch.n_seq_id[k] = 1;
        batch.seq_id[k][0] = 0;
        batch.logits[k] = k >= first_output;
    }
}

std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool parse_special) {
    // add_special = true, as upstream's imatrix and perplexity tools do (a BOS where the vocab wants one)
    int32_t n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), nullptr, 0, true, parse_special);
    std::vector<llama_token> tokens(n < 0 ? -n : n);
    n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), tokens.data(), (int32_t) tokens.size(), true,
                       parse_special);
    if (n < 0) {
        throw Error("tokenization failed");
    }
    tokens.resize(n);
    return tokens;
}

}  // namespace imx::engine
