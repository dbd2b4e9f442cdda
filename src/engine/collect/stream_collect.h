// imx collect, block by block: the loops swapped (for each block, every chunk) so that a model larger than memory
// is read once per run, a block at a time, instead of paged through once per chunk.
//
//   h_0[c] = the token embeddings of chunk c (token_embd's rows)
//   for block b = 0 … L−1:   write block b alone (block_model.h); for every chunk c: run it on h_b[c] with the
//                            activation collector attached, keep its output h_{b+1}[c] (hidden_states.h)
//
// The sums, counts and covariances are today's (the same graph, the same kernels, the same hidden states): the
// tests hold them to the whole-model run within 1e-6. Memory: one block's weights, one chunk's hidden states in
// and out, the accumulators. Disk: two hidden-state files of chunks × tokens × n_embd floats.
//
// Checkpoints (--save-every N, any N: the unit is a block): after block b, <output>.ckpt holds the statistics of
// blocks 0..b and <output>.ckpt.hidden-<b+1> the hidden states the next block reads (engine/stream/hidden_stream.h);
// --resume goes on from there and keeps checkpoints too. Without them, every file of the run is removed at its
// end, on an error and on Ctrl-C/SIGTERM.
#pragma once

#include "engine/collect/collect.h"

namespace imx::engine {

// Throws imx::Error (one line naming the file, block or chunk) for options this path does not take.
CollectResult collect_by_blocks(const CollectOptions & o, const std::function<void(const CollectProgress &)> & progress);

}  // namespace imx::engine
