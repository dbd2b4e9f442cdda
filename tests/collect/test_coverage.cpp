// imx coverage: a varied calibration text reaches more experts than one paragraph repeated.
#include "core/format/atomic_file.h"
#include "core/report/coverage.h"
#include "helpers.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

using namespace imx::test;

TEST(Coverage, VariedTextRanksAboveANarrowOne) {
    // the narrow text: the calibration text's first paragraph, repeated
    const auto calib = bytes_of(shared("data/calibration.txt"));
    const std::string all(calib.begin(), calib.end());
    const std::string paragraph = all.substr(0, all.find("\n\n"));
    ASSERT_GT(paragraph.size(), 100u);
    const std::string narrow = work_dir("coverage") + "/narrow.txt";
    {
        std::ofstream out(narrow);
        for (int i = 0; i < 400; ++i) {
            out << paragraph << "\n\n";
        }
    }
    const RunResult r = run("(" + imx_bin() + " coverage -m " + shared("models/qwen3moe-tiny.gguf") + " -f " + narrow +
                            " -f " + shared("data/calibration.txt") + " --chunks 12 -t 2 --json 2>/dev/null)");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output);
    ASSERT_EQ(j.size(), 2u);
    EXPECT_NE(j[0]["file"].get<std::string>().find("calibration.txt"), std::string::npos) << j.dump(2);
    EXPECT_GT(j[0]["experts_reached"].get<int>(), j[1]["experts_reached"].get<int>()) << j.dump(2);
    EXPECT_EQ(j[0]["tokens"], j[1]["tokens"]) << "equal token budgets";
    EXPECT_EQ(j[0]["tokens"].get<int>(), 12 * 512);
}

// "0" in a never-routed column read as "none" where it meant expert 0: the count and the ids stand apart.
TEST(Coverage, NeverRoutedShowsCountAndIds) {
    EXPECT_EQ(imx::never_routed_label({}), "-");
    EXPECT_EQ(imx::never_routed_label({0}), "1 (#0)");
    EXPECT_EQ(imx::never_routed_label({3, 7}), "2 (#3, #7)");
}
