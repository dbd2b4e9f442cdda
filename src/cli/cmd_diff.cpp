// imx diff A B [--tolerance X]: do two imatrix files agree? Counts exactly, sums within a relative tolerance.
// Exit code 0: they agree; 3: they differ (so scripts can tell a difference from an error, which is 2).
#include "commands.h"
#include "core/report/compare.h"
#include "core/format/imatrix_file.h"

#include <cstdio>
#include <cstdlib>

namespace imx::cli {

namespace {
struct Options {
    std::string a, b;
    double      tolerance = 1e-5;
};

void list(const char * what, const std::vector<std::string> & names) {
    for (const auto & n : names) {
        std::printf("%s: %s\n", what, n.c_str());
    }
}
}  // namespace

Run add_diff(CLI::App & app) {
    auto o = std::make_shared<Options>();
    app.add_option("a", o->a, "first imatrix file")->required();
    app.add_option("b", o->b, "second imatrix file (the reference for relative differences)")->required();
    app.add_option("--tolerance", o->tolerance, "largest relative difference of sums that still agrees")
        ->capture_default_str();
    return [o] {
        const Comparison c = compare(load_imatrix(o->a), load_imatrix(o->b));
        list("only in first", c.only_in_a);
        list("only in second", c.only_in_b);
        list("different shape", c.shape_mismatches);
        list("different token counts", c.count_mismatches);
        std::printf("worst relative difference of sums: %.3g%s%s\n", c.worst_relative,
                    c.worst_at.empty() ? "" : " at ", c.worst_at.c_str());
        if (c.covariances_compared > 0) {
            std::printf("worst relative difference of %zu covariances: %.3g%s%s\n", c.covariances_compared,
                        c.worst_covariance, c.worst_covariance_at.empty() ? "" : " at ",
                        c.worst_covariance_at.c_str());
        }
        const bool same = c.only_in_a.empty() && c.only_in_b.empty() && c.shape_mismatches.empty() &&
                          c.count_mismatches.empty() && c.worst_relative <= o->tolerance &&
                          c.worst_covariance <= o->tolerance;
        std::printf("%s\n", same ? "agree" : "differ");
        if (!same) {
            std::exit(3);
        }
    };
}

}  // namespace imx::cli
