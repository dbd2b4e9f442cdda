// The base's log-probabilities at 16 bits an entry (core/format/logprob_file.h): the KLD they give against the
// exact one, the file's round trip and size, and the cache's size limit.
#include "core/format/logprob_file.h"
#include "core/report/eval_stats.h"
#include "helpers.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <thread>

using namespace imx;
namespace fs = std::filesystem;

namespace {

// Logits shaped like a language model's at a 152k vocabulary: a Zipf-like spread of ~25 nats with noise, the
// entries in random order; the "quant" the same plus noise of size sigma.
struct Rows {
    size_t                 n_vocab;
    std::vector<float>     base, quant;
    std::vector<int32_t>   next;
};

Rows make_rows(size_t n_vocab, size_t n_rows, float sigma, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> noise(0.0f, 1.0f);
    Rows r{n_vocab, {}, {}, {}};
    std::vector<size_t> order(n_vocab);
    std::iota(order.begin(), order.end(), 0);
    for (size_t t = 0; t < n_rows; ++t) {
        std::shuffle(order.begin(), order.end(), rng);
        const float sharpness = 1.0f + 2.0f * (float) (t % 4);  // flat to peaked rows
        for (size_t v = 0; v < n_vocab; ++v) {
            const float l = -sharpness * std::log((float) (order[v] + 1)) + 1.5f * noise(rng);
            r.base.push_back(l);
            r.quant.push_back(l + sigma * noise(rng));
        }
        r.next.push_back((int32_t) (rng() % n_vocab));
    }
    return r;
}

double exact_kld(const float * base, const float * quant, size_t n) {
    std::vector<float> p(n), q(n);
    log_softmax(base, n, p.data());
    log_softmax(quant, n, q.data());
    double kld = 0;
    for (size_t v = 0; v < n; ++v) {
        kld += std::exp((double) p[v]) * ((double) p[v] - q[v]);
    }
    return kld;
}

}  // namespace

// Mean KLD over rows from the 16-bit rows against the exact one: within 1e-4 relative at the KLDs of low-bit
// quants (0.02 to 0.3 here), and the NLL kept exactly.
TEST(LogprobFile, SixteenBitsKeepMeanKldWithinOneInTenThousand) {
    for (const float sigma : {0.25f, 0.5f, 1.0f}) {
        const Rows r = make_rows(151936, 24, sigma, 7);
        double exact = 0, coded = 0;
        std::vector<uint16_t> codes(r.n_vocab);
        std::vector<float> decoded(r.n_vocab), scratch;
        TokenScores s;
        for (size_t t = 0; t < r.next.size(); ++t) {
            const float * base = r.base.data() + t * r.n_vocab;
            const float * quant = r.quant.data() + t * r.n_vocab;
            exact += exact_kld(base, quant, r.n_vocab);
            float top = 0;
            const double nll = encode_logprob_row(base, r.n_vocab, r.next[t], top, codes.data());
            std::vector<float> p(r.n_vocab);
            log_softmax(base, r.n_vocab, p.data());
            EXPECT_NEAR(nll, -p[r.next[t]], 1e-4 * std::fabs(p[r.next[t]]) + 1e-5);
            decode_logprob_row(top, codes.data(), r.n_vocab, decoded.data());
            score_token(decoded.data(), quant, r.n_vocab, r.next[t], s, scratch);
        }
        for (float k : s.kld) {
            coded += k;
        }
        exact /= (double) r.next.size();
        coded /= (double) r.next.size();
        EXPECT_LT(std::fabs(coded - exact) / exact, 1e-4) << "sigma " << sigma << ": exact " << exact << ", 16-bit " << coded;
    }
}

TEST(LogprobFile, RoundTripSizeAndStaleFiles) {
    const std::string dir = imx::test::fresh_dir("logprob-file");
    const Rows r = make_rows(1000, 5, 0.5f, 3);
    const std::string path = dir + "/a.logp";
    {
        LogprobWriter w(path, 42, r.n_vocab, 5);
        for (size_t t = 0; t < 5; ++t) {
            w.add(r.base.data() + t * r.n_vocab, r.next[t]);
        }
        w.finish();
    }
    EXPECT_EQ(fs::file_size(path), logprob_file_bytes(1000, 5));
    EXPECT_EQ(logprob_file_bytes(1000, 5) - logprob_file_bytes(1000, 4), 8u + 2 * 1000);  // llama-perplexity's 8 + 2·V
    LogprobReader rd(path, 42, r.n_vocab, 5);
    ASSERT_TRUE(rd.ok());
    std::vector<float> rows;
    rd.read(2, 2, rows);
    std::vector<uint16_t> codes(r.n_vocab);
    std::vector<float> direct(r.n_vocab);
    float top = 0;
    encode_logprob_row(r.base.data() + 3 * r.n_vocab, r.n_vocab, r.next[3], top, codes.data());
    decode_logprob_row(top, codes.data(), r.n_vocab, direct.data());
    EXPECT_TRUE(std::equal(direct.begin(), direct.end(), rows.begin() + (std::ptrdiff_t) r.n_vocab));
    EXPECT_FALSE(LogprobReader(path, 43, r.n_vocab, 5).ok());   // another key: another base or text
    EXPECT_FALSE(LogprobReader(path, 42, r.n_vocab, 6).ok());   // another length
    fs::resize_file(path, fs::file_size(path) - 1);
    EXPECT_FALSE(LogprobReader(path, 42, r.n_vocab, 5).ok());   // cut short
}

// The least recently used files go first; the one just written stays; other files are not touched.
TEST(LogprobFile, CacheTrimRemovesTheLeastRecentlyUsed) {
    const std::string dir = imx::test::fresh_dir("logprob-trim");
    auto make = [&](const std::string & name, size_t bytes, int age_s) {
        std::ofstream(dir + "/" + name) << std::string(bytes, 'x');
        fs::last_write_time(dir + "/" + name, fs::file_time_type::clock::now() - std::chrono::seconds(age_s));
    };
    make("old.logp", 1000, 300);
    make("types-1.json", 100, 200);
    make("mid.logp", 1000, 100);
    make("new.logp", 1000, 0);
    make("notes.txt", 5000, 1000);
    const auto removed = trim_cache(dir, 2050, dir + "/new.logp");
    ASSERT_EQ(removed.size(), 2u);
    EXPECT_FALSE(fs::exists(dir + "/old.logp"));
    EXPECT_FALSE(fs::exists(dir + "/types-1.json"));
    EXPECT_TRUE(fs::exists(dir + "/mid.logp") && fs::exists(dir + "/new.logp") && fs::exists(dir + "/notes.txt"));
    EXPECT_TRUE(trim_cache(dir, 0, dir + "/new.logp").size() == 1 && fs::exists(dir + "/new.logp"));
}
