// Pairwise squared Euclidean distances between k flat buffers, for Krum and Multi-Krum
// (Blanchard et al., NeurIPS 2017): plain C++17 + OpenMP, no Python.
//
// n is walked in fixed blocks of kDistBlock floats (8 KiB a buffer: all k rows of a block stay
// in L2 while every pair is formed). Within a block, pair (i, j) sums (x_i - x_j)^2 in float32
// over 32 fixed lanes, and the lanes are added in double in a fixed order; the blocks' partial
// sums are kept apart and added in block order at the end. So the result depends neither on
// the thread count nor on the instruction set: each number is the same sequence of operations.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include <omp.h>

#include "isa.hpp"
#include "kernels.hpp"

namespace fedactors {

inline constexpr std::size_t kDistBlock = 2048;

namespace detail {

// part[p] = sum over the block of (x_i - x_j)^2 for pair p = (i, j), i < j, in row-major order.
FEDACTORS_INLINE void pair_block_body(const float* const* in, std::size_t k, std::size_t lo, std::size_t len,
                                      double* __restrict part) {
    constexpr int kLanes = 32;
    std::size_t p = 0;
    for (std::size_t i = 0; i < k; ++i) {
        const float* __restrict xi = in[i] + lo;
        for (std::size_t j = i + 1; j < k; ++j, ++p) {
            const float* __restrict xj = in[j] + lo;
            float lane[kLanes] = {};
            std::size_t e = 0;
            for (; e + kLanes <= len; e += kLanes)
                for (int l = 0; l < kLanes; ++l) {
                    const float d = xi[e + l] - xj[e + l];
                    lane[l] += d * d;
                }
            for (; e < len; ++e) {
                const float d = xi[e] - xj[e];
                lane[0] += d * d;
            }
            double s = 0.0;
            for (float v : lane) s += v;
            part[p] = s;
        }
    }
}

FEDACTORS_MULTIVERSIONED(void, pair_block, pair_block_body,
                         (const float* const* in, std::size_t k, std::size_t lo, std::size_t len,
                          double* __restrict part),
                         (in, k, lo, len, part))

}  // namespace detail

// out[i * k + j] = out[j * k + i] = sum_e (in[i][e] - in[j][e])^2, out[i * k + i] = 0; out holds
// k * k doubles. in[j] hold n floats each. Allocates the per-block partial sums (n / 2048 * k(k-1)/2 doubles).
inline void pairwise_sq_distances(const float* const* in, std::size_t k, std::size_t n, double* out, int threads,
                                  Isa isa = Isa::automatic) {
    const std::size_t pairs = k * (k - 1) / 2;
    const std::size_t blocks = (n + kDistBlock - 1) / kDistBlock;
    std::vector<double> part(blocks * pairs);
    const auto block = detail::pair_block(resolve_isa(isa));
    const int nt = detail::resolve_threads(threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (blocks > 1)
    for (std::ptrdiff_t b = 0; b < static_cast<std::ptrdiff_t>(blocks); ++b) {
        const std::size_t lo = static_cast<std::size_t>(b) * kDistBlock;
        const std::size_t len = lo + kDistBlock < n ? kDistBlock : n - lo;
        block(in, k, lo, len, part.data() + static_cast<std::size_t>(b) * pairs);
    }
    std::size_t p = 0;
    for (std::size_t i = 0; i < k; ++i) {
        out[i * k + i] = 0.0;
        for (std::size_t j = i + 1; j < k; ++j, ++p) {
            double s = 0.0;
            for (std::size_t b = 0; b < blocks; ++b) s += part[b * pairs + p];
            out[i * k + j] = out[j * k + i] = s;
        }
    }
}

}  // namespace fedactors
