#include "core/format/atomic_file.h"

#include "core/error.h"
#include "core/interrupt.h"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <regex>
#include <filesystem>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

namespace imx {

namespace fs = std::filesystem;

std::vector<uint8_t> read_file(const std::string & path) {
    FILE * f = std::fopen(path.c_str(), "rb");
    if (!f) {
        throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
    }
    // one allocation of the file's size where it is known: a 1 GB covariance file read in growing pieces cost
    // ~2 GB of copies and fresh pages; the loop still reads what a pipe or a growing file has past that size
    std::vector<uint8_t> bytes;
    struct stat st {};
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode)) {
        bytes.resize((size_t) st.st_size);
        bytes.resize(std::fread(bytes.data(), 1, bytes.size(), f));
    }
    uint8_t buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
        bytes.insert(bytes.end(), buf, buf + n);
    }
    const bool failed = std::ferror(f);
    std::fclose(f);
    if (failed) {
        throw Error(path + ": read error");
    }
    return bytes;
}

std::string temporary_path(const std::string & path) { return path + ".tmp-" + std::to_string(getpid()); }

void write_text_atomic(const std::string & path, std::string_view text) {
    write_file_atomic(path, {reinterpret_cast<const uint8_t *>(text.data()), text.size()});
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), tmp_(std::make_unique<TemporaryFile>(temporary_path(path_))) {
    fd_ = ::open(tmp_->path().c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd_ < 0) {
        throw Error(path_ + ": cannot create (" + std::strerror(errno) + ")");
    }
}

AtomicFile::~AtomicFile() {
    if (fd_ >= 0) {  // not committed
        ::close(fd_);
        std::remove(tmp_->path().c_str());
    }
}

void AtomicFile::write(std::span<const uint8_t> bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t w = ::write(fd_, bytes.data() + done, bytes.size() - done);
        if (w <= 0) {
            throw Error(path_ + ": cannot write (" + std::strerror(errno) + ")");
        }
        done += (size_t) w;
    }
}

void AtomicFile::commit() {
    int err = ::fsync(fd_) == 0 ? 0 : errno;
    if (::close(fd_) != 0 && err == 0) {
        err = errno;
    }
    fd_ = -1;
    if (err == 0 && std::rename(tmp_->path().c_str(), path_.c_str()) != 0) {
        err = errno;
    }
    if (err != 0) {
        std::remove(tmp_->path().c_str());
        throw Error(path_ + ": cannot write (" + std::strerror(err) + ")");
    }
}

bool write_all_at(int fd, const void * bytes, size_t n, uint64_t at) {
    const auto * p = static_cast<const uint8_t *>(bytes);
    for (size_t done = 0; done < n;) {
        const ssize_t w = ::pwrite(fd, p + done, n - done, (off_t) (at + done));
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            if (w == 0) {
                errno = 0;
            }
            return false;
        }
        done += (size_t) w;
    }
    return true;
}

bool read_all_at(int fd, void * bytes, size_t n, uint64_t at) {
    auto * p = static_cast<uint8_t *>(bytes);
    for (size_t done = 0; done < n;) {
        const ssize_t r = ::pread(fd, p + done, n - done, (off_t) (at + done));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            if (r == 0) {
                errno = 0;
            }
            return false;
        }
        done += (size_t) r;
    }
    return true;
}

uint64_t free_bytes(const std::string & dir) {
    std::error_code ec;
    const std::filesystem::space_info s = std::filesystem::space(dir, ec);
    return ec ? UINT64_MAX : (uint64_t) s.available;
}

void write_file_atomic(const std::string & path, std::span<const uint8_t> bytes) {
    AtomicFile f(path);
    f.write(bytes);
    f.commit();
}

std::vector<std::string> prepare_output(const std::string & path) {
    const fs::path p(path);
    const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
        throw Error(path + ": is a folder, not a file name");
    }
    if (!fs::is_directory(dir, ec)) {
        throw Error(path + ": cannot create (no folder " + dir.string() + ")");
    }
    // The real test: create (and remove) the very temporary file the output will be written under.
    const std::string probe = temporary_path(path);
    const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) {
        throw Error(path + ": cannot create (" + std::strerror(errno) + ")");
    }
    ::close(fd);
    ::unlink(probe.c_str());

    std::vector<std::string> removed;
    const std::string prefix = p.filename().string() + ".tmp-";
    for (const auto & e : fs::directory_iterator(dir, ec)) {
        const std::string name = e.path().filename().string();
        if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) {
            continue;
        }
        std::string digits = name.substr(prefix.size());
        // a run's other files under the same name: a split model's parts (<path>.tmp-<pid>-00001-of-00004.gguf),
        // a block-by-block run's scratch files (<path>.tmp-<pid>.block.gguf, .hidden-a)
        static const std::regex suffix("(-[0-9]{5}-of-[0-9]{5}\\.gguf|\\.[a-z][a-z0-9.-]*)$");
        digits = std::regex_replace(digits, suffix, "");
        if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) {
            continue;
        }
        const pid_t pid = (pid_t) std::stol(digits);
        if (pid == getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) {
            continue;  // that process still runs (or is not ours to judge): its file is in use
        }
        std::error_code rec;
        const uintmax_t bytes = fs::file_size(e.path(), rec);
        if (fs::remove(e.path(), rec)) {
            char line[64];
            std::snprintf(line, sizeof line, " (%.1f MiB) left by an ended run (pid %d)", bytes / 1048576.0, (int) pid);
            removed.push_back("removed " + e.path().string() + line);
        }
    }
    return removed;
}

std::string write_failure_reason(const std::string & path, const std::string & fallback) {
    const fs::path p(path);
    const std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
    struct statvfs s{};
    // a write that failed for want of space leaves (almost) nothing free; allow for reserved blocks
    if (::statvfs(dir.c_str(), &s) == 0 && (uint64_t) s.f_bavail * s.f_frsize < (1u << 20)) {
        return std::strerror(ENOSPC);
    }
    return fallback;
}

}  // namespace imx
