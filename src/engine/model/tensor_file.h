// A GGUF model's tensor table read from its headers (no weights loaded), and its tensors' bytes read and
// written where they lie: what the Hessian encoder, the type search and the shape checks need of a model or a
// quantized copy, without libllama.
//
// A model is one file, or a split set as llama.cpp's gguf-split and llama-quantize --keep-split write it:
//     PREFIX-00001-of-0000N.gguf … PREFIX-0000N-of-0000N.gguf
// every part a GGUF of its own with keys split.no, split.count, split.tensors.count; the first part holds the
// model's metadata and some tensors, the others only tensors. Given the first part, the table spans all of them
// (as libllama loads them); given a later part, it says so and names the first.
#pragma once

#include "ggml.h"
#include "gguf.h"

#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace imx::engine {

class TensorTable {
public:
    explicit TensorTable(const std::string & path);
    ~TensorTable();
    TensorTable(const TensorTable &) = delete;
    TensorTable & operator=(const TensorTable &) = delete;

    const std::string & path() const { return paths_[0]; }
    const std::vector<std::string> & paths() const { return paths_; }  // the parts, first to last
    bool split() const { return paths_.size() > 1; }
    gguf_context * metadata() const { return parts_[0].ctx; }  // the model's keys (the first part's)
    size_t alignment() const { return gguf_get_alignment(parts_[0].ctx); }

    const ggml_tensor * find(const std::string & name) const;
    const std::vector<std::string> & names() const { return names_; }  // in file order, part after part
    struct Location {
        size_t part = 0;
        size_t offset = 0;  // of the tensor's data in that part
    };
    Location locate(const std::string & name) const;
    uint64_t file_bytes() const;  // all parts together

private:
    struct Part {
        gguf_context * ctx = nullptr;
        ggml_context * meta = nullptr;
    };
    std::vector<std::string>        paths_;
    std::vector<Part>               parts_;
    std::vector<std::string>        names_;
    std::map<std::string, Location> where_;
    void open_part(const std::string & path);
};

// The parts of the model at `path` (one path for a single file) from its first part's split keys.
std::vector<std::string> model_parts(const std::string & path);
// All parts' sizes together: what a model takes on disk.
uint64_t model_file_bytes(const std::string & path);

// Reads and writes tensor bytes in a table's files (one stream per part, opened once).
class TensorIo {
public:
    TensorIo(const TensorTable & table, bool writable);
    // n bytes of tensor `name` from byte `offset` of its data; throws imx::Error naming the file when short.
    std::vector<uint8_t> read(const std::string & name, size_t offset, size_t n);
    void write(const std::string & name, size_t offset, const uint8_t * bytes, size_t n);
    void flush();  // throws imx::Error naming the file that failed

private:
    const TensorTable &                        table_;
    std::vector<std::unique_ptr<std::fstream>> files_;
};

// n values of type `type` (F32, F16, BF16 or a quantized type) as floats.
void to_float(ggml_type type, const uint8_t * src, float * dst, int64_t n);

}  // namespace imx::engine
