#include "core/format/block_spill.h"

#include "core/format/atomic_file.h"
#include "core/format/checkpoint.h"
#include "core/error.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <unistd.h>

namespace imx {

namespace fs = std::filesystem;

namespace {

std::string folder_of(const std::string & path) {
    return fs::path(path).parent_path().empty() ? std::string(".") : fs::path(path).parent_path().string();
}

}  // namespace

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
    uint64_t size = 1ull << 20;  // the names and counts: well under this
    for (const auto & [name, ts] : stats.tensors) {
        size += (ts.sums.size() + ts.counts.size()) * 8;
    }
    for (const Covariance & c : stats.covariances) {
        size += (c.values.size() + c.cross.size()) * sizeof(double);
    }
    const std::string dir = folder_of(path_);
    if (free_bytes(dir) < size + (1ull << 30)) {
        drop("block " + std::to_string(block) + "'s " + std::to_string(size >> 20) + " MiB would leave under 1 GiB free in " +
             dir);
        return false;
    }
    // written from where the numbers lie (write_checkpoint hands the covariances over as they are)
    uint64_t at = end_;
    std::string failed;
    write_checkpoint({"block " + std::to_string(block), 0, stats}, [&](const uint8_t * p, size_t n) {
        if (failed.empty() && !write_all_at(fd_, p, n, at)) {
            failed = errno ? std::strerror(errno) : "nothing written";
        }
        at += n;
    });
    if (!failed.empty()) {
        drop(path_ + ": " + failed + " at block " + std::to_string(block));
        return false;
    }
    where_[block] = {end_, at - end_};
    end_ = at;
    return true;
}

bool BlockSpill::room_for(int more) {
    if (fd_ < 0 || where_.empty() || more <= 0) {
        return fd_ >= 0;
    }
    const uint64_t need = end_ / where_.size() * (uint64_t) more;
    const std::string dir = folder_of(path_);
    const uint64_t free = free_bytes(dir);
    if (free < need + (1ull << 30)) {
        drop("the other " + std::to_string(more) + " blocks need about " + std::to_string(need >> 30) + " GiB more; " +
             dir + " has " + std::to_string(free >> 30) + " GiB free");
        return false;
    }
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
    uint64_t at = it->second.first;
    return read_checkpoint(it->second.second, [&](uint8_t * to, size_t n) {
        if (!read_all_at(fd_, to, n, at)) {
            throw Error(path_ + ": " + (errno ? std::strerror(errno) : "shorter than written") + " reading block " +
                        std::to_string(block));
        }
        at += n;
    }, path_).data;
}

}  // namespace imx
