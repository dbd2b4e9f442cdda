#include "core/format/gguf_file.h"

#include "core/error.h"

#include <algorithm>
#include <cstring>
#include <set>

namespace imx::gguf {

namespace {

size_t scalar_size(Type t) {
    switch (t) {
        case Type::u8: case Type::i8: case Type::boolean: return 1;
        case Type::u16: case Type::i16: return 2;
        case Type::u32: case Type::i32: case Type::f32: return 4;
        case Type::u64: case Type::i64: case Type::f64: return 8;
        default: return 0;  // string and array have no fixed size
    }
}

bool valid_type(uint32_t t) { return t <= (uint32_t) Type::f64; }

// Bounds-checked cursor over the input; every read names the file when it runs out.
class Reader {
public:
    Reader(std::span<const uint8_t> bytes, const std::string & source) : bytes_(bytes), source_(source) {}

    template <typename T> T read(const char * what) {
        T v;
        need(sizeof(T), what);
        std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string read_string(const char * what) {
        const uint64_t n = read<uint64_t>(what);
        need(n, what);
        std::string s(reinterpret_cast<const char *>(bytes_.data() + pos_), n);
        pos_ += n;
        return s;
    }
    void read_raw(std::vector<uint8_t> & out, uint64_t n, const char * what) {
        need(n, what);
        out.assign(bytes_.begin() + pos_, bytes_.begin() + pos_ + n);
        pos_ += n;
    }
    void need(uint64_t n, const char * what) const {
        if (n > bytes_.size() - pos_) {
            fail(std::string("truncated file (reading ") + what + " at byte " + std::to_string(pos_) + ")");
        }
    }
    [[noreturn]] void fail(const std::string & problem) const { throw Error(source_ + ": " + problem); }
    size_t pos() const { return pos_; }
    size_t size() const { return bytes_.size(); }
    const uint8_t * at(size_t p) const { return bytes_.data() + p; }

private:
    std::span<const uint8_t> bytes_;
    const std::string &      source_;
    size_t                   pos_ = 0;
};

Value read_value(Reader & r, Type type) {
    Value v;
    v.type = type;
    if (type == Type::string) {
        v.strings.push_back(r.read_string("a string value"));
    } else if (type == Type::array) {
        const uint32_t et = r.read<uint32_t>("an array type");
        if (!valid_type(et) || et == (uint32_t) Type::array) {
            r.fail("invalid array element type " + std::to_string(et));
        }
        v.elem_type = (Type) et;
        const uint64_t n = r.read<uint64_t>("an array length");
        if (v.elem_type == Type::string) {
            // each string needs at least its 8-byte length: reject absurd counts before allocating
            if (n > (r.size() - r.pos()) / 8) {
                r.fail("array of " + std::to_string(n) + " strings is larger than the file");
            }
            v.strings.reserve(n);
            for (uint64_t i = 0; i < n; ++i) {
                v.strings.push_back(r.read_string("a string array element"));
            }
        } else {
            const size_t es = scalar_size(v.elem_type);
            if (n > (r.size() - r.pos()) / es) {
                r.fail("array of " + std::to_string(n) + " elements is larger than the file");
            }
            r.read_raw(v.raw, n * es, "an array");
        }
    } else {
        r.read_raw(v.raw, scalar_size(type), "a value");
    }
    return v;
}

// Collects bytes the way ggml's gguf writer emits them.
class Writer {
public:
    template <typename T> void put(const T & v) {
        const auto * p = reinterpret_cast<const uint8_t *>(&v);
        out.insert(out.end(), p, p + sizeof(T));
    }
    void put_string(const std::string & s) {
        put<uint64_t>(s.size());
        out.insert(out.end(), s.begin(), s.end());
    }
    void pad(size_t alignment) { out.resize((out.size() + alignment - 1) / alignment * alignment, 0); }
    std::vector<uint8_t> out;
};

uint32_t alignment_of(const File & f, const std::string & source) {
    const Value * v = f.find("general.alignment");
    if (!v) {
        return kDefaultAlignment;
    }
    if (v->type != Type::u32) {
        throw Error(source + ": general.alignment must be u32");
    }
    uint32_t a;
    std::memcpy(&a, v->raw.data(), 4);
    if (a == 0 || (a & (a - 1)) != 0) {
        throw Error(source + ": general.alignment " + std::to_string(a) + " is not a power of two");
    }
    return a;
}

// ggml_n_dims: the number of dimensions up to the last one larger than 1, at least 1.
uint32_t n_dims_of(const std::vector<int64_t> & ne) {
    uint32_t n = 1;
    for (uint32_t i = 1; i < ne.size(); ++i) {
        if (ne[i] > 1) {
            n = i + 1;
        }
    }
    return n;
}

}  // namespace

int64_t Tensor::nelements() const {
    int64_t n = 1;
    for (int64_t d : ne) {
        n *= d;
    }
    return n;
}

const Value * File::find(const std::string & key) const {
    for (const auto & kv : kvs) {
        if (kv.key == key) {
            return &kv.value;
        }
    }
    return nullptr;
}

File parse(std::span<const uint8_t> bytes, const std::string & source,
           const std::function<bool(const std::string & name)> & in_place) {
    Reader r(bytes, source);
    File f;
    if (bytes.size() < 4 || std::memcmp(bytes.data(), "GGUF", 4) != 0) {
        r.fail("not a GGUF file (bad magic)");
    }
    r.read<uint32_t>("magic");
    f.version = r.read<uint32_t>("the version");
    if (f.version != 2 && f.version != 3) {
        r.fail("unsupported GGUF version " + std::to_string(f.version));
    }
    const int64_t n_tensors = r.read<int64_t>("the tensor count");
    const int64_t n_kv = r.read<int64_t>("the key count");
    // every KV and tensor info takes more than 8 bytes: bound the counts by the file size
    if (n_tensors < 0 || n_kv < 0 || (uint64_t) n_tensors > bytes.size() / 8 || (uint64_t) n_kv > bytes.size() / 8) {
        r.fail("implausible counts (" + std::to_string(n_tensors) + " tensors, " + std::to_string(n_kv) + " keys)");
    }

    std::set<std::string> keys;
    for (int64_t i = 0; i < n_kv; ++i) {
        KeyValue kv;
        kv.key = r.read_string("a key");
        if (!keys.insert(kv.key).second) {
            r.fail("duplicate key " + kv.key);
        }
        const uint32_t t = r.read<uint32_t>("a value type");
        if (!valid_type(t)) {
            r.fail("key " + kv.key + " has invalid type " + std::to_string(t));
        }
        kv.value = read_value(r, (Type) t);
        f.kvs.push_back(std::move(kv));
    }

    struct Info { std::string name; std::vector<int64_t> ne; uint32_t type; uint64_t offset; };
    std::vector<Info> infos;
    std::set<std::string> names;
    for (int64_t i = 0; i < n_tensors; ++i) {
        Info info;
        info.name = r.read_string("a tensor name");
        if (!names.insert(info.name).second) {
            r.fail("duplicate tensor " + info.name);
        }
        const uint32_t n_dims = r.read<uint32_t>("a tensor rank");
        if (n_dims < 1 || n_dims > 4) {
            r.fail("tensor " + info.name + " has " + std::to_string(n_dims) + " dimensions");
        }
        int64_t n = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            const int64_t ne = r.read<int64_t>("a tensor dimension");
            if (ne < 0 || (ne > 0 && n > (int64_t) (bytes.size() / 4) / ne)) {
                r.fail("tensor " + info.name + " has an impossible shape");
            }
            n *= ne;
            info.ne.push_back(ne);
        }
        info.type = r.read<uint32_t>("a tensor type");
        info.offset = r.read<uint64_t>("a tensor offset");
        infos.push_back(std::move(info));
    }

