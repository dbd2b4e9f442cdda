#include "engine/evaluate/evaluate.h"

#include "engine/collect/calibration.h"
#include "engine/model/llama_model.h"
#include "core/format/atomic_file.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/hash.h"
#include "core/format/logprob_file.h"
#include "engine/model/tensor_file.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace imx::engine {

namespace fs = std::filesystem;

namespace {

// What the cached log-probs depend on: the base file (path, size, time), the tokens and the chunk size.
uint64_t cache_key(const std::string & base, const std::vector<std::vector<int32_t>> & chunks, uint32_t ctx) {
    uint64_t h = kFnv1aOffset;
    const std::string path = fs::canonical(base).string();
    h = fnv1a(h, path.data(), path.size());
    const uint64_t size = model_file_bytes(base);
    const auto mtime = fs::last_write_time(base).time_since_epoch().count();
    h = fnv1a(h, &size, sizeof size);
    h = fnv1a(h, &mtime, sizeof mtime);
    h = fnv1a(h, &ctx, sizeof ctx);
    for (const auto & c : chunks) {
        h = fnv1a(h, c.data(), c.size() * sizeof(int32_t));
    }
    return h;
}

std::string gib(uint64_t bytes) {
    char b[32];
    std::snprintf(b, sizeof b, "%.2f GiB", bytes / 1073741824.0);
    return b;
}

}  // namespace

Evaluator::Evaluator(const std::string & base, const EvalOptions & o) : o_(o) {
    if (o.ctx < 16) {
        throw Error("context -c " + std::to_string(o.ctx) + " is too small (at least 16 tokens)");
    }
    init_llama(o.verbose);
    {
        ModelPtr vocab_model = load_vocab_only(base);
        const CalibrationOptions co{o.text_file, o.ctx, 0, o.max_chunks, false, false, ""};
        chunks_ = calibration_chunks(co, vocab_model.get());
        n_vocab_ = (size_t) llama_vocab_n_tokens(llama_model_get_vocab(vocab_model.get()));
    }
    if (chunks_.empty()) {
        throw Error(o.text_file + ": shorter than one chunk of " + std::to_string(o.ctx) + " tokens");
    }
    n_scored_ = (o.ctx - 1 - o.ctx / 2) * chunks_.size();
    key_ = cache_key(base, chunks_, o.ctx);
    const uint64_t bytes = logprob_file_bytes(n_vocab_, n_scored_);
    if (!o.cache_dir.empty()) {
        char name[32];
        std::snprintf(name, sizeof name, "-%016llx.logp", (unsigned long long) key_);
        cache_file_ = (fs::path(o.cache_dir) / (fs::path(base).stem().string() + name)).string();
        const LogprobReader cached(cache_file_, key_, n_vocab_, n_scored_);
        if (cached.ok()) {
            from_cache_ = true;
            logprobs_ = cache_file_;
            base_scores_.nll = cached.nll();
            std::error_code ec;
            fs::last_write_time(cache_file_, fs::file_time_type::clock::now(), ec);  // used: last out of the cache
            return;
        }
        if (bytes > o.cache_limit) {
            std::fprintf(stderr, "imx eval: the base's log-probabilities take %s, more than the cache's limit of %s: "
                                 "kept in a temporary file for this run only\n", gib(bytes).c_str(), gib(o.cache_limit).c_str());
            cache_file_.clear();
        }
    }
    if (!cache_file_.empty()) {
        fs::create_directories(o.cache_dir);
        if (free_bytes(o.cache_dir) < bytes) {
            throw Error(o.cache_dir + ": the base's log-probabilities need " + gib(bytes) + ", " +
                        gib(free_bytes(o.cache_dir)) + " free (--cache-dir elsewhere)");
        }
        const TemporaryFile tmp(temporary_path(cache_file_));
        try {
            compute_base(base, tmp.path());
            fs::rename(tmp.path(), cache_file_);
        } catch (...) {
            std::error_code ec;
            fs::remove(tmp.path(), ec);
            throw;
        }
        logprobs_ = cache_file_;
        for (const std::string & removed : trim_cache(o.cache_dir, o.cache_limit, cache_file_)) {
            std::fprintf(stderr, "imx eval: removed %s from the cache (over its limit of %s)\n", removed.c_str(),
                         gib(o.cache_limit).c_str());
        }
        return;
    }
    const std::string dir = fs::temp_directory_path().string();
    if (free_bytes(dir) < bytes) {
        throw Error(dir + ": the base's log-probabilities need " + gib(bytes) + " for this run, " +
                    gib(free_bytes(dir)) + " free (TMPDIR elsewhere)");
    }
    char name[64];
    std::snprintf(name, sizeof name, "imx-eval-%d-%016llx.logp", (int) getpid(), (unsigned long long) key_);
    temporary_ = std::make_unique<TemporaryFile>((fs::path(dir) / name).string());
    logprobs_ = temporary_->path();
    compute_base(base, logprobs_);
}

