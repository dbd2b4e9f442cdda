// Chat calibration: one conversation per chunk, rendered with a chat template, real token counts.
#include "core/format/imatrix_file.h"
#include "helpers.h"

#include <gtest/gtest.h>

#include <fstream>

using namespace imx;
using namespace imx::test;

namespace {

std::string write_conversations(const std::string & path, int n) {
    std::ofstream out(path);
    for (int i = 0; i < n; ++i) {
        out << R"({"messages":[{"role":"user","content":"What does the kernel do with page )" << i
            << R"(?"},{"role":"assistant","content":"It maps the page into the address space of the process and )"
            << "updates the table number " << i << R"(."}]})" << "\n";
    }
    return path;
}

}  // namespace

TEST(CollectChat, OneConversationPerChunkWithRealTokenCounts) {
    const std::string dir = work_dir("collect-chat");
    const std::string data = write_conversations(dir + "/chat.jsonl", 6);
    const std::string out = dir + "/chat.gguf";
    const RunResult r = run(imx_bin() + " collect -m " + shared("models/qwen3moe-tiny.gguf") + " -f " + data +
                            " --chat-template chatml -o " + out + " -t 2 --json");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const Imatrix im = load_imatrix(out);
    EXPECT_EQ(im.meta.chunk_count, 6u);
    const int64_t tokens = im.tensors.at("blk.0.attn_q.weight").counts[0];
    EXPECT_GT(tokens, 6 * 20) << "each rendered conversation has more than 20 tokens";
    EXPECT_LT(tokens, 6 * 100) << "and is not padded to the chunk size";
    int64_t routed = 0;
    for (int64_t c : im.tensors.at("blk.0.ffn_up_exps.weight").counts) {
        routed += c;
    }
    EXPECT_EQ(routed, 2 * tokens) << "top-2 routing: every real token reaches two experts";
}

TEST(CollectChat, BadLineIsNamed) {
    const std::string dir = work_dir("collect-chat");
    const std::string data = dir + "/bad.jsonl";
    std::ofstream(data) << R"({"messages":[{"role":"user","content":"hi"}]})" << "\n" << "{oops\n";
    const RunResult r = run(imx_bin() + " collect -m " + shared("models/qwen3moe-tiny.gguf") + " -f " + data +
                            " --chat-template chatml -o " + dir + "/bad.gguf -t 2");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find(data + ":2: not JSON"), std::string::npos) << r.output;
}
