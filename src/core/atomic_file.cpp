#include "atomic_file.h"

#include "error.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace imx {

std::vector<uint8_t> read_file(const std::string & path) {
    FILE * f = std::fopen(path.c_str(), "rb");
    if (!f) {
        throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
    }
    std::vector<uint8_t> bytes;
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

void write_file_atomic(const std::string & path, std::span<const uint8_t> bytes) {
    const std::string tmp = path + ".tmp." + std::to_string(getpid());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        throw Error(path + ": cannot create (" + std::strerror(errno) + ")");
    }
    size_t done = 0;
    bool ok = true;
    while (ok && done < bytes.size()) {
        const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
        ok = w > 0;
        done += ok ? (size_t) w : 0;
    }
    const int err = errno;
    ok = ok && ::fsync(fd) == 0;
    ok = (::close(fd) == 0) && ok;
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int e = ok ? errno : err;
        std::remove(tmp.c_str());
        throw Error(path + ": cannot write (" + std::strerror(e) + ")");
    }
}

}  // namespace imx
