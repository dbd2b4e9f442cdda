// Any byte string given to the GGUF imatrix reader either decodes or throws imx::Error: no crash, no
// out-of-bounds read (ASan), no undefined behaviour (UBSan). A decoded file must re-encode and decode again.
#include "core/error.h"
#include "core/format/imatrix_file.h"

#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    std::vector<uint8_t> bytes(data, data + size);
    if (size >= 4) {
        std::memcpy(bytes.data(), "GGUF", 4);  // always take the GGUF path
    }
    try {
        const imx::Imatrix im = imx::decode_imatrix(bytes, "fuzz.gguf");
        const auto again = imx::encode_gguf(im);
        (void) imx::decode_imatrix(again, "re-encoded.gguf");
    } catch (const imx::Error &) {
    }
    return 0;
}
