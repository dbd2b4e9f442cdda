// Reading and writing importance matrices in the two file formats upstream llama.cpp uses.
//
// GGUF (default; upstream's tools/imatrix since #9400):
//   KVs, in this order: general.type = "imatrix" | imatrix.datasets: [string] | imatrix.chunk_count: u32 |
//                       imatrix.chunk_size: u32
//   per tensor, sorted by name: "<name>.in_sum2" F32 [n_cols, n_mat]  Σx² per column and matrix
//                               "<name>.counts"  F32 [1, n_mat]       tokens per matrix
//   Values are raw sums (not means) so that files merge exactly; counts are exact integers below 2^24.
//   imx extension (collect --covariance), after those and ignored by upstream: "<name>.in_cov" F32
//   [block, n_cols, n_mat] per shared input (core/covariance.h), and imatrix KV imx.in_cov.readers: [string],
//   the comma-separated weights that read each, in tensor order. collect --all-experts adds, per expert
//   tensor, "<name>.in_sum2_all" F32 (F64 in shards) [n_cols, 1 or n_expert] and "<name>.tokens_all" F64 [1] (AllExpertStats).
//
// Legacy imatrix.dat (upstream before #9400, still read and written by it), little-endian:
//   i32 n_entries
//   n_entries × { i32 len | name[len] | i32 ncall | i32 nval | f32 values[nval] }
//   [ i32 chunk_count | i32 len | dataset[len] ]        (optional trailer)
//   values = mean of x² per column × ncall, ncall = chunks seen; one count for the whole tensor, so per-expert
//   token counts are lost. Reading multiplies by the chunk size (default 512, as upstream) to get back to sums.
#pragma once

#include "core/imatrix.h"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace imx {

inline constexpr uint32_t kDefaultLegacyChunkSize = 512;

// Decodes either format, detected from the content (GGUF magic, else legacy). `source` names it in errors.
// Validates everything: finite, non-negative sums; integer, non-negative counts; matching shapes.
Imatrix decode_imatrix(std::span<const uint8_t> bytes, const std::string & source,
                       uint32_t legacy_chunk_size = kDefaultLegacyChunkSize);

std::vector<uint8_t> encode_gguf(const Imatrix & im);
// Tensors whose matrices all lack data are left out (the format cannot say "no data"); partial ones keep
// the upstream convention of mean 1 for matrices that saw no token.
std::vector<uint8_t> encode_legacy(const Imatrix & im, uint32_t fallback_chunk_size = kDefaultLegacyChunkSize);

// File helpers: load reads and decodes; save encodes by format and writes atomically (temp file + rename).
Imatrix load_imatrix(const std::string & path, uint32_t legacy_chunk_size = kDefaultLegacyChunkSize);
void save_imatrix(const Imatrix & im, const std::string & path, ImatrixFormat format);
// ".dat" means legacy, anything else GGUF.
ImatrixFormat format_from_path(const std::string & path);

}  // namespace imx
