// Compressed updates (issue 27): stochastic uniform quantization block by block, and the randomized
// Hadamard rotation that shrinks each block's range before it (Suresh, Yu, Kumar, McMahan, "Distributed
// Mean Estimation with Limited Communication", ICML 2017). Plain C++17 + OpenMP, no Python; the caller
// owns memory.
//
// Randomness is counter-based: the draw for value i under `key` is a hash of (key, i), so the codes do
// not depend on the thread count, the order of work, or anything but the key (fedactors.compress derives
// it from seed, round and client) and the input.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <omp.h>

namespace fedactors {

namespace detail {

// splitmix64's finaliser: a bijective 64-bit mix.
inline std::uint64_t mix64(std::uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// A uniform draw in [0, 1) with 24 bits, for value i under key.
inline float uniform01(std::uint64_t key, std::uint64_t i) {
    return static_cast<float>(mix64(key ^ mix64(i)) >> 40) * 0x1p-24f;
}

}  // namespace detail

// Quantize x[0..n) in blocks of `block` values to `bits` (2, 4 or 8) each: per block lo = min, step =
// (max - min) / (2^bits - 1); a value v is t = (v - lo) / step levels up, rounded down or up at random with
// P(up) = t - floor(t), so lo + q * step is v in expectation. codes holds the levels packed little-end
// first, bits * block / 8 bytes a block (the last block's tail unused); lo and step one float per block.
// block * bits must be a multiple of 8.
inline void quantize(const float* x, std::size_t n, int bits, std::size_t block, std::uint64_t key,
                     std::uint8_t* codes, float* lo, float* step, int threads) {
    const std::size_t blocks = (n + block - 1) / block;
    const int levels = (1 << bits) - 1;
    const std::size_t per_byte = 8 / bits;
    const std::size_t block_bytes = block * bits / 8;
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : omp_get_max_threads())
    for (std::ptrdiff_t b = 0; b < static_cast<std::ptrdiff_t>(blocks); ++b) {
        const std::size_t first = static_cast<std::size_t>(b) * block;
        const std::size_t len = std::min(block, n - first);
        float mn = x[first], mx = x[first];
        for (std::size_t i = 1; i < len; ++i) {
            mn = std::min(mn, x[first + i]);
            mx = std::max(mx, x[first + i]);
        }
        const float s = (mx - mn) / static_cast<float>(levels);
        lo[b] = mn;
        step[b] = s;
        std::uint8_t* out = codes + static_cast<std::size_t>(b) * block_bytes;
        std::fill(out, out + block_bytes, std::uint8_t{0});
        for (std::size_t i = 0; i < len; ++i) {
            int q = 0;
            if (s > 0.0f) {
                const double t = (static_cast<double>(x[first + i]) - mn) / s;
                q = static_cast<int>(std::floor(t));
                if (detail::uniform01(key, first + i) < static_cast<float>(t - q)) ++q;
                q = std::clamp(q, 0, levels);
            }
            out[i / per_byte] |= static_cast<std::uint8_t>(q << (bits * (i % per_byte)));
        }
    }
}

// The inverse of quantize's packing: out[i] = lo[b] + q_i * step[b], float32.
inline void dequantize(const std::uint8_t* codes, const float* lo, const float* step, std::size_t n, int bits,
                       std::size_t block, float* out, int threads) {
    const std::size_t blocks = (n + block - 1) / block;
    const unsigned mask = (1u << bits) - 1u;
    const std::size_t per_byte = 8 / bits;
    const std::size_t block_bytes = block * bits / 8;
#pragma omp parallel for schedule(static) num_threads(threads > 0 ? threads : omp_get_max_threads())
    for (std::ptrdiff_t b = 0; b < static_cast<std::ptrdiff_t>(blocks); ++b) {
        const std::size_t first = static_cast<std::size_t>(b) * block;
        const std::size_t len = std::min(block, n - first);
        const std::uint8_t* in = codes + static_cast<std::size_t>(b) * block_bytes;
        for (std::size_t i = 0; i < len; ++i) {
            const unsigned q = (in[i / per_byte] >> (bits * (i % per_byte))) & mask;
            out[first + i] = lo[b] + static_cast<float>(q) * step[b];
        }
    }
}

// The randomized Hadamard rotation, in place, chunk by chunk: each chunk of `chunk` values (a power of 4,
// so 1/sqrt(chunk) is a power of two and the scaling exact) becomes H D x / sqrt(chunk), D a diagonal of
// +-1 drawn from (key, index); with `inverse`, D H y / sqrt(chunk), which undoes it (H H = chunk I). n must
// be a multiple of chunk. The butterflies run in double, one rounding to float at the end.
inline void hadamard(float* x, std::size_t n, std::size_t chunk, std::uint64_t key, bool inverse, int threads) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(chunk));
    const std::size_t chunks = n / chunk;
#pragma omp parallel num_threads(threads > 0 ? threads : omp_get_max_threads())
    {
        double* buf = new double[chunk];
#pragma omp for schedule(static)
        for (std::ptrdiff_t c = 0; c < static_cast<std::ptrdiff_t>(chunks); ++c) {
            float* v = x + static_cast<std::size_t>(c) * chunk;
            const std::size_t base = static_cast<std::size_t>(c) * chunk;
            for (std::size_t i = 0; i < chunk; ++i) {
                const double sign = inverse || (detail::mix64(key ^ detail::mix64(base + i)) & 1u) == 0 ? 1.0 : -1.0;
                buf[i] = sign * static_cast<double>(v[i]);
            }
            for (std::size_t h = 1; h < chunk; h <<= 1)
                for (std::size_t i = 0; i < chunk; i += 2 * h)
                    for (std::size_t j = i; j < i + h; ++j) {
                        const double a = buf[j], b = buf[j + h];
                        buf[j] = a + b;
                        buf[j + h] = a - b;
                    }
            for (std::size_t i = 0; i < chunk; ++i) {
                const double sign =
                    !inverse || (detail::mix64(key ^ detail::mix64(base + i)) & 1u) == 0 ? 1.0 : -1.0;
                v[i] = static_cast<float>(sign * buf[i] * scale);
            }
        }
        delete[] buf;
    }
}

}  // namespace fedactors
