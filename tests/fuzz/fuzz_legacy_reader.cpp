// Any byte string given to the legacy imatrix.dat reader either decodes or throws imx::Error.
#include "core/error.h"
#include "core/format/imatrix_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    if (size >= 4 && data[0] == 'G' && data[1] == 'G' && data[2] == 'U' && data[3] == 'F') {
        return 0;  // that is the other reader's job
    }
    try {
        const imx::Imatrix im = imx::decode_imatrix({data, size}, "fuzz.dat");
        (void) imx::encode_legacy(im);
    } catch (const imx::Error &) {
    }
    return 0;
}
