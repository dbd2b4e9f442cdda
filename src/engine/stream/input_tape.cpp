#include "engine/stream/input_tape.h"

#include "core/error.h"

namespace imx::engine {

InputTape::InputTape(const std::string & path) : file_(path), f_(std::fopen(path.c_str(), "w+b")) {
    if (!f_) {
        throw Error(path + ": cannot create the scratch file for the recorded inputs");
    }
}

InputTape::~InputTape() {
    std::fclose(f_);
}

void InputTape::write(const TargetInputs & chunk) {
    chunk.save(f_, file_.path());
}

void InputTape::rewind() {
    if (std::fflush(f_) != 0) {
        throw Error(file_.path() + ": cannot write the recorded inputs (disk full?)");
    }
    std::rewind(f_);
}

void InputTape::read(TargetInputs & chunk) {
    chunk.load(f_, file_.path());
}

}  // namespace imx::engine
