#include "engine/model/tensor_file.h"

#include "core/error.h"

#include "llama.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

namespace imx::engine {

namespace {

// split.count of a GGUF's keys, 0 where it has none (an ordinary file; gguf-split --merge writes 0 too).
int split_count(const gguf_context * ctx) {
    const int64_t k = gguf_find_key(ctx, "split.count");
    return k < 0 ? 0 : (int) gguf_get_val_u16(ctx, k);
}

int split_no(const gguf_context * ctx) {
    const int64_t k = gguf_find_key(ctx, "split.no");
    return k < 0 ? 0 : (int) gguf_get_val_u16(ctx, k);
}

std::vector<std::string> parts_of(const std::string & path, const gguf_context * first) {
    const int count = split_count(first);
    if (count <= 1) {
        return {path};
    }
    const int no = split_no(first);
    char buf[4096];
    const bool named = llama_split_prefix(buf, sizeof buf, path.c_str(), no, count) > 0;
    if (no != 0) {
        char first_part[4096];
        const bool known = named && llama_split_path(first_part, sizeof first_part, buf, 0, count) > 0;
        throw Error(path + ": part " + std::to_string(no + 1) + " of " + std::to_string(count) +
                    " of a split model; give its first part" + (known ? std::string(", ") + first_part : ""));
    }
    if (!named) {
        char suffix[32];
        std::snprintf(suffix, sizeof suffix, "-00001-of-%05d.gguf", count);
        throw Error(path + ": the first part of a split model of " + std::to_string(count) +
                    " parts, but its name does not end in " + suffix + " (llama.cpp finds the other parts by that name)");
    }
    const std::string prefix = buf;
    std::vector<std::string> parts;
    for (int i = 0; i < count; ++i) {
        llama_split_path(buf, sizeof buf, prefix.c_str(), i, count);
        parts.push_back(buf);
        if (!std::filesystem::exists(parts.back())) {
            throw Error(parts.back() + ": missing (part " + std::to_string(i + 1) + " of " + std::to_string(count) +
                        " of the split model " + path + ")");
        }
    }
    return parts;
}

}  // namespace

TensorTable::TensorTable(const std::string & path) {
    open_part(path);
    const std::vector<std::string> all = parts_of(path, parts_[0].ctx);
    paths_ = {path};
    for (size_t i = 1; i < all.size(); ++i) {
        open_part(all[i]);
        paths_.push_back(all[i]);
        if (split_no(parts_.back().ctx) != (int) i) {
            throw Error(all[i] + ": says it is part " + std::to_string(split_no(parts_.back().ctx) + 1) + ", not " +
                        std::to_string(i + 1));
        }
    }
    for (size_t p = 0; p < parts_.size(); ++p) {
        gguf_context * ctx = parts_[p].ctx;
        for (int64_t i = 0; i < gguf_get_n_tensors(ctx); ++i) {
            const std::string name = gguf_get_tensor_name(ctx, i);
            where_[name] = {p, gguf_get_data_offset(ctx) + gguf_get_tensor_offset(ctx, i)};
            names_.push_back(name);
        }
    }
}

void TensorTable::open_part(const std::string & path) {
    Part p;
    p.ctx = gguf_init_from_file(path.c_str(), {true, &p.meta});
    if (!p.ctx) {
        throw Error(path + ": not a GGUF file (or unreadable)");
    }
    parts_.push_back(p);
}

TensorTable::~TensorTable() {
    for (Part & p : parts_) {
        gguf_free(p.ctx);
        ggml_free(p.meta);
    }
}

const ggml_tensor * TensorTable::find(const std::string & name) const {
    const auto it = where_.find(name);
    return it == where_.end() ? nullptr : ggml_get_tensor(parts_[it->second.part].meta, name.c_str());
}

TensorTable::Location TensorTable::locate(const std::string & name) const {
    const auto it = where_.find(name);
    if (it == where_.end()) {
        throw Error(path() + ": no tensor " + name);
    }
    return it->second;
}

uint64_t TensorTable::file_bytes() const {
    uint64_t bytes = 0;
    for (const std::string & p : paths_) {
        bytes += std::filesystem::file_size(p);
    }
    return bytes;
}

std::vector<std::string> model_parts(const std::string & path) {
    ggml_context * meta = nullptr;
    gguf_context * ctx = gguf_init_from_file(path.c_str(), {true, &meta});
    if (!ctx) {
        throw Error(path + ": not a GGUF file (or unreadable)");
    }
    std::vector<std::string> parts;
    try {
        parts = parts_of(path, ctx);
    } catch (...) {
        gguf_free(ctx);
        ggml_free(meta);
        throw;
    }
    gguf_free(ctx);
    ggml_free(meta);
    return parts;
}

uint64_t model_file_bytes(const std::string & path) {
    uint64_t bytes = 0;
    for (const std::string & p : model_parts(path)) {
        std::error_code ec;
        const uint64_t n = std::filesystem::file_size(p, ec);
        bytes += ec ? 0 : n;
    }
    return bytes;
}

TensorIo::TensorIo(const TensorTable & table, bool writable) : table_(table) {
    const auto mode = std::ios::binary | std::ios::in | (writable ? std::ios::out : std::ios::openmode{});
    for (const std::string & p : table.paths()) {
        files_.push_back(std::make_unique<std::fstream>(p, mode));
        if (!*files_.back()) {
            throw Error(p + ": cannot open" + (writable ? " for writing" : ""));
        }
    }
}

std::vector<uint8_t> TensorIo::read(const std::string & name, size_t offset, size_t n) {
    const TensorTable::Location at = table_.locate(name);
    std::fstream & f = *files_[at.part];
    std::vector<uint8_t> b(n);
    f.seekg((std::streamoff) (at.offset + offset));
    f.read(reinterpret_cast<char *>(b.data()), (std::streamsize) n);
    if (!f) {
        throw Error(table_.paths()[at.part] + ": truncated (reading " + std::to_string(n) + " bytes of tensor " + name +
                    " at " + std::to_string(at.offset + offset) + ")");
    }
    return b;
}

void TensorIo::write(const std::string & name, size_t offset, const uint8_t * bytes, size_t n) {
    const TensorTable::Location at = table_.locate(name);
    std::fstream & f = *files_[at.part];
    f.seekp((std::streamoff) (at.offset + offset));
    f.write(reinterpret_cast<const char *>(bytes), (std::streamsize) n);
    if (!f) {
        throw Error(table_.paths()[at.part] + ": cannot write tensor " + name);
    }
}

void TensorIo::flush() {
    for (size_t i = 0; i < files_.size(); ++i) {
        files_[i]->flush();
        if (!*files_[i]) {
            throw Error(table_.paths()[i] + ": write failed");
        }
    }
}

void to_float(ggml_type type, const uint8_t * src, float * dst, int64_t n) {
    if (type == GGML_TYPE_F32) {
        std::copy_n(reinterpret_cast<const float *>(src), n, dst);
    } else {
        ggml_get_type_traits(type)->to_float(src, dst, n);
    }
}

}  // namespace imx::engine
