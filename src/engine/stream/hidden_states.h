// The calibration chunks' hidden states between two blocks: per chunk, tokens × n_embd floats (the residual
// stream a block reads and the next block's input), in a file — 512 tokens × n_embd × 4 bytes a chunk: 4 MiB at
// n_embd 2048, 14 MiB at 7168 — read back chunk by chunk, so memory holds one chunk whatever the text's length
// (the page cache keeps small runs in memory anyway).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace imx::engine {

class HiddenStates {
public:
    // A new file at `path` (truncated) for chunks of tokens[c] × n_embd floats (chat chunks differ in length).
    HiddenStates(std::string path, const std::vector<size_t> & tokens, size_t n_embd);
    // An existing file (a checkpoint's), checked for its size; throws imx::Error naming it otherwise.
    static HiddenStates open(std::string path, const std::vector<size_t> & tokens, size_t n_embd);
    ~HiddenStates();
    HiddenStates(HiddenStates && o) noexcept;
    HiddenStates & operator=(HiddenStates && o) noexcept;
    HiddenStates(const HiddenStates &) = delete;
    HiddenStates & operator=(const HiddenStates &) = delete;

    void write(size_t chunk, const float * data);
    void read(size_t chunk, std::vector<float> & out) const;
    void read(size_t chunk, float * out, size_t n) const;  // n: floats(chunk), checked
    void sync() const;  // on disk (a checkpoint refers to it)
    const std::string & path() const { return path_; }
    size_t chunks() const { return offsets_.size() - 1; }
    size_t floats(size_t chunk) const { return (offsets_[chunk + 1] - offsets_[chunk]) * n_embd_; }
    uint64_t bytes() const { return (uint64_t) offsets_.back() * n_embd_ * sizeof(float); }

private:
    HiddenStates() = default;
    std::string path_;
    int         fd_ = -1;
    std::vector<size_t> offsets_{0};  // first token of each chunk, and the total
    size_t      n_embd_ = 0;
    void layout(const std::vector<size_t> & tokens, size_t n_embd);
};

}  // namespace imx::engine
