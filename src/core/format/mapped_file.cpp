#include "core/format/mapped_file.h"

#include "core/format/atomic_file.h"
#include "core/error.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace imx {

MappedFile::MappedFile(const std::string & path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
    }
    struct stat st {};
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
        void * p = mmap(nullptr, (size_t) st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            madvise(p, (size_t) st.st_size, MADV_SEQUENTIAL);
            data_ = static_cast<const uint8_t *>(p);
            size_ = (size_t) st.st_size;
            mapped_ = true;
        }
    }
    ::close(fd);
    if (!mapped_) {
        read_ = read_file(path);
        data_ = read_.data();
        size_ = read_.size();
    }
}

MappedFile::~MappedFile() {
    if (mapped_) {
        munmap(const_cast<uint8_t *>(data_), size_);
    }
}

}  // namespace imx
