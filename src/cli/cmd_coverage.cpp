// imx coverage -m MODEL -f A.txt -f B.txt ...: which calibration text reaches more of a MoE model's experts.
//
// Each text is run through the model (the same collection as imx collect, nothing written) for the same number
// of chunks — the smallest text's, unless --chunks says otherwise — so the texts compete on equal token budgets.
// Per text: experts reached per layer, the fewest tokens any expert got, and the normalised entropy of the
// token counts (1 = tokens spread evenly over the experts, 0 = all to one), averaged over layers.
#include "commands.h"
#include "core/report/coverage.h"
#include "core/error.h"
#include "engine/collect/calibration.h"
#include "engine/collect/collect.h"
#include "engine/model/llama_model.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

namespace imx::cli {

namespace {

struct Options {
    engine::CollectOptions   c;
    std::vector<std::string> files;
    bool                     json = false;
};

struct FileCoverage {
    std::string                        file;
    int64_t                            tokens = 0;
    std::map<int, std::vector<int64_t>> counts;  // layer → tokens per expert
    int64_t                            reached = 0, experts = 0, fewest = 0;
    double                             entropy = 0;
};

FileCoverage measure(const std::string & file, const Imatrix & im) {
    FileCoverage f;
    f.file = file;
    for (const auto & c : expert_coverage(im)) {
        const int blk = block_index(c.name);
        // one expert tensor per layer: all of a layer's expert tensors share the routing
        if (blk < 0 || f.counts.count(blk)) {
            continue;
        }
        f.counts[blk] = im.tensors.at(c.name).counts;
    }
    bool first = true;
    for (const auto & [blk, counts] : f.counts) {
        int64_t total = 0;
        for (int64_t n : counts) {
            total += n;
            f.reached += n > 0;
            f.fewest = first ? n : std::min(f.fewest, n);
            first = false;
        }
        f.experts += (int64_t) counts.size();
        double h = 0;
        for (int64_t n : counts) {
            if (n > 0) {
                const double p = (double) n / total;
                h -= p * std::log2(p);
            }
        }
        f.entropy += counts.size() > 1 ? h / std::log2((double) counts.size()) : 0;
    }
    if (!f.counts.empty()) {
        f.entropy /= f.counts.size();
    }
    for (const auto & [name, ts] : im.tensors) {
        if (ts.n_mat() == 1) {
            f.tokens = ts.counts[0];
            break;
        }
    }
    return f;
}

// More experts reached first; then evener spread; then the thinnest expert's tokens.
bool better(const FileCoverage & a, const FileCoverage & b) {
    if (a.reached != b.reached) {
        return a.reached > b.reached;
    }
    if (std::fabs(a.entropy - b.entropy) > 1e-9) {
        return a.entropy > b.entropy;
    }
    return a.fewest > b.fewest;
}

}  // namespace

Run add_coverage(CLI::App & app) {
    auto o = std::make_shared<Options>();
    auto & c = o->c;
    app.add_option("-m,--model", c.model, "GGUF model (MoE)")->required();
    app.add_option("-f,--file", o->files, "calibration texts to compare (repeat -f)")->required();
    app.add_option("-c,--ctx-size", c.chunk_size, "tokens per chunk")->capture_default_str();
    app.add_option("--chunks", c.max_chunks, "chunks per text (default: as many as the smallest text has)");
    app.add_option("--experts-used", c.experts_used, "run with N active experts per token");
    app.add_option("-t,--threads", c.threads, "CPU threads (default: all cores)");
    app.add_option("--n-gpu-layers", c.n_gpu_layers, "layers to offload to the GPU")->capture_default_str();
    app.add_flag("--parse-special", c.parse_special, "parse special tokens in the texts");
    app.add_flag("--json", o->json, "print JSON on stdout");
    return [o] {
        auto c = o->c;
        if (c.max_chunks < 0) {
            engine::init_llama(false);
            const engine::ModelPtr vocab = engine::load_vocab_only(c.model);
            for (const auto & f : o->files) {
                engine::CalibrationOptions co{f, c.chunk_size, 0, -1, c.parse_special, engine::is_chat_file(f), ""};
                const int n = (int) engine::calibration_chunks(co, vocab.get()).size();
                c.max_chunks = c.max_chunks < 0 ? n : std::min(c.max_chunks, n);
            }
        }
        std::vector<FileCoverage> results;
        for (const auto & f : o->files) {
            c.text_file = f;
            std::fprintf(stderr, "imx coverage: %s (%d chunks)\n", f.c_str(), c.max_chunks);
            const auto r = engine::collect(c, [](const engine::CollectProgress &) {});
            results.push_back(measure(f, r.imatrix));
            if (results.back().counts.empty()) {
                throw Error(c.model + ": no expert tensors; coverage compares MoE routing");
            }
        }
        std::vector<size_t> order(results.size());
        for (size_t i = 0; i < order.size(); ++i) {
            order[i] = i;
        }
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return better(results[a], results[b]); });

        if (o->json) {
            nlohmann::ordered_json j = nlohmann::json::array();
            for (size_t rank = 0; rank < order.size(); ++rank) {
                const auto & f = results[order[rank]];
                nlohmann::ordered_json per_layer;
                for (const auto & [blk, counts] : f.counts) {
                    per_layer[std::to_string(blk)] = counts;
                }
                j.push_back({{"rank", rank + 1}, {"file", f.file}, {"tokens", f.tokens}, {"experts_reached", f.reached},
                             {"experts", f.experts}, {"fewest_tokens", f.fewest}, {"entropy", f.entropy},
                             {"tokens_per_expert", per_layer}});
            }
            std::printf("%s\n", j.dump(2).c_str());
            return;
        }
        std::printf("%-4s %-40s %8s %10s %8s %8s  %s\n", "rank", "text", "tokens", "reached", "fewest", "entropy",
                    "experts reached per layer");
        for (size_t rank = 0; rank < order.size(); ++rank) {
            const auto & f = results[order[rank]];
            std::string layers;
            for (const auto & [blk, counts] : f.counts) {
                const auto n = std::count_if(counts.begin(), counts.end(), [](int64_t x) { return x > 0; });
                layers += (layers.empty() ? "" : " ") + std::to_string(blk) + ":" + std::to_string(n) + "/" +
                          std::to_string(counts.size());
            }
            std::printf("%-4zu %-40s %8lld %5lld/%-4lld %8lld %8.3f  %s\n", rank + 1, f.file.c_str(),
                        (long long) f.tokens, (long long) f.reached, (long long) f.experts, (long long) f.fewest,
                        f.entropy, layers.c_str());
        }
    };
}

}  // namespace imx::cli
