// Re-fitting a norm's weights once the matrices that read its output are quantized (the idea of Norm Tweaking,
// Li et al. 2023), in closed form instead of by gradient steps.
//
// A norm's output x̃ = g ⊙ x̂ feeds matrices W_k (quantized to W̃_k). Scaling the norm's weights per channel,
// g → g ⊙ s, scales x̃ to s ⊙ x̃, which no quantized matrix can absorb (its scales run along its rows). The s that
// makes the quantized matrices' outputs closest to the float ones over the calibration tokens,
//     min_s Σ_k Σ_t ‖W̃_k diag(s) x̃_t − W_k x_t‖²,
// is the solution of A s = b with A = Σ_k (W̃_kᵀW̃_k) ⊙ X̃ᵀX̃ (element by element) and b_i = Σ_k Σ_j (W̃_kᵀW_k)_ij
// (X̃ᵀX)_ij: the covariance and the cross term that the sequential pass collects anyway (without a cross term,
// X = X̃). Damped toward s = 1 like the encoder's Hessian. Same file size; any llama.cpp loads it.
#pragma once

#include <cstdint>
#include <vector>

namespace imx {

class NormRefit {
public:
    explicit NormRefit(int64_t n);
    // One matrix reading the norm's output: w (float) and wq (its quantized values), rows × n row-major; h = X̃ᵀX̃ and
    // cross = X̃ᵀX (n × n, cross[i·n + j] = Σ x̃_i x_j), or null: the float inputs are the quantized stream's.
    void add(const float * w, const float * wq, int64_t rows, const double * h, const double * cross);
    // The scales (n), and by how much they lower the summed output error (≥ 0; all ones where nothing is gained).
    std::vector<double> solve(double damp, double * gain) const;

private:
    int64_t             n_;
    std::vector<double> a_, b_;
};

}  // namespace imx
