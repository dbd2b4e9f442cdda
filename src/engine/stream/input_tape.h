// The float block's matmul inputs over every chunk, recorded while the block runs once (TargetInputs::save) and
// read back chunk by chunk in the same order where they are needed again — --sequential's second pass over a
// block takes X from here instead of running the float block a second time. In a scratch file: the matmul
// inputs of a chunk are several times its hidden states (about 48 KiB a token at a Qwen3-1.7B shape: 0.4 GB
// for 16 chunks), more than memory should hold for a long text.
#pragma once

#include "core/interrupt.h"
#include "engine/collect/target_inputs.h"

#include <cstdio>
#include <string>

namespace imx::engine {

class InputTape {
public:
    explicit InputTape(const std::string & path);  // removed when the tape goes, or on a signal
    ~InputTape();
    InputTape(const InputTape &) = delete;
    InputTape & operator=(const InputTape &) = delete;

    void write(const TargetInputs & chunk);
    void rewind();  // from writing to reading, at the first chunk
    void read(TargetInputs & chunk);

private:
    ScratchFile  file_;
    std::FILE *  f_ = nullptr;
};

}  // namespace imx::engine
