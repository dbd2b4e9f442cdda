// Chat calibration data: a JSONL file, one conversation per line, {"messages":[{"role":..,"content":..},..]}.
#pragma once

#include <string>
#include <vector>

namespace imx {

struct ChatMessage {
    std::string role;
    std::string content;
};
using ChatSample = std::vector<ChatMessage>;

// Parses every non-empty line; errors name the file and line. `source` is the file name for messages.
std::vector<ChatSample> parse_chat_jsonl(const std::string & text, const std::string & source);

}  // namespace imx
