// Pairwise squared Euclidean distances between k flat buffers, for Krum and Multi-Krum
// (Blanchard et al., NeurIPS 2017): plain C++17 + OpenMP, no Python.
//
// n is walked in fixed blocks of kDistBlock floats (8 KiB a buffer: all k rows of a block stay
// in L2 while every pair is formed). Within a block, pair (i, j) sums (x_i - x_j)^2 in float32
// over 32 fixed lanes, and the lanes are added in double in a fixed order; the blocks' partial
// sums are kept apart and added in block order at the end. So the result depends neither on
// the thread count nor on the instruction set: each number is the same sequence of operations.
#pragma once

#include <algorithm>
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

// Partial sums held at once (doubles): 64 MiB. All blocks' fit for k up to ~140 updates of the CNN.
inline constexpr std::size_t kDistMaxPartials = std::size_t{8} << 20;

// out[i * k + j] = out[j * k + i] = sum_e (in[i][e] - in[j][e])^2, out[i * k + i] = 0; out holds
// k * k doubles. in[j] hold n floats each. The blocks are formed in groups whose partial sums
// (a group's blocks * k(k-1)/2 doubles) stay within max_partials, at least one block a group; each
// group's are added to the running sums in block order, so the grouping does not change a bit.
inline void pairwise_sq_distances(const float* const* in, std::size_t k, std::size_t n, double* out, int threads,
                                  Isa isa = Isa::automatic, std::size_t max_partials = kDistMaxPartials) {
    const std::size_t pairs = k * (k - 1) / 2;
    const std::size_t blocks = (n + kDistBlock - 1) / kDistBlock;
    const std::size_t group = std::min(blocks, std::max<std::size_t>(1, max_partials / (pairs ? pairs : 1)));
    std::vector<double> part(group * pairs), sum(pairs, 0.0);
    const auto block = detail::pair_block(resolve_isa(isa));
    const int nt = detail::resolve_threads(threads);
    for (std::size_t first = 0; first < blocks; first += group) {
        const auto count = static_cast<std::ptrdiff_t>(std::min(group, blocks - first));
#pragma omp parallel for schedule(static) num_threads(nt) if (count > 1)
        for (std::ptrdiff_t g = 0; g < count; ++g) {
            const std::size_t lo = (first + static_cast<std::size_t>(g)) * kDistBlock;
            const std::size_t len = lo + kDistBlock < n ? kDistBlock : n - lo;
            block(in, k, lo, len, part.data() + static_cast<std::size_t>(g) * pairs);
        }
        for (std::ptrdiff_t g = 0; g < count; ++g)
            for (std::size_t p = 0; p < pairs; ++p) sum[p] += part[static_cast<std::size_t>(g) * pairs + p];
    }
    std::size_t p = 0;
    for (std::size_t i = 0; i < k; ++i) {
        out[i * k + i] = 0.0;
        for (std::size_t j = i + 1; j < k; ++j, ++p) out[i * k + j] = out[j * k + i] = sum[p];
    }
}

}  // namespace fedactors
