#include "engine/stream/hidden_states.h"

#include "core/error.h"
#include "core/format/atomic_file.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace imx::engine {

void HiddenStates::layout(const std::vector<size_t> & tokens, size_t n_embd) {
    offsets_ = {0};
    for (size_t t : tokens) {
        offsets_.push_back(offsets_.back() + t);
    }
    n_embd_ = n_embd;
}

HiddenStates::HiddenStates(std::string path, const std::vector<size_t> & tokens, size_t n_embd) : path_(std::move(path)) {
    layout(tokens, n_embd);
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd_ < 0) {
        throw Error(path_ + ": cannot create (" + std::strerror(errno) + ")");
    }
}

HiddenStates HiddenStates::open(std::string path, const std::vector<size_t> & tokens, size_t n_embd) {
    HiddenStates h;
    h.path_ = std::move(path);
    h.layout(tokens, n_embd);
    h.fd_ = ::open(h.path_.c_str(), O_RDWR);
    struct stat st{};
    if (h.fd_ < 0 || ::fstat(h.fd_, &st) != 0 || (uint64_t) st.st_size != h.bytes()) {
        throw Error(h.path_ + ": missing or of another size than " + std::to_string(tokens.size()) +
                    " chunks of hidden states");
    }
    return h;
}

HiddenStates::~HiddenStates() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

HiddenStates::HiddenStates(HiddenStates && o) noexcept { *this = std::move(o); }

HiddenStates & HiddenStates::operator=(HiddenStates && o) noexcept {
    if (this != &o) {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        path_ = std::move(o.path_);
        fd_ = o.fd_;
        offsets_ = std::move(o.offsets_);
        n_embd_ = o.n_embd_;
        o.fd_ = -1;
    }
    return *this;
}

void HiddenStates::write(size_t chunk, const float * data) {
    const size_t n = floats(chunk) * sizeof(float);
    const off_t at = (off_t) (offsets_[chunk] * n_embd_ * sizeof(float));
    if (!write_all_at(fd_, data, n, (uint64_t) at)) {
        throw Error(path_ + ": cannot write the hidden states of chunk " + std::to_string(chunk) + " (" +
                    std::strerror(errno) + ")");
    }
}

void HiddenStates::read(size_t chunk, std::vector<float> & out) const {
    out.resize(floats(chunk));
    read(chunk, out.data(), out.size());
}

void HiddenStates::read(size_t chunk, float * out, size_t n) const {
    const off_t at = (off_t) (offsets_[chunk] * n_embd_ * sizeof(float));
    if (n != floats(chunk) || !read_all_at(fd_, out, n * sizeof(float), (uint64_t) at)) {
        throw Error(path_ + ": cannot read the hidden states of chunk " + std::to_string(chunk));
    }
}

void HiddenStates::sync() const {
    if (::fsync(fd_) != 0) {
        throw Error(path_ + ": cannot write (" + std::string(std::strerror(errno)) + ")");
    }
}

}  // namespace imx::engine
