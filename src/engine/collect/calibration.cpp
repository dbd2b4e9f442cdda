#include "engine/collect/calibration.h"

#include "core/format/atomic_file.h"
#include "core/format/chat_samples.h"
#include "core/error.h"
#include "engine/model/llama_model.h"

namespace imx::engine {

namespace {

std::vector<Chunk> select(std::vector<Chunk> all, const CalibrationOptions & o, const std::string & what) {
    const size_t n_all = all.size();
    if (o.first_chunk >= n_all) {
        throw Error(o.file + ": " + what + " make " + std::to_string(n_all) + " chunks of up to " +
                    std::to_string(o.chunk_size) + " tokens; none left after skipping " +
                    std::to_string(o.first_chunk));
    }
    all.erase(all.begin(), all.begin() + o.first_chunk);
    if (o.max_chunks >= 0 && (size_t) o.max_chunks < all.size()) {
        all.resize(o.max_chunks);
    }
    return all;
}

std::vector<Chunk> text_chunks(const CalibrationOptions & o, const llama_vocab * vocab, const std::string & text) {
    const std::vector<llama_token> tokens = tokenize(vocab, text, o.parse_special);
    const bool add_bos = llama_vocab_get_add_bos(vocab);
    std::vector<Chunk> chunks;
    for (size_t start = 0; start + o.chunk_size <= tokens.size(); start += o.chunk_size) {
        Chunk c(tokens.begin() + start, tokens.begin() + start + o.chunk_size);
        if (add_bos) {
            c[0] = llama_vocab_bos(vocab);
        }
        chunks.push_back(std::move(c));
    }
    return select(std::move(chunks), o, std::to_string(tokens.size()) + " tokens");
}

std::vector<Chunk> chat_chunks(const CalibrationOptions & o, const llama_model * model, const std::string & text) {
    const char * tmpl = o.chat_template.empty() ? llama_model_chat_template(model, nullptr) : o.chat_template.c_str();
    if (!tmpl) {
        throw Error(o.file + ": the model has no chat template; name one with --chat-template (e.g. chatml)");
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<Chunk> chunks;
    const auto samples = parse_chat_jsonl(text, o.file);
    for (size_t i = 0; i < samples.size(); ++i) {
        std::vector<llama_chat_message> msgs;
        size_t chars = 0;
        for (const auto & m : samples[i]) {
            msgs.push_back({m.role.c_str(), m.content.c_str()});
            chars += m.role.size() + m.content.size();
        }
        std::vector<char> buf(2 * chars + 256);
        int32_t n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), false, buf.data(), (int32_t) buf.size());
        if (n > (int32_t) buf.size()) {
            buf.resize(n);
            n = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), false, buf.data(), (int32_t) buf.size());
        }
        if (n < 0) {
            throw Error(o.file + ": conversation " + std::to_string(i + 1) + ": the chat template '" +
                        std::string(tmpl).substr(0, 40) + "' is not one llama.cpp can apply");
        }
        // the rendered template carries its own special tokens
        Chunk c = tokenize(vocab, std::string(buf.data(), n), true);
        if (c.size() > o.chunk_size) {
            c.resize(o.chunk_size);
        }
        if (!c.empty()) {
            chunks.push_back(std::move(c));
        }
    }
    return select(std::move(chunks), o, std::to_string(samples.size()) + " conversations");
}

}  // namespace

bool is_chat_file(const std::string & path) {
    return path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
}

std::vector<Chunk> calibration_chunks(const CalibrationOptions & o, const llama_model * model) {
    const std::vector<uint8_t> raw = read_file(o.file);
    const std::string text(raw.begin(), raw.end());
    return o.chat ? chat_chunks(o, model, text) : text_chunks(o, llama_model_get_vocab(model), text);
}

}  // namespace imx::engine
