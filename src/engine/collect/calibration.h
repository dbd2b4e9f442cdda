// Calibration data as chunks of tokens: the unit that collect evaluates, counts and checkpoints.
//
// Plain text (default): tokenized once with BOS, as upstream, and cut into chunks of exactly chunk_size
// tokens; the first token of each chunk becomes BOS where the vocabulary uses one; a tail shorter than a
// chunk is dropped. Chat (a .jsonl file of {"messages": [...]}, one conversation per line): each conversation
// is rendered with the model's chat template (or a built-in one by name) and is one chunk of its own length,
// cut at chunk_size; nothing is padded, so counts are real tokens.
#pragma once

#include "llama.h"

#include <cstdint>
#include <string>
#include <vector>

namespace imx::engine {

struct CalibrationOptions {
    std::string file;
    uint32_t    chunk_size = 512;
    uint32_t    first_chunk = 0;  // skip this many chunks (shards of one text)
    int         max_chunks = -1;
    bool        parse_special = false;
    bool        chat = false;         // default: a file ending in .jsonl
    std::string chat_template;        // empty: the model's own
};

using Chunk = std::vector<llama_token>;

std::vector<Chunk> calibration_chunks(const CalibrationOptions & o, const llama_model * model);

bool is_chat_file(const std::string & path);

}  // namespace imx::engine
