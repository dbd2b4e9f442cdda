// Writes seed inputs for the fuzzers: a small valid GGUF imatrix and the same data as legacy .dat.
#include "core/format/atomic_file.h"
#include "core/format/imatrix_file.h"

#include <string>

int main(int argc, char ** argv) {
    if (argc != 2) {
        return 1;
    }
    imx::Imatrix im;
    im.meta = {{"calib.txt"}, 2, 512};
    im.tensors["blk.0.ffn_up_exps.weight"] = {{1, 2, 3, 4, 0, 0, 0, 0}, {300, 0}};
    im.tensors["blk.0.attn_q.weight"] = {{5, 6, 7, 8}, {1024}};
    const std::string dir = argv[1];
    imx::write_file_atomic(dir + "/gguf/seed.gguf", imx::encode_gguf(im));
    imx::write_file_atomic(dir + "/legacy/seed.dat", imx::encode_legacy(im));
    return 0;
}