Evaluator::~Evaluator() {
    if (temporary_) {
        std::error_code ec;
        fs::remove(temporary_->path(), ec);
    }
}

void Evaluator::compute_base(const std::string & base, const std::string & path) {
    LogprobWriter writer(path, key_, n_vocab_, n_scored_);
    run(base, [&](size_t, const float * logits, int32_t next) {
        base_scores_.nll.push_back((float) writer.add(logits, next));
    });
    writer.finish();
}

TokenScores Evaluator::score(const std::string & model) const {
    LogprobReader base(logprobs_, key_, n_vocab_, n_scored_);
    if (!base.ok()) {
        throw Error(logprobs_ + ": the base's log-probabilities are gone or damaged (another run's cache trim?)");
    }
    const size_t per_chunk = o_.ctx - 1 - o_.ctx / 2;
    TokenScores s;
    std::vector<float> scratch, rows;
    size_t loaded = SIZE_MAX;  // the chunk whose base rows are in `rows`
    run(model, [&](size_t t, const float * logits, int32_t next) {
        if (t / per_chunk != loaded) {
            loaded = t / per_chunk;
            base.read(loaded * per_chunk, per_chunk, rows);
        }
        score_token(rows.data() + (t % per_chunk) * n_vocab_, logits, n_vocab_, next, s, scratch);
    });
    return s;
}

void Evaluator::run(const std::string & path, const std::function<void(size_t, const float *, int32_t)> & use) const {
    ModelPtr model = load_model(path, {o_.n_gpu_layers, 0});
    if ((size_t) llama_vocab_n_tokens(llama_model_get_vocab(model.get())) != n_vocab_) {
        throw Error(path + ": its vocabulary differs from the base model's");
    }
    ContextPtr ctx(llama_init_from_model(model.get(), chunk_context_params(o_.ctx, o_.threads)));
    if (!ctx) {
        throw Error(path + ": could not create a context of " + std::to_string(o_.ctx) + " tokens");
    }
    const uint32_t first = o_.ctx / 2;
    llama_batch batch = llama_batch_init((int32_t) o_.ctx, 0, 1);
    size_t t = 0;
    for (size_t c = 0; c < chunks_.size(); ++c) {
        llama_memory_clear(llama_get_memory(ctx.get()), true);
        const auto & chunk = chunks_[c];
        fill_batch(batch, chunk, first);  // as llama-perplexity: only the scored half needs logits
        if (llama_decode(ctx.get(), batch) != 0) {
            llama_batch_free(batch);
            throw Error(path + ": llama_decode failed at chunk " + std::to_string(c));
        }
        for (uint32_t k = first; k + 1 < o_.ctx; ++k) {
            use(t++, llama_get_logits_ith(ctx.get(), (int32_t) k), chunk[k + 1]);
        }
        if (o_.progress) {
            o_.progress(path, (uint32_t) c + 1, (uint32_t) chunks_.size());
        }
    }
    llama_batch_free(batch);
}

}  // namespace imx::engine
