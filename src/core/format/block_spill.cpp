#include "core/format/block_spill.h"

#include "core/format/checkpoint.h"
#include "core/error.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <unistd.h>

namespace imx {

namespace fs = std::filesystem;

BlockSpill::BlockSpill(std::string path) : path_(std::move(path)) {
    file_ = std::make_unique<ScratchFile>(path_);
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd_ < 0) {
        const std::string e = std::strerror(errno);
        file_.reset();
        why_ = path_ + ": " + e;
    }
}

BlockSpill::~BlockSpill() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

void BlockSpill::drop(const std::string & why) {
    if (fd_ >= 0) {
        ::close(fd_);
        fd_ = -1;
    }
    file_.reset();  // removes it
    where_.clear();
    end_ = 0;
    why_ = why;
}

bool BlockSpill::put(int block, const Imatrix & stats) {
    if (fd_ < 0) {
        return false;
    }
    const std::vector<uint8_t> b = checkpoint_bytes({"block " + std::to_string(block), 0, stats});
    std::error_code ec;
    const fs::space_info space = fs::space(fs::path(path_).parent_path().empty() ? fs::path(".") : fs::path(path_).parent_path(), ec);
    if (!ec && space.available < b.size() + (1ull << 30)) {
        drop("block " + std::to_string(block) + "'s " + std::to_string(b.size() >> 20) + " MiB would leave under 1 GiB free in " +
             fs::path(path_).parent_path().string());
        return false;
    }
    for (size_t done = 0; done < b.size();) {
        const ssize_t n = ::pwrite(fd_, b.data() + done, b.size() - done, (off_t) (end_ + done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            drop(path_ + ": " + (n < 0 ? std::strerror(errno) : "nothing written") + " at block " + std::to_string(block));
            return false;
        }
        done += (size_t) n;
    }
    where_[block] = {end_, b.size()};
    end_ += b.size();
    return true;
}

bool BlockSpill::holds(int blocks) const {
    for (int b = 0; b < blocks; ++b) {
        if (!where_.count(b)) {
            return false;
        }
    }
    return fd_ >= 0;
}

Imatrix BlockSpill::get(int block) const {
    const auto it = where_.find(block);
    if (fd_ < 0 || it == where_.end()) {
        throw Error(path_ + ": holds no statistics of block " + std::to_string(block));
    }
    std::vector<uint8_t> b(it->second.second);
    for (size_t done = 0; done < b.size();) {
        const ssize_t n = ::pread(fd_, b.data() + done, b.size() - done, (off_t) (it->second.first + done));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            throw Error(path_ + ": " + (n < 0 ? std::strerror(errno) : "shorter than written") + " reading block " +
                        std::to_string(block));
        }
        done += (size_t) n;
    }
    return parse_checkpoint(b, path_).data;
}

}  // namespace imx
