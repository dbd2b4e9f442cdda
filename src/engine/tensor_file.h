// A GGUF file's tensor table read from its header (no weights loaded), and reading a tensor's rows as floats:
// what the Hessian encoder and the type search need to compare a model's weights with a quantized copy.
#pragma once

#include "ggml.h"
#include "gguf.h"

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace imx::engine {

struct TensorTable {
    ggml_context * meta = nullptr;
    gguf_context * ctx = nullptr;
    std::string    path;

    explicit TensorTable(const std::string & p);
    ~TensorTable();
    TensorTable(const TensorTable &) = delete;
    TensorTable & operator=(const TensorTable &) = delete;

    const ggml_tensor * find(const std::string & name) const { return ggml_get_tensor(meta, name.c_str()); }
    size_t offset(const std::string & name) const;  // of the tensor's data in the file
};

// n bytes at offset; throws imx::Error naming the file when it is shorter.
std::vector<uint8_t> read_bytes(std::fstream & f, const std::string & path, size_t offset, size_t n);

// n values of type `type` (F32, F16, BF16 or a quantized type) as floats.
void to_float(ggml_type type, const uint8_t * src, float * dst, int64_t n);

}  // namespace imx::engine
