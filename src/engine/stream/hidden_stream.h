// One stream's hidden states on their way through the blocks: the file block b reads and the file it writes,
// which becomes block b+1's input. Two scratch files in turn (<stem>-0, <stem>-1), or — for a run that keeps
// checkpoints — one file a block (<stem>-<b>), each kept on disk once a checkpoint refers to it and removed when
// the next checkpoint no longer does. Scratch files go with the stream, or on a signal (core/interrupt.h).
#pragma once

#include "core/interrupt.h"
#include "engine/stream/hidden_states.h"

#include <memory>
#include <string>
#include <vector>

namespace imx::engine {

class HiddenStream {
public:
    HiddenStream(std::string stem, bool per_block, std::vector<size_t> tokens, size_t n_embd);

    HiddenStates & begin();        // a new input file for block 0 (to be filled with the token embeddings)
    HiddenStates & resume(int b);  // block b's input as a checkpoint left it (per_block); throws if it does not fit
    HiddenStates & input() { return *in_; }
    HiddenStates & output();       // a new file for the output of the block being run
    void keep_output();            // the output on disk and kept, for a checkpoint about to refer to it
    void advance();                // the output becomes the next block's input (per_block: the input's file goes)
    void finish();                 // after the last block: the kept input removed too

private:
    std::string path(int b) const;
    HiddenStates & open_new(int b, std::unique_ptr<ScratchFile> & file, std::unique_ptr<HiddenStates> & states);

    std::string                   stem_;
    bool                          per_block_;
    std::vector<size_t>           tokens_;
    size_t                        n_embd_;
    int                           block_ = 0;  // whose input `in_` is
    std::unique_ptr<ScratchFile>  in_file_, out_file_;
    std::unique_ptr<HiddenStates> in_, out_;
};

}  // namespace imx::engine
