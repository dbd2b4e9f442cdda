#include "engine/stream/hidden_stream.h"

#include <filesystem>

namespace imx::engine {

HiddenStream::HiddenStream(std::string stem, bool per_block, std::vector<size_t> tokens, size_t n_embd)
    : stem_(std::move(stem)), per_block_(per_block), tokens_(std::move(tokens)), n_embd_(n_embd) {}

std::string HiddenStream::path(int b) const {
    return stem_ + "-" + std::to_string(per_block_ ? b : b % 2);
}

HiddenStates & HiddenStream::open_new(int b, std::unique_ptr<ScratchFile> & file,
                                      std::unique_ptr<HiddenStates> & states) {
    states.reset();  // the file it had may be the one about to be truncated
    file = std::make_unique<ScratchFile>(path(b));
    states = std::make_unique<HiddenStates>(path(b), tokens_, n_embd_);
    return *states;
}

HiddenStates & HiddenStream::begin() {
    block_ = 0;
    return open_new(0, in_file_, in_);
}

HiddenStates & HiddenStream::resume(int b) {
    block_ = b;
    in_file_.reset();  // a checkpoint's file: not this run's scratch, kept whatever happens
    for (int k = 0; per_block_ && k < b; ++k) {  // a kill between a checkpoint's save and advance() leaves one
        std::error_code ec;
        std::filesystem::remove(path(k), ec);
    }
    in_ = std::make_unique<HiddenStates>(HiddenStates::open(path(b), tokens_, n_embd_));
    return *in_;
}

HiddenStates & HiddenStream::output() {
    return open_new(block_ + 1, out_file_, out_);
}

void HiddenStream::keep_output() {
    out_->sync();
    out_file_->keep();
}

void HiddenStream::advance() {
    if (per_block_) {  // a checkpoint that refers to the output has been saved by now
        std::error_code ec;
        std::filesystem::remove(path(block_), ec);
    }
    in_ = std::move(out_);
    in_file_ = std::move(out_file_);
    ++block_;
}

void HiddenStream::finish() {
    in_.reset();
    if (per_block_) {
        std::error_code ec;
        std::filesystem::remove(path(block_), ec);
    }
    in_file_.reset();
}

}  // namespace imx::engine
