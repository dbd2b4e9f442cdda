#include "tensor_file.h"

#include "core/error.h"

#include <algorithm>

namespace imx::engine {

TensorTable::TensorTable(const std::string & p) : path(p) {
    ctx = gguf_init_from_file(p.c_str(), {true, &meta});
    if (!ctx) {
        throw Error(p + ": not a GGUF file (or unreadable)");
    }
}

TensorTable::~TensorTable() {
    gguf_free(ctx);
    ggml_free(meta);
}

size_t TensorTable::offset(const std::string & name) const {
    return gguf_get_data_offset(ctx) + gguf_get_tensor_offset(ctx, gguf_find_tensor(ctx, name.c_str()));
}

std::vector<uint8_t> read_bytes(std::fstream & f, const std::string & path, size_t offset, size_t n) {
    std::vector<uint8_t> b(n);
    f.seekg((std::streamoff) offset);
    f.read(reinterpret_cast<char *>(b.data()), (std::streamsize) n);
    if (!f) {
        throw Error(path + ": truncated (reading " + std::to_string(n) + " bytes at " + std::to_string(offset) + ")");
    }
    return b;
}

void to_float(ggml_type type, const uint8_t * src, float * dst, int64_t n) {
    if (type == GGML_TYPE_F32) {
        std::copy_n(reinterpret_cast<const float *>(src), n, dst);
    } else {
        ggml_get_type_traits(type)->to_float(src, dst, n);
    }
}

}  // namespace imx::engine
