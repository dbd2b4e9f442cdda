// imx generate: text sampled from the model itself, as calibration (the data-free idea of LLM-QAT, Liu et al.
// 2023): sequences that start from the model's BOS alone, sampled token by token with a fixed seed, so that the
// statistics see what the model itself makes likely rather than one corpus's domain. An end-of-text sampled on
// the way is a document boundary that the sequence reads and goes on from, as in pretraining's packed
// sequences. The result is plain text — imx collect and imx quantize -f read it like any calibration file, and
// a mix with another text is `cat`.
//
// Sequences are decoded in parallel (one llama_batch row per sequence and step, each sequence with its own KV
// cells); sequence s samples with its own chain seeded `seed + s`. The same command writes the same text; another
// --parallel can change it (batched float arithmetic differs in the last bits, and a sample follows the bits).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace imx::engine {

struct SelfSampleOptions {
    std::string model;
    std::string output;
    int         sequences = 64;
    int         tokens = 512;       // per sequence, BOS not counted; end-of-text starts a new document in it
    float       temperature = 1.0f;
    float       top_p = 0.95f;      // 1: the whole distribution
    uint32_t    seed = 1;
    int         parallel = 16;      // sequences decoded together
    int         threads = 0;        // 0: all cores
    int         n_gpu_layers = 99;
};

struct SelfSampleResult {
    int      sequences = 0;
    uint64_t tokens = 0;         // sampled, over all sequences
    int      documents = 0;      // end-of-text sampled within a sequence starts the next document
    uint64_t bytes = 0;          // of the text written
};

// Writes the documents to o.output (atomically), separated by blank lines. `progress(done, total)` after each
// step over the sequences in flight, in tokens. Throws imx::Error naming the model or the output.
SelfSampleResult write_self_samples(const SelfSampleOptions & o, const std::function<void(uint64_t, uint64_t)> & progress);

}  // namespace imx::engine
