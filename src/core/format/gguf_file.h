// A small, strict reader and writer for the GGUF container, enough for imatrix files (F32 and F64 tensors).
//
// Layout (little-endian), as written by ggml's gguf.cpp, version 3:
//   magic "GGUF" | u32 version | i64 n_tensors | i64 n_kv
//   n_kv × { string key | u32 type | value }           value: scalar, string, or
//                                                         u32 elem_type | u64 n | n × elem (ARRAY)
//   n_tensors × { string name | u32 n_dims | n_dims × i64 ne | u32 ggml_type | u64 offset }
//   zero padding to `general.alignment` (u32 KV, default 32)
//   tensor data: each tensor at data_start + offset, each padded with zeros to the alignment
// string = u64 length | bytes (no terminator). n_dims counts dimensions up to the last one with ne > 1
// (at least 1), the way ggml_n_dims does; a reader pads the rest with 1.
//
// The reader checks every length against the bytes left, so a truncated or hostile file gives an Error,
// never a read past the buffer. Unknown keys of any type are kept; tensors of other types than F32 and F64 are
// listed without their data (no imatrix tensor has another type, and a model file must still get a clear error
// from the caller, who looks at general.type first).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace imx::gguf {

enum class Type : uint32_t {
    u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
    string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};

inline constexpr uint32_t kGgmlTypeF32 = 0;
inline constexpr uint32_t kGgmlTypeF64 = 28;
inline constexpr uint32_t kDefaultAlignment = 32;

struct Value {
    Type                     type = Type::u8;  // for arrays: Type::array, with elem_type set
    Type                     elem_type = Type::u8;
    std::vector<uint8_t>     raw;      // numeric scalar or numeric array elements, little-endian
    std::vector<std::string> strings;  // string scalar (one) or string array elements
};

struct KeyValue {
    std::string key;
    Value       value;
};

struct Tensor {
    std::string          name{};
    std::vector<int64_t> ne{};  // ne[0] is the contiguous dimension, as in ggml
    std::vector<float>   data{};    // F32 tensors
    std::vector<double>  data64{};  // F64 tensors; other types are listed, their data left unread
    uint32_t             type = kGgmlTypeF32;
    // Writing only: an F32 tensor whose values are these doubles, rounded to float as they are written, so
    // that a large tensor (a covariance: 1 GB per 8B layer) needs no float copy in memory.
    const std::vector<double> * rounded_from = nullptr;
    // Reading with parse's `in_place`: the tensor's data where it lies in the parsed bytes (data/data64 left
    // empty), valid as long as those bytes are.
    std::span<const uint8_t> in_place{};
    int64_t nelements() const;
};

struct File {
    uint32_t              version = 3;
    std::vector<KeyValue> kvs;      // in file order
    std::vector<Tensor>   tensors;  // in file order

    const Value * find(const std::string & key) const;
};

// Parses a whole GGUF file from memory. `source` names the file in error messages.
// Tensors whose name `in_place` accepts are not copied out (Tensor::in_place): a covariance file is ~1 GB per
// 8B layer, and its reader turns the floats into doubles anyway.
File parse(std::span<const uint8_t> bytes, const std::string & source,
           const std::function<bool(const std::string & name)> & in_place = {});

// Serialises exactly as ggml's gguf_write_to_file would for the same KVs and tensors.
std::vector<uint8_t> serialize(const File & file);
// The same bytes, handed to `sink` piece by piece (header, then each tensor's data in bounded pieces).
void serialize(const File & file, const std::function<void(std::span<const uint8_t>)> & sink);

// Builders for the values imatrix files use.
Value make_string(const std::string & s);
Value make_string_array(const std::vector<std::string> & v);
Value make_u32(uint32_t v);
Value make_bool(bool v);
Value make_u32_array(const std::vector<uint32_t> & v);

}  // namespace imx::gguf
