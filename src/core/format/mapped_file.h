// A file's bytes, mapped read-only instead of read into memory: a covariance file is ~1 GB per 8B layer, and
// reading it into a buffer cost a second gigabyte of fresh pages (docs/scale.md). Not a regular file (a pipe):
// read as before.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace imx {

class MappedFile {
public:
    explicit MappedFile(const std::string & path);  // throws Error naming the file
    ~MappedFile();
    MappedFile(const MappedFile &) = delete;
    MappedFile & operator=(const MappedFile &) = delete;

    std::span<const uint8_t> bytes() const { return {data_, size_}; }

private:
    const uint8_t *      data_ = nullptr;
    size_t               size_ = 0;
    bool                 mapped_ = false;
    std::vector<uint8_t> read_;  // where it could not be mapped
};

}  // namespace imx
