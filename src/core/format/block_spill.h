// Blocks' statistics (sums, counts and whole covariances, exact doubles) kept on disk between two uses in one
// run: the block-by-block type search measures a block's candidate errors as the collection finishes it, and
// encodes the output after the allocation — reading each block's covariances back here instead of collecting
// them again (a pass of every block over the text: ~290 s at the Qwen3-1.7B shape on 2 cores).
//
// One scratch file (core/interrupt.h: removed with the spill or on a signal), each block appended in the
// checkpoint format (core/format/checkpoint.h). Never at the price of the run: a block the disk cannot take
// (less free space than the block and 1 GiB, or a failed write), or a whole model's that would not fit by the
// first block's size (room_for), drops the spill — its file removed, why() says
// so — and the caller collects again.
#pragma once

#include "core/imatrix.h"
#include "core/interrupt.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace imx {

class BlockSpill {
public:
    explicit BlockSpill(std::string path);
    ~BlockSpill();
    BlockSpill(const BlockSpill &) = delete;
    BlockSpill & operator=(const BlockSpill &) = delete;

    // Appends block b's statistics; false once the spill is dropped (now or before).
    bool put(int block, const Imatrix & stats);
    // After the first blocks: whether `more` blocks of the mean size so far still fit (leaving 1 GiB), else the
    // spill is dropped now, before writes that could not all be kept (an 8B model's are 61 GiB).
    bool room_for(int more);
    // Whether blocks 0 … blocks-1 are all held.
    bool holds(int blocks) const;
    // Block b's statistics as put (throws imx::Error naming the file where they cannot be read back).
    Imatrix get(int block) const;
    uint64_t bytes() const { return end_; }
    const std::string & path() const { return path_; }
    const std::string & why() const { return why_; }  // why it was dropped; empty while it holds

private:
    void drop(const std::string & why);

    std::string                                     path_;
    std::unique_ptr<ScratchFile>                    file_;
    int                                             fd_ = -1;
    uint64_t                                        end_ = 0;
    std::map<int, std::pair<uint64_t, uint64_t>>    where_;  // block → offset, bytes
    std::string                                     why_;
};

}  // namespace imx
