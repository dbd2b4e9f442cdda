#include "core/format/chat_samples.h"

#include "core/error.h"

#include <nlohmann/json.hpp>

#include <sstream>

namespace imx {

std::vector<ChatSample> parse_chat_jsonl(const std::string & text, const std::string & source) {
    std::vector<ChatSample> samples;
    std::istringstream in(text);
    std::string line;
    for (int line_no = 1; std::getline(in, line); ++line_no) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) {
            continue;
        }
        const std::string where = source + ":" + std::to_string(line_no);
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception & e) {
            throw Error(where + ": not JSON (" + e.what() + ")");
        }
        if (!j.is_object() || !j.contains("messages") || !j["messages"].is_array() || j["messages"].empty()) {
            throw Error(where + ": expected {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}");
        }
        ChatSample s;
        for (const auto & m : j["messages"]) {
            if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
                !m["content"].is_string()) {
                throw Error(where + ": every message needs string \"role\" and \"content\"");
            }
            s.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
        }
        samples.push_back(std::move(s));
    }
    if (samples.empty()) {
        throw Error(source + ": no conversations");
    }
    return samples;
}

}  // namespace imx
