// Ctrl-C and SIGTERM: a long run must not leave its temporary output behind (tens of GB for a real model),
// and a collection should keep what it has done.
//
// After install_interrupt_handlers(), SIGINT/SIGTERM remove every live TemporaryFile, print one line, and end
// the process with 128 + the signal's number. Inside a DeferInterrupts scope the first signal only sets a
// flag (interrupted()) that the work checks at a safe point — collect writes its checkpoint there; a second
// signal ends the process at once.
#pragma once

#include "core/error.h"

#include <string>

namespace imx {

void install_interrupt_handlers();

// Unlinks every live TemporaryFile, writing "; removed PATH, ..." to stderr (async-signal-safe: for handlers
// that end the process, such as a signal's or ggml's abort).
void remove_temporary_files();

// The signal received inside a DeferInterrupts scope, 0 if none.
int interrupted();

// Removed (unlinked) by an interrupt while this object lives; the destructor only forgets it.
class TemporaryFile {
public:
    explicit TemporaryFile(std::string path);
    ~TemporaryFile();
    TemporaryFile(const TemporaryFile &) = delete;
    TemporaryFile & operator=(const TemporaryFile &) = delete;
    const std::string & path() const { return path_; }

private:
    std::string path_;
    int         slot_;
};

// A file this process works in and nobody else needs (a hidden-state file, a block's model): registered as a
// TemporaryFile while it exists, and removed when destroyed.
class ScratchFile {
public:
    explicit ScratchFile(std::string path);
    ~ScratchFile();
    ScratchFile(const ScratchFile &) = delete;
    ScratchFile & operator=(const ScratchFile &) = delete;
    const std::string & path() const { return reg_.path(); }
    // From now on the file is a result (a checkpoint's): not removed.
    void keep() { kept_ = true; }

private:
    TemporaryFile reg_;
    bool          kept_ = false;
};

// Thrown where deferred work stopped for a signal; the CLI prints it and exits with 128 + signal.
class Interrupted : public Error {
public:
    Interrupted(int signal, const std::string & message) : Error(message), signal_(signal) {}
    int signal() const { return signal_; }

private:
    int signal_;
};

class DeferInterrupts {
public:
    DeferInterrupts();
    ~DeferInterrupts();
    DeferInterrupts(const DeferInterrupts &) = delete;
    DeferInterrupts & operator=(const DeferInterrupts &) = delete;
};

}  // namespace imx
