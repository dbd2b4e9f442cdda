// Whole-file I/O that never leaves a partial file behind.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace imx {

std::vector<uint8_t> read_file(const std::string & path);

// Writes to a temporary file beside `path`, flushes it to disk, then renames it over `path`. Readers see the
// old file or the new one, never a mix; on any failure the temporary file is removed and Error is thrown.
void write_file_atomic(const std::string & path, std::span<const uint8_t> bytes);

}  // namespace imx
