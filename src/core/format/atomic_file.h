// Whole-file I/O that never leaves a partial file behind, and the checks an output gets before hours of work.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace imx {

class TemporaryFile;

std::vector<uint8_t> read_file(const std::string & path);

// Writes to a temporary file beside `path`, flushes it to disk, then renames it over `path`. Readers see the
// old file or the new one, never a mix; on any failure the temporary file is removed and Error is thrown.
// While it exists, the temporary file is removed by an interrupt (core/interrupt.h).
void write_file_atomic(const std::string & path, std::span<const uint8_t> bytes);
// The same, written piece by piece (files too large to build in memory first): write() each piece, then
// commit(). Destroyed without commit() (an exception on the way), the temporary file is removed.
class AtomicFile {
public:
    explicit AtomicFile(std::string path);
    ~AtomicFile();
    AtomicFile(const AtomicFile &) = delete;
    AtomicFile & operator=(const AtomicFile &) = delete;
    void write(std::span<const uint8_t> bytes);
    void commit();

private:
    std::string                    path_;
    std::unique_ptr<TemporaryFile> tmp_;
    int                            fd_ = -1;
};
// The same for text (reports, JSON, recipes).
void write_text_atomic(const std::string & path, std::string_view text);

// "<path>.tmp-<pid>": the one name every imx output is written under before it is renamed into place.
std::string temporary_path(const std::string & path);

// Run before the work that produces `path`: throws Error naming the file unless a file can be created in its
// folder (the folder exists, is writable, `path` is not a folder). Removes `<path>.tmp-<pid>` files left by
// imx processes that no longer run (a kill -9, a power cut) — and the other files of such a run under that name
// (a split model's parts `<path>.tmp-<pid>-0000i-of-0000N.gguf`, scratch files `<path>.tmp-<pid>.block.gguf`)
// — and returns a line for each one removed.
std::vector<std::string> prepare_output(const std::string & path);

// All n bytes at offset `at` of an open file, however many calls it takes (EINTR retried); false with errno set
// (0 where the file ended or nothing was written) otherwise.
bool write_all_at(int fd, const void * bytes, size_t n, uint64_t at);
bool read_all_at(int fd, void * bytes, size_t n, uint64_t at);

// Bytes free to this process in the folder `dir`; UINT64_MAX (no limit known) where the system cannot say.
uint64_t free_bytes(const std::string & dir);

// Why writing `path` failed, for an error whose own text does not say (an iostream's "iostream error"):
// "No space left on device" when its file system is full, else the given fallback.
std::string write_failure_reason(const std::string & path, const std::string & fallback);

}  // namespace imx
