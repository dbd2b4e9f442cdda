#include "engine/encode/quantize.h"

#include "engine/model/llama_model.h"
#include "engine/model/tensor_file.h"
#include "core/format/atomic_file.h"
#include "core/error.h"
#include "core/interrupt.h"

#include "ggml.h"
#include "gguf.h"
#include "llama.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <regex>
#include <unistd.h>

namespace imx::engine {

namespace {

struct NamedType {
    const char * name;
    llama_ftype  ftype;
};

// llama-quantize's names for the file types (aliases included), so that users type what they know.
const NamedType kTypes[] = {
    {"Q1_0", LLAMA_FTYPE_MOSTLY_Q1_0},       {"Q2_0", LLAMA_FTYPE_MOSTLY_Q2_0},
    {"Q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},       {"Q4_1", LLAMA_FTYPE_MOSTLY_Q4_1},
    {"MXFP4_MOE", LLAMA_FTYPE_MOSTLY_MXFP4_MOE},
    {"Q5_0", LLAMA_FTYPE_MOSTLY_Q5_0},       {"Q5_1", LLAMA_FTYPE_MOSTLY_Q5_1},
    {"IQ2_XXS", LLAMA_FTYPE_MOSTLY_IQ2_XXS}, {"IQ2_XS", LLAMA_FTYPE_MOSTLY_IQ2_XS},
    {"IQ2_S", LLAMA_FTYPE_MOSTLY_IQ2_S},     {"IQ2_M", LLAMA_FTYPE_MOSTLY_IQ2_M},
    {"IQ1_S", LLAMA_FTYPE_MOSTLY_IQ1_S},     {"IQ1_M", LLAMA_FTYPE_MOSTLY_IQ1_M},
    {"TQ1_0", LLAMA_FTYPE_MOSTLY_TQ1_0},     {"TQ2_0", LLAMA_FTYPE_MOSTLY_TQ2_0},
    {"Q2_K", LLAMA_FTYPE_MOSTLY_Q2_K},       {"Q2_K_S", LLAMA_FTYPE_MOSTLY_Q2_K_S},
    {"IQ3_XXS", LLAMA_FTYPE_MOSTLY_IQ3_XXS}, {"IQ3_S", LLAMA_FTYPE_MOSTLY_IQ3_S},
    {"IQ3_M", LLAMA_FTYPE_MOSTLY_IQ3_M},     {"Q3_K", LLAMA_FTYPE_MOSTLY_Q3_K_M},
    {"IQ3_XS", LLAMA_FTYPE_MOSTLY_IQ3_XS},   {"Q3_K_S", LLAMA_FTYPE_MOSTLY_Q3_K_S},
    {"Q3_K_M", LLAMA_FTYPE_MOSTLY_Q3_K_M},   {"Q3_K_L", LLAMA_FTYPE_MOSTLY_Q3_K_L},
    {"IQ4_NL", LLAMA_FTYPE_MOSTLY_IQ4_NL},   {"IQ4_XS", LLAMA_FTYPE_MOSTLY_IQ4_XS},
    {"Q4_K", LLAMA_FTYPE_MOSTLY_Q4_K_M},     {"Q4_K_S", LLAMA_FTYPE_MOSTLY_Q4_K_S},
    {"Q4_K_M", LLAMA_FTYPE_MOSTLY_Q4_K_M},   {"Q5_K", LLAMA_FTYPE_MOSTLY_Q5_K_M},
    {"Q5_K_S", LLAMA_FTYPE_MOSTLY_Q5_K_S},   {"Q5_K_M", LLAMA_FTYPE_MOSTLY_Q5_K_M},
    {"Q6_K", LLAMA_FTYPE_MOSTLY_Q6_K},       {"Q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},
    {"F16", LLAMA_FTYPE_MOSTLY_F16},         {"BF16", LLAMA_FTYPE_MOSTLY_BF16},
    {"F32", LLAMA_FTYPE_ALL_F32},
};

bool iequals(const std::string & a, const char * b) {
    return a.size() == std::strlen(b) &&
           std::equal(a.begin(), a.end(), b, [](char x, char y) { return std::toupper(x) == std::toupper(y); });
}

llama_ftype parse_ftype(const std::string & name) {
    for (const NamedType & t : kTypes) {
        if (iequals(name, t.name)) {
            return t.ftype;
        }
    }
    std::string known;
    for (const NamedType & t : kTypes) {
        known += std::string(known.empty() ? "" : " ") + t.name;
    }
    throw Error("unknown quantization type '" + name + "' (known: " + known + ")");
}

llama_model_kv_override kv_string(const char * key, const std::string & value) {
    llama_model_kv_override kv{};
    kv.tag = LLAMA_KV_OVERRIDE_TYPE_STR;
    std::snprintf(kv.key, sizeof kv.key, "%s", key);
    std::snprintf(kv.val_str, sizeof kv.val_str, "%s", value.c_str());  // llama-quantize keeps 127 bytes too
    return kv;
}

llama_model_kv_override kv_int(const char * key, int64_t value) {
    llama_model_kv_override kv{};
    kv.tag = LLAMA_KV_OVERRIDE_TYPE_INT;
    std::snprintf(kv.key, sizeof kv.key, "%s", key);
    kv.val_i64 = value;
    return kv;
}

// "... Missing importance matrix for tensor blk.2.ffn_down_exps.weight in ..." → the tensor name
std::string tensor_named_in(const std::string & log) {
    static const std::regex re(R"((?:for tensor|offending tensor:) (\S+))");
    std::smatch m;
    return std::regex_search(log, m, re) ? m[1].str() : "";
}

// The last "failed to quantize: ..." reason of the log, without llama.cpp's banners.
std::string failure_reason(const std::string & log) {
    const std::string marker = "failed to quantize: ";
    const size_t at = log.rfind(marker);
    if (at == std::string::npos) {
        return "llama_model_quantize failed";
    }
    std::string r = log.substr(at + marker.size());
    r.erase(std::find(r.begin(), r.end(), '\n'), r.end());
    return r;
}

}  // namespace

ggml_type parse_ggml_type(const std::string & name, const std::string & what) {
    for (int i = 0; i < GGML_TYPE_COUNT; ++i) {
        const char * n = ggml_type_name((ggml_type) i);
        if (n && iequals(name, n)) {
            return (ggml_type) i;
        }
    }
    throw Error(what + ": unknown ggml type '" + name + "'");
}

std::vector<std::string> quant_type_names() {
    std::vector<std::string> names;
    for (const NamedType & t : kTypes) {
        names.push_back(t.name);
    }
    return names;
}

ModelShapes model_tensor_shapes(const std::string & path) {
    const TensorTable table(path);
    ModelShapes shapes;
    for (const std::string & name : table.names()) {
        const ggml_tensor * t = table.find(name);
        shapes[name] = {t->ne[0], t->ne[1], t->ne[2]};
    }
    return shapes;
}

namespace {

// llama_model_quantize's parameters and the arrays they point into (so not copyable).
struct QuantizeCall {
    llama_model_quantize_params           p = llama_model_quantize_default_params();
    std::vector<llama_model_imatrix_data> imatrix;
    std::vector<llama_model_kv_override>  kvs;
    std::vector<std::string>              patterns;
    std::vector<llama_model_tensor_override> tensor_types;

    explicit QuantizeCall(const QuantizeOptions & o);
    QuantizeCall(const QuantizeCall &) = delete;
    QuantizeCall & operator=(const QuantizeCall &) = delete;
};

QuantizeCall::QuantizeCall(const QuantizeOptions & o) {
    p.ftype = parse_ftype(o.type);
    p.nthread = o.threads;
    p.allow_requantize = o.allow_requantize;
    p.pure = o.pure;
    p.keep_split = o.keep_split;
    if (!o.output_tensor_type.empty()) {
        p.output_tensor_type = parse_ggml_type(o.output_tensor_type, "--output-tensor-type");
    }
    if (!o.token_embedding_type.empty()) {
        p.token_embedding_type = parse_ggml_type(o.token_embedding_type, "--token-embedding-type");
    }
    if (o.weights) {
        for (const auto & [name, w] : o.weights->tensors) {
            imatrix.push_back({name.c_str(), w.data(), w.size()});
        }
        imatrix.push_back({nullptr, nullptr, 0});
        p.imatrix = imatrix.data();
        // the same metadata llama-quantize writes, in its order
        kvs.push_back(kv_string("quantize.imatrix.file", o.imatrix_file));
        if (!o.imatrix_datasets.empty()) {
            kvs.push_back(kv_string("quantize.imatrix.dataset", o.imatrix_datasets[0]));
        }
        kvs.push_back(kv_int("quantize.imatrix.entries_count", (int64_t) o.weights->tensors.size()));
        if (o.imatrix_chunks > 0) {
            kvs.push_back(kv_int("quantize.imatrix.chunks_count", o.imatrix_chunks));
        }
        kvs.push_back(llama_model_kv_override{});  // terminator: empty key
        p.kv_overrides = kvs.data();
    }
    for (const std::string & spec : o.tensor_types) {
        const size_t eq = spec.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
            throw Error("--tensor-type '" + spec + "': expected REGEX=TYPE");
        }
        std::string pattern = spec.substr(0, eq);
        std::transform(pattern.begin(), pattern.end(), pattern.begin(), ::tolower);  // as llama-quantize
        try {
            std::regex check(pattern);
        } catch (const std::regex_error & e) {
            throw Error("--tensor-type '" + spec + "': bad regular expression (" + e.what() + ")");
        }
        patterns.push_back(pattern);
        tensor_types.push_back({nullptr, parse_ggml_type(spec.substr(eq + 1), "--tensor-type '" + spec + "'")});
    }
    if (!tensor_types.empty()) {
        for (size_t i = 0; i < patterns.size(); ++i) {
            tensor_types[i].pattern = patterns[i].c_str();
        }
        tensor_types.push_back({nullptr, GGML_TYPE_COUNT});
        p.tt_overrides = tensor_types.data();
    }
}

}  // namespace

std::vector<PlannedTensor> plan_quantization(const QuantizeOptions & o) {
    if (!std::filesystem::exists(o.model)) {
        throw Error(o.model + ": no such file");
    }
    QuantizeCall call(o);
    call.p.dry_run = true;
    // llama.cpp's dry run logs each tensor as "[  3/ 29] NAME - [shape], type = f16, " and then, for a tensor
    // it would quantize, "size = ... MiB -> ... MiB (q4_K)" (the pinned commit's format)
    std::vector<PlannedTensor> plan;
    bool open = false;  // the last tensor's line still waits for its type
    uint32_t rc = 0;
    std::string log;
    {
        LogCapture capture([&](const std::string & line) {
            char name[256];
            int i = 0, n = 0;
            if (std::sscanf(line.c_str(), "[%d/%d] %255s", &i, &n, name) == 3) {
                plan.push_back({name, ""});
                open = true;
            }
            const size_t arrow = line.find("->"), paren = line.rfind('('), close = line.rfind(')');
            if (open && arrow != std::string::npos && paren != std::string::npos && close > paren) {
                plan.back().type = line.substr(paren + 1, close - paren - 1);
                open = false;
            } else if (open && line.find("size =") != std::string::npos) {
                open = false;  // kept as it is
            }
        });
        rc = llama_model_quantize(o.model.c_str(), "", &call.p);
        log = capture.errors();
    }
    if (rc != 0) {
        throw Error(o.model + ": " + failure_reason(log));
    }
    return plan;
}

std::map<std::string, std::string> planned_types(const QuantizeOptions & o) {
    std::map<std::string, std::string> types;
    for (const PlannedTensor & t : plan_quantization(o)) {
        if (!t.type.empty()) {
            types[t.name] = t.type;
        }
    }
    return types;
}

int quant_file_type(const std::string & type) { return (int) parse_ftype(type); }

namespace {

// llama-quantize --keep-split drops ".gguf" from the output's name and adds each part's suffix to the rest.
std::string split_prefix(const std::string & output) {
    const std::string suffix = ".gguf";
    return output.size() > suffix.size() && output.compare(output.size() - suffix.size(), suffix.size(), suffix) == 0
               ? output.substr(0, output.size() - suffix.size())
               : output;
}

std::vector<std::string> split_paths(const std::string & prefix, size_t parts) {
    std::vector<std::string> paths;
    char buf[4096];
    for (size_t i = 0; i < parts; ++i) {
        llama_split_path(buf, sizeof buf, prefix.c_str(), (int) i, (int) parts);
        paths.push_back(buf);
    }
    return paths;
}

}  // namespace

std::vector<std::string> quantized_paths(const QuantizeOptions & o) {
    if (!o.keep_split) {
        return {o.output};
    }
    return split_paths(split_prefix(o.output), model_parts(o.model).size());
}

void quantize_model(const QuantizeOptions & o) {
    namespace fs = std::filesystem;
    if (!fs::exists(o.model)) {
        throw Error(o.model + ": no such file");
    }
    for (const std::string & out : quantized_paths(o)) {
        for (const std::string & in : model_parts(o.model)) {
            if (fs::exists(out) && fs::equivalent(in, out)) {
                throw Error(out + ": the output would overwrite the input model");
            }
        }
    }
    model_parts(o.model);  // a missing or misnamed part: one line naming it, before llama.cpp's own failure
    QuantizeCall call(o);
    llama_model_quantize_params & p = call.p;

    // Written beside the output and renamed over it only when complete: no partial model is ever left, also
    // when the run is interrupted (the temporary files are registered for removal). With keep_split the parts are
    // written as <prefix>.tmp-<pid>-0000i-of-0000N.gguf and renamed one after the other at the end.
    const std::vector<std::string> finals = quantized_paths(o);
    const std::string tmp_prefix = temporary_path(o.keep_split ? split_prefix(o.output) : o.output);
    const std::vector<std::string> tmps = o.keep_split ? split_paths(tmp_prefix, finals.size())
                                                       : std::vector<std::string>{tmp_prefix};
    std::vector<std::unique_ptr<TemporaryFile>> tmp_files;
    for (const std::string & t : tmps) {
        tmp_files.push_back(std::make_unique<TemporaryFile>(t));
    }
    const std::string & tmp = tmps[0];
    auto remove_all = [&] {
        std::error_code ec;
        for (const std::string & t : tmps) {
            fs::remove(t, ec);
        }
    };
    uint32_t rc = 0;
    std::string log;
    {
        LogCapture capture([&](const std::string & line) {
            int done = 0, total = 0;  // llama.cpp starts each tensor's line with "[   7/  93] "
            if (o.progress && std::sscanf(line.c_str(), "[%d/%d]", &done, &total) == 2) {
                o.progress(done, total);
            }
        });
        rc = llama_model_quantize(o.model.c_str(), tmp_prefix.c_str(), &p);
        log = capture.errors();
    }
    if (rc != 0) {
        const std::string reason = failure_reason(log);
        // llama.cpp's output stream throws "basic_ios::clear: iostream error" when a write fails: that is the
        // output's fault (a full disk), not the model's. Ask the file system while the temporary file is there.
        const bool write_failed = reason.find("iostream") != std::string::npos ||
                                  reason.find("basic_ios") != std::string::npos;
        const std::string cause = write_failed ? write_failure_reason(tmp, "write error") : "";
        remove_all();
        if (write_failed) {
            throw Error(o.output + ": cannot write (" + cause + ")");
        }
        const std::string tensor = tensor_named_in(log);
        if (log.find("requires an imatrix") != std::string::npos ||
            log.find("Missing importance matrix") != std::string::npos) {
            throw Error(o.model + ": " + o.type + " needs an importance matrix for tensor " + tensor +
                        (o.weights ? ", and " + o.imatrix_file + " has no data for it"
                                   : "; give one with --imatrix"));
        }
        throw Error(o.model + ": " + reason);
    }
    if (o.finish) {
        try {
            o.finish(tmp);
        } catch (...) {
            remove_all();
            throw;
        }
    }
    for (size_t i = 0; i < tmps.size(); ++i) {
        std::error_code ec;
        fs::rename(tmps[i], finals[i], ec);
        if (ec) {
            remove_all();
            throw Error(finals[i] + ": cannot write (" + ec.message() + ")");
        }
    }
}

}  // namespace imx::engine
