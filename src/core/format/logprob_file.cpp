#include "core/format/logprob_file.h"

#include "core/error.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

namespace imx {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'I', 'M', 'X', 'L', 'O', 'G', 'P', '2'};
constexpr size_t kHeaderBytes = 8 + 3 * 8 + 4;
constexpr float kCodes = 65535.0f;

size_t row_bytes(size_t n_vocab) { return sizeof(float) + n_vocab * sizeof(uint16_t); }

}  // namespace

double encode_logprob_row(const float * logits, size_t n_vocab, int32_t next, float & top, uint16_t * codes) {
    float max_logit = logits[0];
    for (size_t v = 1; v < n_vocab; ++v) {
        max_logit = std::max(max_logit, logits[v]);
    }
    double sum = 0;
    for (size_t v = 0; v < n_vocab; ++v) {
        sum += std::exp((double) logits[v] - max_logit);
    }
    const double lse = max_logit + std::log(sum);  // log Σ exp(logits)
    top = (float) (max_logit - lse);
    const double floor = (double) top - kLogprobRange, step = kLogprobRange / kCodes;
    for (size_t v = 0; v < n_vocab; ++v) {
        const double lp = (double) logits[v] - lse;
        codes[v] = lp <= floor ? 0 : (uint16_t) std::clamp(std::lround((lp - floor) / step), 1L, 65535L);
    }
    return lse - logits[next];
}

void decode_logprob_row(float top, const uint16_t * codes, size_t n_vocab, float * logp) {
    const double floor = (double) top - kLogprobRange, step = kLogprobRange / kCodes;
    double sum = 0;
    for (size_t v = 0; v < n_vocab; ++v) {
        if (codes[v] == 0) {
            logp[v] = -INFINITY;
        } else {
            logp[v] = (float) (floor + step * codes[v]);
            sum += std::exp((double) logp[v]);
        }
    }
    const float shift = (float) std::log(sum);  // rounding leaves Σp a little off 1: make it a distribution again
    for (size_t v = 0; v < n_vocab; ++v) {
        logp[v] -= shift;
    }
}

uint64_t logprob_file_bytes(size_t n_vocab, size_t n_tokens) {
    return kHeaderBytes + (uint64_t) n_tokens * (row_bytes(n_vocab) + sizeof(float));
}

LogprobWriter::LogprobWriter(const std::string & path, uint64_t key, size_t n_vocab, size_t n_tokens)
    : path_(path), out_(path, std::ios::binary | std::ios::trunc), n_vocab_(n_vocab), n_tokens_(n_tokens),
      codes_(n_vocab) {
    const uint64_t header[3] = {key, n_vocab, n_tokens};
    const float range = kLogprobRange;
    out_.write(kMagic, 8);
    out_.write(reinterpret_cast<const char *>(header), sizeof header);
    out_.write(reinterpret_cast<const char *>(&range), sizeof range);
    if (!out_) {
        throw Error(path + ": cannot write the base's log-probabilities");
    }
    nll_.reserve(n_tokens);
}

double LogprobWriter::add(const float * logits, int32_t next) {
    float top = 0;
    const double nll = encode_logprob_row(logits, n_vocab_, next, top, codes_.data());
    out_.write(reinterpret_cast<const char *>(&top), sizeof top);
    out_.write(reinterpret_cast<const char *>(codes_.data()), (std::streamsize) (codes_.size() * sizeof(uint16_t)));
    if (!out_) {
        throw Error(path_ + ": cannot write the base's log-probabilities");
    }
    nll_.push_back((float) nll);
    added_ += 1;
    return nll;
}

void LogprobWriter::finish() {
    if (added_ != n_tokens_) {
        throw Error(path_ + ": " + std::to_string(added_) + " of " + std::to_string(n_tokens_) + " tokens written");
    }
    out_.write(reinterpret_cast<const char *>(nll_.data()), (std::streamsize) (nll_.size() * sizeof(float)));
    out_.flush();
    if (!out_) {
        throw Error(path_ + ": cannot write the base's log-probabilities");
    }
    out_.close();
}

LogprobReader::LogprobReader(const std::string & path, uint64_t key, size_t n_vocab, size_t n_tokens)
    : path_(path), in_(path, std::ios::binary), n_vocab_(n_vocab) {
    char magic[8];
    uint64_t header[3] = {0, 0, 0};
    float range = 0;
    std::error_code ec;
    if (!in_.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0 ||
        !in_.read(reinterpret_cast<char *>(header), sizeof header) ||
        !in_.read(reinterpret_cast<char *>(&range), sizeof range) || header[0] != key || header[1] != n_vocab ||
        header[2] != n_tokens || range != kLogprobRange || fs::file_size(path, ec) != logprob_file_bytes(n_vocab, n_tokens)) {
        return;
    }
    nll_.resize(n_tokens);
    in_.seekg((std::streamoff) (kHeaderBytes + n_tokens * row_bytes(n_vocab)));
    ok_ = (bool) in_.read(reinterpret_cast<char *>(nll_.data()), (std::streamsize) (n_tokens * sizeof(float)));
}

void LogprobReader::read(size_t first, size_t count, std::vector<float> & out) {
    const size_t rb = row_bytes(n_vocab_);
    raw_.resize(count * rb);
    in_.clear();
    in_.seekg((std::streamoff) (kHeaderBytes + first * rb));
    if (!in_.read(reinterpret_cast<char *>(raw_.data()), (std::streamsize) raw_.size())) {
        throw Error(path_ + ": truncated (the base's log-probabilities of tokens " + std::to_string(first) + " to " +
                    std::to_string(first + count) + ")");
    }
    out.resize(count * n_vocab_);
    std::vector<uint16_t> codes(n_vocab_);
    for (size_t t = 0; t < count; ++t) {
        float top = 0;
        std::memcpy(&top, raw_.data() + t * rb, sizeof top);
        std::memcpy(codes.data(), raw_.data() + t * rb + sizeof top, n_vocab_ * sizeof(uint16_t));
        decode_logprob_row(top, codes.data(), n_vocab_, out.data() + t * n_vocab_);
    }
}

std::vector<std::string> trim_cache(const std::string & dir, uint64_t limit, const std::string & keep) {
    struct Entry {
        fs::path            path;
        uint64_t            bytes;
        fs::file_time_type  used;
    };
    std::vector<Entry> entries;
    uint64_t total = 0;
    std::error_code ec;
    for (const auto & e : fs::directory_iterator(dir, ec)) {
        const std::string name = e.path().filename().string();
        const bool ours = (name.size() > 5 && name.ends_with(".logp")) || (name.starts_with("types-") && name.ends_with(".json"));
        if (!ours || !e.is_regular_file(ec)) {
            continue;
        }
        const uint64_t bytes = e.file_size(ec);
        entries.push_back({e.path(), bytes, e.last_write_time(ec)});
        total += bytes;
    }
    std::sort(entries.begin(), entries.end(), [](const Entry & a, const Entry & b) { return a.used < b.used; });
    std::vector<std::string> removed;
    for (const Entry & e : entries) {
        if (total <= limit) {
            break;
        }
        if (!keep.empty() && fs::equivalent(e.path, keep, ec)) {
            continue;
        }
        if (fs::remove(e.path, ec)) {
            total -= e.bytes;
            removed.push_back(e.path.string());
        }
    }
    return removed;
}

}  // namespace imx
