// A quantized GGUF written the way llama_model_quantize writes it — the same keys in the same order, the same
// tensors in the same order with the same types and offsets — but filled tensor by tensor by its caller, in any
// order: the block-by-block quantizer writes a block's tensors once it has encoded them, never the whole model in
// memory, and never runs libllama's whole-model pass.
//
// The header (the source's keys, general.quantization_version and general.file_type, the split keys removed,
// then quantize.imatrix.{file,dataset,entries_count,chunks_count} as llama-quantize sets them) is written when the
// file is opened, so that the file is a valid GGUF from the start (the Hessian encoder reads it back), and again
// with the final entry count at finish(); its size does not change. The file is <output>.tmp-<pid> (or a
// checkpoint's), renamed over the output by finish().
#pragma once

#include "engine/encode/quantize.h"
#include "engine/model/tensor_file.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace imx::engine {

struct QuantizedHeader {
    std::string file_type;      // llama-quantize's name (Q2_K): general.file_type
    std::string imatrix_file;   // quantize.imatrix.file
    std::string dataset;        // quantize.imatrix.dataset
    uint32_t    chunks = 0;     // quantize.imatrix.chunks_count
};

class QuantizedModelWriter {
public:
    // `path`: the file to fill (created, or with `reopen` an existing one a checkpoint holds).
    QuantizedModelWriter(const TensorTable & source, const std::vector<PlannedTensor> & plan,
                         const QuantizedHeader & header, std::string path, bool reopen = false);
    ~QuantizedModelWriter();
    QuantizedModelWriter(const QuantizedModelWriter &) = delete;
    QuantizedModelWriter & operator=(const QuantizedModelWriter &) = delete;

    ggml_type type_of(const std::string & name) const;  // in the output
    size_t bytes_of(const std::string & name) const;
    void write(const std::string & name, const std::vector<uint8_t> & bytes);
    // Part of a tensor: `bytes` from byte `offset` of its data (a tensor written slab by slab).
    void write_at(const std::string & name, size_t offset, const uint8_t * bytes, size_t n);
    std::vector<uint8_t> read(const std::string & name) const;
    const std::string & path() const { return path_; }
    void sync() const;
    // The header with the final entry count, then the file renamed to `output`.
    void finish(uint32_t imatrix_entries, const std::string & output);

private:
    void write_header(uint32_t imatrix_entries) const;
    size_t data_offset() const;

    std::string                   path_;
    int                           fd_ = -1;
    struct GgufFree { void operator()(gguf_context * c) const { gguf_free(c); } };
    std::unique_ptr<gguf_context, GgufFree> ctx_;
    QuantizedHeader               header_;
};

// The bytes llama_model_quantize writes for one tensor: its rows (n_per_row floats each) quantized to `type`
// matrix by matrix (rows_per_matrix rows each) with that matrix's imatrix weights (n_per_row floats a matrix,
// or null), by ggml's quantizer, on `threads` threads.
std::vector<uint8_t> quantize_rows(ggml_type type, const float * rows, int64_t n_per_row, int64_t n_rows,
                                   int64_t rows_per_matrix, const float * weights, int threads);

}  // namespace imx::engine
