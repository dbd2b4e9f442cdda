#include "engine/encode/model_writer.h"

#include "core/error.h"
#include "core/format/atomic_file.h"
#include "core/math/parallel.h"

#include "ggml.h"
#include "gguf.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <unistd.h>

namespace imx::engine {

QuantizedModelWriter::QuantizedModelWriter(const TensorTable & source, const std::vector<PlannedTensor> & plan,
                                           const QuantizedHeader & header, std::string path, bool reopen)
    : path_(std::move(path)), ctx_(gguf_init_empty()), header_(header) {
    // as llama_model_quantize: the keys, the split keys removed, then its own keys in its order
    gguf_context * ctx = ctx_.get();
    gguf_set_kv(ctx, source.metadata());
    gguf_set_val_u32(ctx, "general.quantization_version", GGML_QNT_VERSION);
    gguf_set_val_u32(ctx, "general.file_type", (uint32_t) quant_file_type(header.file_type));
    for (const char * key : {"split.no", "split.count", "split.tensors.count"}) {
        gguf_remove_key(ctx, key);
    }
    gguf_set_val_str(ctx, "quantize.imatrix.file", header.imatrix_file.substr(0, 127).c_str());
    if (!header.dataset.empty()) {
        gguf_set_val_str(ctx, "quantize.imatrix.dataset", header.dataset.substr(0, 127).c_str());
    }
    gguf_set_val_u32(ctx, "quantize.imatrix.entries_count", 0);
    if (header.chunks > 0) {
        gguf_set_val_u32(ctx, "quantize.imatrix.chunks_count", header.chunks);
    }
    for (const PlannedTensor & p : plan) {
        const ggml_tensor * t = source.find(p.name);
        if (!t) {
            throw Error(source.path() + ": no tensor " + p.name + " (the quantization plan names it)");
        }
        gguf_add_tensor(ctx, t);
    }
    for (const PlannedTensor & p : plan) {
        if (!p.type.empty()) {
            gguf_set_tensor_type(ctx, p.name.c_str(), parse_ggml_type(p.type, "quantization plan"));
        }
    }
    fd_ = ::open(path_.c_str(), reopen ? O_RDWR : (O_RDWR | O_CREAT | O_TRUNC), 0644);
    if (fd_ < 0) {
        throw Error(path_ + ": cannot " + (reopen ? "open" : "create") + " (" + std::strerror(errno) + ")");
    }
    if (!reopen) {
        write_header(0);
    }
}

// (gguf_get_data_offset is set only for a context read from a file: here the header's size is the data's start)
size_t QuantizedModelWriter::data_offset() const { return gguf_get_meta_size(ctx_.get()); }

QuantizedModelWriter::~QuantizedModelWriter() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

ggml_type QuantizedModelWriter::type_of(const std::string & name) const {
    const int64_t i = gguf_find_tensor(ctx_.get(), name.c_str());
    if (i < 0) {
        throw Error(path_ + ": no tensor " + name);
    }
    return gguf_get_tensor_type(ctx_.get(), i);
}

size_t QuantizedModelWriter::bytes_of(const std::string & name) const {
    return gguf_get_tensor_size(ctx_.get(), gguf_find_tensor(ctx_.get(), name.c_str()));
}

void QuantizedModelWriter::write_header(uint32_t imatrix_entries) const {
    // a key set again moves to the end: both set again in llama-quantize's order
    gguf_set_val_u32(ctx_.get(), "quantize.imatrix.entries_count", imatrix_entries);
    if (header_.chunks > 0) {
        gguf_set_val_u32(ctx_.get(), "quantize.imatrix.chunks_count", header_.chunks);
    }
    std::vector<uint8_t> meta(gguf_get_meta_size(ctx_.get()));
    gguf_get_meta_data(ctx_.get(), meta.data());
    if (::pwrite(fd_, meta.data(), meta.size(), 0) != (ssize_t) meta.size()) {
        throw Error(path_ + ": cannot write (" + std::string(std::strerror(errno)) + ")");
    }
    // the file's full length: the last tensor padded to the alignment, as llama_model_quantize ends it
    const int64_t n = gguf_get_n_tensors(ctx_.get());
    if (n > 0) {
        const size_t align = gguf_get_alignment(ctx_.get());
        const size_t end = data_offset() + gguf_get_tensor_offset(ctx_.get(), n - 1) +
                           GGML_PAD(gguf_get_tensor_size(ctx_.get(), n - 1), align);
        if (::ftruncate(fd_, (off_t) end) != 0) {
            throw Error(path_ + ": cannot write (" + std::string(std::strerror(errno)) + ")");
        }
    }
}

void QuantizedModelWriter::write(const std::string & name, const std::vector<uint8_t> & bytes) {
    const int64_t i = gguf_find_tensor(ctx_.get(), name.c_str());
    if (i < 0 || bytes.size() != gguf_get_tensor_size(ctx_.get(), i)) {
        throw Error(path_ + ": tensor " + name + (i < 0 ? " is not in the plan" : " has another size in the plan"));
    }
    write_at(name, 0, bytes.data(), bytes.size());
}

void QuantizedModelWriter::write_at(const std::string & name, size_t offset, const uint8_t * bytes, size_t n) {
    const int64_t i = gguf_find_tensor(ctx_.get(), name.c_str());
    if (i < 0 || offset + n > gguf_get_tensor_size(ctx_.get(), i)) {
        throw Error(path_ + ": tensor " + name + (i < 0 ? " is not in the plan" : ": a write past its end"));
    }
    const off_t at = (off_t) (data_offset() + gguf_get_tensor_offset(ctx_.get(), i) + offset);
    if (!write_all_at(fd_, bytes, n, (uint64_t) at)) {
        throw Error(path_ + ": cannot write tensor " + name + " (" + std::strerror(errno) + ")");
    }
}

std::vector<uint8_t> QuantizedModelWriter::read(const std::string & name) const {
    const int64_t i = gguf_find_tensor(ctx_.get(), name.c_str());
    std::vector<uint8_t> bytes(gguf_get_tensor_size(ctx_.get(), i));
    const off_t at = (off_t) (data_offset() + gguf_get_tensor_offset(ctx_.get(), i));
    if (!read_all_at(fd_, bytes.data(), bytes.size(), (uint64_t) at)) {
        throw Error(path_ + ": cannot read tensor " + name);
    }
    return bytes;
}

void QuantizedModelWriter::sync() const {
    if (::fsync(fd_) != 0) {
        throw Error(path_ + ": cannot write (" + std::string(std::strerror(errno)) + ")");
    }
}

void QuantizedModelWriter::finish(uint32_t imatrix_entries, const std::string & output) {
    write_header(imatrix_entries);
    sync();
    ::close(fd_);
    fd_ = -1;
    std::error_code ec;
    std::filesystem::rename(path_, output, ec);
    if (ec) {
        throw Error(output + ": cannot write (" + ec.message() + ")");
    }
}

std::vector<uint8_t> quantize_rows(ggml_type type, const float * rows, int64_t n_per_row, int64_t n_rows,
                                   int64_t rows_per_matrix, const float * weights, int threads) {
    const size_t row_size = ggml_row_size(type, n_per_row);
    std::vector<uint8_t> out(row_size * (size_t) n_rows);
    ggml_quantize_init(type);
    // as llama-quantize: pieces of rows that never cross a matrix, each with its matrix's weights
    const int64_t piece = std::max<int64_t>(1, std::min<int64_t>(rows_per_matrix, 32));
    std::vector<std::pair<int64_t, int64_t>> pieces;
    for (int64_t r = 0; r < n_rows;) {
        const int64_t n = std::min(piece, rows_per_matrix - r % rows_per_matrix);
        pieces.emplace_back(r, std::min(n, n_rows - r));
        r += n;
    }
    parallel_for((int64_t) pieces.size(), threads, [&](int64_t i, int) {
        const auto [r, n] = pieces[(size_t) i];
        const float * w = weights ? weights + (r / rows_per_matrix) * n_per_row : nullptr;
        ggml_quantize_chunk(type, rows + r * n_per_row, out.data() + (size_t) r * row_size, 0, n, n_per_row, w);
    });
    return out;
}

}  // namespace imx::engine
