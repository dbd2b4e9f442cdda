// Checkpoints of a running collection: the exact double-precision state, so a resumed run ends with the
// same bytes as an uninterrupted one. Our own format (little-endian), written atomically:
//   "IMXCKPT3" | u64 len | fingerprint[len] | u32 next_chunk | u32 n_datasets | n × (u64 len | bytes)
//   | u32 chunk_size | u32 n_tensors
//   | n_tensors × { u64 len | name | u64 n_counts | i64 counts[n_counts] | u64 n_sums | f64 sums[n_sums] }
//   | u32 n_cov | n_cov × { u64 n_readers | n_readers × (u64 len | name) | i64 n_cols | i64 block | i64 n_mat
//                          | u64 n | i64 counts[n] | u64 n | f64 values[n] }
//   | u32 n_all | n_all × { u64 len | name | i64 n_rows | i64 tokens | u64 n | f64 sums[n] }  (--all-experts)
// "IMXCKPT3" is written; "IMXCKPT2" (no all-experts part) and "IMXCKPT1" (nothing after the tensors) are read.
// The fingerprint describes the run (model, text, chunk size, chunk count, overrides); resuming with
// different settings is refused, naming what differs.
#pragma once

#include "core/imatrix.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace imx {

struct Checkpoint {
    std::string fingerprint;
    uint32_t    next_chunk = 0;  // chunks [0, next_chunk) are in `data`
    Imatrix     data;
};

void save_checkpoint(const Checkpoint & c, const std::string & path);
Checkpoint load_checkpoint(const std::string & path);
// The same format piece by piece (save/load use them; core/format/block_spill.h keeps blocks' statistics in one
// file): the sink receives the bytes in order, large arrays from where they lie; the source must fill exactly the
// bytes asked (and throw where it cannot) out of `size` in all. `path` names the source in errors.
using CheckpointSink = std::function<void(const uint8_t *, size_t)>;
using CheckpointSource = std::function<void(uint8_t *, size_t)>;
void write_checkpoint(const Checkpoint & c, const CheckpointSink & sink);
Checkpoint read_checkpoint(uint64_t size, const CheckpointSource & source, const std::string & path);

}  // namespace imx
