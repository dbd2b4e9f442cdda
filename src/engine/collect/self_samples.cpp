#include "engine/collect/self_samples.h"

#include "core/error.h"
#include "core/format/atomic_file.h"
#include "core/interrupt.h"
#include "engine/model/llama_model.h"

#include <algorithm>
#include <memory>
#include <vector>

namespace imx::engine {

namespace {

struct SamplerFree {
    void operator()(llama_sampler * s) const { llama_sampler_free(s); }
};
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerFree>;

SamplerPtr sampler(const SelfSampleOptions & o, uint32_t seed) {
    SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (o.top_p < 1.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(o.top_p, 1));
    }
    llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(o.temperature));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(seed));
    return chain;
}

// Where every sequence starts: the model's BOS; a vocabulary without one marks documents with its end-of-text
// token, which is then the start.
llama_token first_token(const llama_vocab * vocab, const std::string & model) {
    llama_token t = llama_vocab_bos(vocab);
    if (t == LLAMA_TOKEN_NULL) {
        t = llama_vocab_eos(vocab);
    }
    if (t == LLAMA_TOKEN_NULL) {
        throw Error(model + ": the vocabulary has neither a BOS nor an end-of-text token to start a sequence from");
    }
    return t;
}

std::string detokenize(const llama_vocab * vocab, const std::vector<llama_token> & tokens) {
    std::string text(tokens.size() * 8 + 16, '\0');
    int32_t n = llama_detokenize(vocab, tokens.data(), (int32_t) tokens.size(), text.data(), (int32_t) text.size(),
                                 true, false);
    if (n < 0) {
        text.resize((size_t) -n);
        n = llama_detokenize(vocab, tokens.data(), (int32_t) tokens.size(), text.data(), (int32_t) text.size(), true,
                             false);
    }
    text.resize((size_t) std::max(n, 0));
    return text;
}

}  // namespace

SelfSampleResult write_self_samples(const SelfSampleOptions & o, const std::function<void(uint64_t, uint64_t)> & progress) {
    if (o.sequences < 1 || o.tokens < 1 || o.parallel < 1) {
        throw Error("generate: --sequences, -n and --parallel must be at least 1");
    }
    ModelOptions mo;
    mo.n_gpu_layers = o.n_gpu_layers;
    ModelPtr model = load_model(o.model, mo);
    const llama_vocab * vocab = llama_model_get_vocab(model.get());
    const llama_token start = first_token(vocab, o.model);
    const int par = std::min(o.parallel, o.sequences);

    llama_context_params cp = chunk_context_params((uint32_t) (o.tokens + 1), o.threads);
    cp.n_seq_max = (uint32_t) par;
    cp.n_ctx = (uint32_t) (par * (o.tokens + 1));
    cp.n_batch = cp.n_ubatch = (uint32_t) par;
    cp.kv_unified = false;  // each sequence its own cells: the sequences share nothing but the start
    ContextPtr ctx(llama_init_from_model(model.get(), cp));
    if (!ctx) {
        throw Error(o.model + ": cannot make a context for " + std::to_string(par) + " sequences of " +
                    std::to_string(o.tokens) + " tokens");
    }
    llama_batch batch = llama_batch_init(par, 0, 1);
    std::unique_ptr<llama_batch, void (*)(llama_batch *)> batch_guard(&batch, [](llama_batch * b) { llama_batch_free(*b); });

    SelfSampleResult res;
    std::string text;
    const uint64_t total = (uint64_t) o.sequences * (uint64_t) o.tokens;
    for (int first = 0; first < o.sequences; first += par) {
        const int n = std::min(par, o.sequences - first);
        llama_memory_clear(llama_get_memory(ctx.get()), true);
        std::vector<SamplerPtr> samplers;
        std::vector<std::vector<llama_token>> doc(n);  // each sequence's document so far
        std::vector<llama_token> next(n, start);
        for (int s = 0; s < n; ++s) {
            samplers.push_back(sampler(o, o.seed + (uint32_t) (first + s)));
        }
        auto end_document = [&](int s) {
            if (!doc[s].empty()) {
                text += detokenize(vocab, doc[s]);
                text += "\n\n";
                ++res.documents;
                doc[s].clear();
            }
        };
        for (int pos = 0; pos < o.tokens; ++pos) {
            if (const int sig = interrupted()) {
                throw Interrupted(sig, "interrupted (signal " + std::to_string(sig) + ") while sampling sequence " +
                                           std::to_string(first + 1) + " of " + std::to_string(o.sequences));
            }
            batch.n_tokens = n;
            for (int s = 0; s < n; ++s) {
                batch.token[s] = next[s];
                batch.pos[s] = pos;
                batch.n_seq_id[s] = 1;
                batch.seq_id[s][0] = s;
                batch.logits[s] = true;
            }
            if (llama_decode(ctx.get(), batch) != 0) {
                throw Error(o.model + ": llama_decode failed at token " + std::to_string(pos) + " of sequences " +
                            std::to_string(first + 1) + ".." + std::to_string(first + n));
            }
            for (int s = 0; s < n; ++s) {
                next[s] = llama_sampler_sample(samplers[s].get(), ctx.get(), s);
                if (llama_vocab_is_eog(vocab, next[s])) {
                    // a document boundary, as in pretraining's packed sequences: the model reads it and goes on
                    end_document(s);
                } else {
                    doc[s].push_back(next[s]);
                }
            }
            res.tokens += (uint64_t) n;
            progress(res.tokens, total);
        }
        for (int s = 0; s < n; ++s) {
            end_document(s);
        }
        res.sequences += n;
    }
    write_text_atomic(o.output, text);
    res.bytes = text.size();
    return res;
}

}  // namespace imx::engine
