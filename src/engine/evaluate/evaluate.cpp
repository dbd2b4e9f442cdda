#include "engine/evaluate/evaluate.h"

#include "engine/collect/calibration.h"
#include "engine/model/llama_model.h"
#include "core/format/atomic_file.h"
#include "core/error.h"
#include "core/interrupt.h"
#include "core/hash.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace imx::engine {

namespace fs = std::filesystem;

namespace {

constexpr char kCacheMagic[8] = {'I', 'M', 'X', 'L', 'O', 'G', 'P', '1'};

// What the cached log-probs depend on: the base file (path, size, time), the tokens and the chunk size.
uint64_t cache_key(const std::string & base, const std::vector<std::vector<int32_t>> & chunks, uint32_t ctx) {
    uint64_t h = kFnv1aOffset;
    const std::string path = fs::canonical(base).string();
    h = fnv1a(h, path.data(), path.size());
    const uint64_t size = fs::file_size(base);
    const auto mtime = fs::last_write_time(base).time_since_epoch().count();
    h = fnv1a(h, &size, sizeof size);
    h = fnv1a(h, &mtime, sizeof mtime);
    h = fnv1a(h, &ctx, sizeof ctx);
    for (const auto & c : chunks) {
        h = fnv1a(h, c.data(), c.size() * sizeof(int32_t));
    }
    return h;
}

bool read_cache(const std::string & path, uint64_t key, size_t n_vocab, size_t n_scored, std::vector<float> & out) {
    std::ifstream f(path, std::ios::binary);
    char magic[8];
    uint64_t k = 0, nv = 0, ns = 0;
    if (!f.read(magic, 8) || std::memcmp(magic, kCacheMagic, 8) != 0 || !f.read((char *) &k, 8) ||
        !f.read((char *) &nv, 8) || !f.read((char *) &ns, 8) || k != key || nv != n_vocab || ns != n_scored) {
        return false;
    }
    out.resize(n_vocab * n_scored);
    return (bool) f.read((char *) out.data(), (std::streamsize) (out.size() * sizeof(float)));
}

// Written to a temporary file and renamed: a cache file is whole or absent, even if imx is killed.
void write_cache(const std::string & path, uint64_t key, size_t n_vocab, size_t n_scored, const std::vector<float> & data) {
    fs::create_directories(fs::path(path).parent_path());
    const TemporaryFile tmp_file(temporary_path(path));
    const std::string & tmp = tmp_file.path();
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        const uint64_t hdr[3] = {key, n_vocab, n_scored};
        f.write(kCacheMagic, 8);
        f.write((const char *) hdr, sizeof hdr);
        f.write((const char *) data.data(), (std::streamsize) (data.size() * sizeof(float)));
        if (!f.flush()) {
            std::error_code ec;
            fs::remove(tmp, ec);
            throw Error(path + ": cannot write the base logits cache");
        }
    }
    fs::rename(tmp, path);
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
    const size_t per_chunk = o.ctx - 1 - o.ctx / 2;
    const size_t n_scored = per_chunk * chunks_.size();

    const uint64_t key = cache_key(base, chunks_, o.ctx);
    if (!o.cache_dir.empty()) {
        char name[32];
        std::snprintf(name, sizeof name, "-%016llx.logp", (unsigned long long) key);
        cache_file_ = (fs::path(o.cache_dir) / (fs::path(base).stem().string() + name)).string();
        from_cache_ = read_cache(cache_file_, key, n_vocab_, n_scored, base_logp_);
    }
    if (from_cache_) {
        for (size_t c = 0; c < chunks_.size(); ++c) {  // the base's own NLL, from its cached log-probs
            for (size_t i = 0; i < per_chunk; ++i) {
                const size_t t = c * per_chunk + i;
                base_scores_.nll.push_back(-base_logp_[t * n_vocab_ + (size_t) chunks_[c][o.ctx / 2 + i + 1]]);
            }
        }
        return;
    }
    base_logp_.resize(n_vocab_ * n_scored);
    std::vector<float> scratch;
    run(base, [&](size_t t, const float * logits, int32_t next) {
        float * logp = base_logp_.data() + t * n_vocab_;
        log_softmax(logits, n_vocab_, logp);
        base_scores_.nll.push_back(-logp[next]);
    });
    if (!cache_file_.empty()) {
        write_cache(cache_file_, key, n_vocab_, n_scored, base_logp_);
    }
}

TokenScores Evaluator::score(const std::string & model) const {
    TokenScores s;
    std::vector<float> scratch;
    run(model, [&](size_t t, const float * logits, int32_t next) {
        score_token(base_logp_.data() + t * n_vocab_, logits, n_vocab_, next, s, scratch);
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
