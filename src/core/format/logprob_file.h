// The base model's log-probabilities of every scored token at 16 bits a vocabulary entry: what imx eval keeps of
// the base between runs (the cache), and between the base's pass and the quants' passes within one run. At a
// 152k-token vocabulary a token's row is 297 KiB instead of 594 KiB in F32, and a run holds one chunk of rows in
// memory, not all of them.
//
// Layout (little endian), for n tokens of a vocabulary of V entries:
//   char[8] "IMXLOGP2" | u64 key | u64 V | u64 n | f32 R
//   n rows:   f32 top (the row's largest log-prob) | u16 code[V]
//   n floats: the base's exact −log p of each scored token (its NLL; PPL of the base needs no rounding)
// An entry's log-prob is  top − R + code·R/65535,  code ≥ 1; code 0 stands for "more than R below the top", read
// as p = 0. R = 24 nats (p down to 4e-11 of the top token's; 3.7e-4 nats a step: half a step of rounding is
// 1.8e-4 relative in p). Read back, a row is renormalised to sum to 1.
// That is 8 + 2·V bytes a token — what llama-perplexity's --kl-divergence-base file takes (8 + 2·V, V rounded up
// to even), which keeps 16 nats below the top. Measured against the exact F32 log-probs: docs/quality.md.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace imx {

inline constexpr float kLogprobRange = 24.0f;

// One token's row: log_softmax of `logits` encoded; returns −log p(next) exactly (from the float log-probs).
double encode_logprob_row(const float * logits, size_t n_vocab, int32_t next, float & top, uint16_t * codes);
// Back to log-probs, renormalised; entries with code 0 become −infinity (p = 0).
void decode_logprob_row(float top, const uint16_t * codes, size_t n_vocab, float * logp);

class LogprobWriter {
public:
    // Writes to `path` (the caller makes it atomic or temporary); throws imx::Error naming it on failure.
    LogprobWriter(const std::string & path, uint64_t key, size_t n_vocab, size_t n_tokens);
    // The next token's row, from the base's raw logits; returns its NLL.
    double add(const float * logits, int32_t next);
    void finish();  // writes the NLLs; every token must have been added

private:
    std::string         path_;
    std::ofstream       out_;
    size_t              n_vocab_, n_tokens_, added_ = 0;
    std::vector<uint16_t> codes_;
    std::vector<float>  nll_;
};

class LogprobReader {
public:
    // Opens `path` if it holds n_tokens rows of n_vocab made under `key`; ok() is false otherwise (a stale or
    // foreign file: the caller computes the base again).
    LogprobReader(const std::string & path, uint64_t key, size_t n_vocab, size_t n_tokens);
    bool ok() const { return ok_; }
    const std::vector<float> & nll() const { return nll_; }
    // Rows [first, first + count) decoded into out (count × n_vocab floats); throws imx::Error on a short file.
    void read(size_t first, size_t count, std::vector<float> & out);

private:
    std::string           path_;
    std::ifstream         in_;
    bool                  ok_ = false;
    size_t                n_vocab_ = 0;
    std::vector<float>    nll_;
    std::vector<uint8_t>  raw_;
};

// The bytes a cache of n tokens takes (header included): checked against the budget before it is written.
uint64_t logprob_file_bytes(size_t n_vocab, size_t n_tokens);

// Keeps the eval cache within `limit` bytes: removes the least recently used files imx put there (*.logp,
// types-*.json) until the rest fit, never `keep`. Returns the paths removed.
std::vector<std::string> trim_cache(const std::string & dir, uint64_t limit, const std::string & keep);

}  // namespace imx
