// DP-FedAvg's per-update clipping (McMahan, Ramage, Talwar, Zhang, ICLR 2018): the L2 norm of each
// client's update d_j = in[j] - x, then out = sum_j float(s_j) * d_j with s_j = min(1, S / |d_j|):
// plain C++17 + OpenMP, no Python, the caller owns memory.
//
// One call, two sweeps (a norm needs the whole update before it can scale any of it): the norms,
// block by block in double, each block's partial sums added in block order (so a norm does not
// depend on the thread count), then the clipped sum, clients in order, float32 with one rounding
// per term (no FMA), as NumPy's `out += s * (w - x)` in a loop.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include <omp.h>

#include "isa.hpp"
#include "kernels.hpp"

namespace fedactors {

namespace detail {

FEDACTORS_INLINE double sq_diff_block_body(const float* __restrict w, const float* __restrict x, std::size_t len) {
    constexpr int kLanes = 32;
    double lane[kLanes] = {};
    std::size_t i = 0;
    for (; i + kLanes <= len; i += kLanes)
        for (int l = 0; l < kLanes; ++l) {
            const double d = static_cast<double>(w[i + l] - x[i + l]);
            lane[l] += d * d;
        }
    for (; i < len; ++i) {
        const double d = static_cast<double>(w[i] - x[i]);
        lane[0] += d * d;
    }
    double s = 0.0;
    for (double v : lane) s += v;
    return s;
}

FEDACTORS_INLINE void clipped_sum_block_body(const float* const* in, const float* scale, std::size_t k,
                                             const float* __restrict x, std::size_t lo, std::size_t len,
                                             float* __restrict o) {
    for (std::size_t i = 0; i < len; ++i) o[i] = 0.0f;
    for (std::size_t j = 0; j < k; ++j) {
        const float* __restrict w = in[j] + lo;
        const float s = scale[j];
        for (std::size_t i = 0; i < len; ++i) o[i] = o[i] + s * (w[i] - x[lo + i]);
    }
}

FEDACTORS_MULTIVERSIONED(double, sq_diff_block, sq_diff_block_body,
                         (const float* __restrict w, const float* __restrict x, std::size_t len), (w, x, len))
FEDACTORS_MULTIVERSIONED(void, clipped_sum_block, clipped_sum_block_body,
                         (const float* const* in, const float* scale, std::size_t k, const float* __restrict x,
                          std::size_t lo, std::size_t len, float* __restrict o),
                         (in, scale, k, x, lo, len, o))

}  // namespace detail

// norms[j] = |in[j] - x| (double); out[i] = sum_j float(min(1, clip / norms[j])) * (in[j][i] - x[i]).
// k >= 0 (k = 0: out is zeros); in[j], x and out hold n floats; out overlaps nothing; clip > 0.
inline void clipped_sum(const float* const* in, std::size_t k, const float* x, double clip, std::size_t n,
                        float* out, double* norms, int threads, Isa isa = Isa::automatic) {
    const auto blocks = detail::num_blocks(n);
    const auto sq = detail::sq_diff_block(resolve_isa(isa));
    std::vector<double> part(blocks * k);
    detail::for_each_block(n, threads, [&](std::size_t lo, std::size_t len) {
        for (std::size_t j = 0; j < k; ++j) part[lo / kBlock * k + j] = sq(in[j] + lo, x + lo, len);
    });
    std::vector<float> scale(k);
    for (std::size_t j = 0; j < k; ++j) {
        double s = 0.0;
        for (std::size_t b = 0; b < blocks; ++b) s += part[b * k + j];
        norms[j] = std::sqrt(s);
        scale[j] = static_cast<float>(norms[j] > clip ? clip / norms[j] : 1.0);
    }
    const auto sum = detail::clipped_sum_block(resolve_isa(isa));
    detail::for_each_block(n, threads, [&](std::size_t lo, std::size_t len) {
        sum(in, scale.data(), k, x, lo, len, out + lo);
    });
}

}  // namespace fedactors
