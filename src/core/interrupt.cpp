#include "core/interrupt.h"

#include "core/error.h"

#include <atomic>
#include <csignal>
#include <cstring>
#include <unistd.h>

namespace imx {

namespace {

// The handler may only use async-signal-safe calls: fixed slots of plain characters, unlink, write, _exit.
constexpr int    kSlots = 64;  // a split model written with --keep-split registers each part
constexpr size_t kPathMax = 4096;
char              g_paths[kSlots][kPathMax];
std::atomic<bool> g_claimed[kSlots];  // taken by a TemporaryFile
std::atomic<bool> g_live[kSlots];     // its name is complete: the handler may use it
std::atomic<int>  g_defer{0};
std::atomic<int>  g_signal{0};

void say(const char * s) {
    const ssize_t ignored = ::write(STDERR_FILENO, s, std::strlen(s));
    (void) ignored;
}

void on_signal(int sig) {
    if (g_defer.load() > 0 && g_signal.load() == 0) {
        g_signal.store(sig);
        say(sig == SIGINT ? "\nimx: interrupted: finishing the current chunk (press Ctrl-C again to stop at once)\n"
                          : "\nimx: terminated: finishing the current chunk (signal again to stop at once)\n");
        return;
    }
    say(sig == SIGINT ? "\nimx: interrupted" : "\nimx: terminated");
    remove_temporary_files();
    say("\n");
    ::_exit(128 + sig);
}

}  // namespace

void remove_temporary_files() {
    bool any = false;
    for (int i = 0; i < kSlots; ++i) {
        if (g_live[i].load() && ::unlink(g_paths[i]) == 0) {
            say(any ? ", " : "; removed ");
            say(g_paths[i]);
            any = true;
        }
    }
}

void install_interrupt_handlers() {
    struct sigaction sa{};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

int interrupted() { return g_signal.load(); }

TemporaryFile::TemporaryFile(std::string path) : path_(std::move(path)), slot_(-1) {
    if (path_.size() >= kPathMax) {
        return;  // too long to remember; it is still removed on every ordinary failure
    }
    for (int i = 0; i < kSlots; ++i) {
        bool expected = false;
        if (g_claimed[i].compare_exchange_strong(expected, true)) {
            std::memcpy(g_paths[i], path_.c_str(), path_.size() + 1);
            g_live[i].store(true);
            slot_ = i;
            return;
        }
    }
}

TemporaryFile::~TemporaryFile() {
    if (slot_ >= 0) {
        g_live[slot_].store(false);
        g_claimed[slot_].store(false);
    }
}

ScratchFile::ScratchFile(std::string path) : reg_(std::move(path)) {}

ScratchFile::~ScratchFile() {
    if (!kept_) {
        ::unlink(reg_.path().c_str());
    }
}

DeferInterrupts::DeferInterrupts() { g_defer.fetch_add(1); }
DeferInterrupts::~DeferInterrupts() { g_defer.fetch_sub(1); }

}  // namespace imx