    const uint32_t alignment = alignment_of(f, source);
    const size_t data_start = (r.pos() + alignment - 1) / alignment * alignment;
    for (auto & info : infos) {
        Tensor t;
        t.name = std::move(info.name);
        t.ne = std::move(info.ne);
        t.type = info.type;
        if (t.type != kGgmlTypeF32 && t.type != kGgmlTypeF64) {
            f.tensors.push_back(std::move(t));
            continue;
        }
        const uint64_t nbytes = (uint64_t) t.nelements() * (t.type == kGgmlTypeF64 ? 8 : 4);
        if (info.offset % alignment != 0) {
            r.fail("tensor " + t.name + " is not aligned");
        }
        if (data_start > bytes.size() || info.offset > bytes.size() - data_start ||
            nbytes > bytes.size() - data_start - info.offset) {
            r.fail("truncated file (data of tensor " + t.name + " runs past the end)");
        }
        if (in_place && in_place(t.name)) {
            t.in_place = bytes.subspan(data_start + info.offset, nbytes);
            f.tensors.push_back(std::move(t));
            continue;
        }
        void * dst = nullptr;
        if (t.type == kGgmlTypeF64) {
            t.data64.resize(t.nelements());
            dst = t.data64.data();
        } else {
            t.data.resize(t.nelements());
            dst = t.data.data();
        }
        if (nbytes > 0) {
            std::memcpy(dst, r.at(data_start + info.offset), nbytes);
        }
        f.tensors.push_back(std::move(t));
    }
    return f;
}

namespace {

size_t data_bytes(const Tensor & t) {
    return t.type == kGgmlTypeF64 ? t.data64.size() * 8 : (t.rounded_from ? t.rounded_from->size() : t.data.size()) * 4;
}

}  // namespace

void serialize(const File & file, const std::function<void(std::span<const uint8_t>)> & sink) {
    Writer w;
    w.out.insert(w.out.end(), {'G', 'G', 'U', 'F'});
    w.put<uint32_t>(file.version);
    w.put<int64_t>((int64_t) file.tensors.size());
    w.put<int64_t>((int64_t) file.kvs.size());
    for (const auto & kv : file.kvs) {
        w.put_string(kv.key);
        const Value & v = kv.value;
        w.put<uint32_t>((uint32_t) v.type);
        if (v.type == Type::array) {
            w.put<uint32_t>((uint32_t) v.elem_type);
            const uint64_t n = v.elem_type == Type::string ? v.strings.size() : v.raw.size() / scalar_size(v.elem_type);
            w.put<uint64_t>(n);
        }
        if (v.type == Type::string || (v.type == Type::array && v.elem_type == Type::string)) {
            for (const auto & s : v.strings) {
                w.put_string(s);
            }
        } else {
            w.out.insert(w.out.end(), v.raw.begin(), v.raw.end());
        }
    }
    const uint32_t alignment = alignment_of(file, "output");
    uint64_t offset = 0;
    for (const auto & t : file.tensors) {
        if (t.type != kGgmlTypeF32 && t.type != kGgmlTypeF64) {
            throw Error("gguf writer: tensor " + t.name + " is neither F32 nor F64");
        }
        w.put_string(t.name);
        const uint32_t n_dims = n_dims_of(t.ne);
        w.put<uint32_t>(n_dims);
        for (uint32_t d = 0; d < n_dims; ++d) {
            w.put<int64_t>(d < t.ne.size() ? t.ne[d] : 1);
        }
        w.put<uint32_t>(t.type);
        w.put<uint64_t>(offset);
        offset += (data_bytes(t) + alignment - 1) / alignment * alignment;
    }
    w.pad(alignment);
    sink(w.out);
    const std::vector<uint8_t> zeros(alignment, 0);
    std::vector<float> rounded;
    for (const auto & t : file.tensors) {
        if (t.rounded_from) {
            constexpr size_t kPiece = size_t{1} << 16;
            const std::vector<double> & v = *t.rounded_from;
            for (size_t i = 0; i < v.size(); i += kPiece) {
                rounded.assign(v.begin() + (std::ptrdiff_t) i, v.begin() + (std::ptrdiff_t) std::min(v.size(), i + kPiece));
                sink({reinterpret_cast<const uint8_t *>(rounded.data()), rounded.size() * 4});
            }
        } else {
            const auto * p = t.type == kGgmlTypeF64 ? reinterpret_cast<const uint8_t *>(t.data64.data())
                                                    : reinterpret_cast<const uint8_t *>(t.data.data());
            sink({p, data_bytes(t)});
        }
        const size_t n = data_bytes(t);
        sink({zeros.data(), (n + alignment - 1) / alignment * alignment - n});
    }
}

std::vector<uint8_t> serialize(const File & file) {
    std::vector<uint8_t> out;
    serialize(file, [&](std::span<const uint8_t> piece) { out.insert(out.end(), piece.begin(), piece.end()); });
    return out;
}

Value make_string(const std::string & s) {
    Value v;
    v.type = Type::string;
    v.strings = {s};
    return v;
}

Value make_string_array(const std::vector<std::string> & strings) {
    Value v;
    v.type = Type::array;
    v.elem_type = Type::string;
    v.strings = strings;
    return v;
}

Value make_u32(uint32_t x) {
    Value v;
    v.type = Type::u32;
    v.raw.resize(4);
    std::memcpy(v.raw.data(), &x, 4);
    return v;
}

Value make_bool(bool x) {
    Value v;
    v.type = Type::boolean;
    v.raw = {(uint8_t) (x ? 1 : 0)};
    return v;
}

Value make_u32_array(const std::vector<uint32_t> & x) {
    Value v;
    v.type = Type::array;
    v.elem_type = Type::u32;
    v.raw.resize(x.size() * 4);
    if (!x.empty()) {
        std::memcpy(v.raw.data(), x.data(), x.size() * 4);
    }
    return v;
}

}  // namespace imx::gguf
