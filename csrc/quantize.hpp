// Compressed updates (issue 27): stochastic uniform quantization block by block, and the randomized
// Hadamard rotation that shrinks each block's range before it (Suresh, Yu, Kumar, McMahan, "Distributed
// Mean Estimation with Limited Communication", ICML 2017). Plain C++17 + OpenMP, no Python; the caller
// owns memory.
//
// Randomness is counter-based: the draw for value i under `key` is a hash of (key, i), so the codes do
// not depend on the thread count, the order of work, or anything but the key (fedactors.compress derives
// it from seed, round and client) and the input. The hash is murmur3's 32-bit finaliser over
// i * golden + key, 32-bit integer arithmetic that the vector units do lane by lane; like every hot
// loop here it is compiled for the baseline, AVX2 and AVX-512 (isa.hpp), float operations without FMA,
// so each variant gives the same bytes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "isa.hpp"

namespace fedactors {

inline constexpr std::size_t kQuantMaxBlock = 4096;  // longest block quantize takes (its levels sit on the stack)

namespace detail {

// murmur3's fmix32: a bijective 32-bit mix.
FEDACTORS_INLINE std::uint32_t fmix32(std::uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

// The 32-bit draw for value i under key (key folded to 32 bits).
FEDACTORS_INLINE std::uint32_t draw(std::uint32_t key32, std::uint32_t i) { return fmix32(i * 0x9e3779b9u + key32); }

inline std::uint32_t fold(std::uint64_t key) { return static_cast<std::uint32_t>(key ^ (key >> 32)); }

// One block: levels q_i = floor(t) or floor(t) + 1, t = (x_i - lo) * inv, up with probability t - floor(t)
// (the draw's top 24 bits against it), packed BITS a value, low bits first.
// The block's min and max, over 16 lanes so the loop vectorises (min and max are exact: any order gives them).
FEDACTORS_INLINE void min_max_body(const float* __restrict x, std::size_t len, float* mn_out, float* mx_out) {
    constexpr std::size_t kLanes = 16;
    float mn[kLanes], mx[kLanes];
    for (std::size_t l = 0; l < kLanes; ++l) mn[l] = mx[l] = x[0];
    std::size_t i = 0;
    for (; i + kLanes <= len; i += kLanes)
        for (std::size_t l = 0; l < kLanes; ++l) {
            mn[l] = x[i + l] < mn[l] ? x[i + l] : mn[l];
            mx[l] = x[i + l] > mx[l] ? x[i + l] : mx[l];
        }
    for (; i < len; ++i) {
        mn[0] = x[i] < mn[0] ? x[i] : mn[0];
        mx[0] = x[i] > mx[0] ? x[i] : mx[0];
    }
    for (std::size_t l = 1; l < kLanes; ++l) {
        mn[0] = mn[l] < mn[0] ? mn[l] : mn[0];
        mx[0] = mx[l] > mx[0] ? mx[l] : mx[0];
    }
    *mn_out = mn[0];
    *mx_out = mx[0];
}

FEDACTORS_MULTIVERSIONED(void, min_max, min_max_body,
                         (const float* __restrict x, std::size_t len, float* mn_out, float* mx_out),
                         (x, len, mn_out, mx_out))

template <int BITS>
FEDACTORS_INLINE void quantize_block_body(const float* __restrict x, std::size_t len, std::uint32_t first,
                                          std::uint32_t key32, float lo, float inv, std::uint8_t* __restrict out) {
    constexpr int kLevels = (1 << BITS) - 1;
    constexpr std::size_t kPerByte = 8 / BITS;
    std::uint8_t level[kQuantMaxBlock];
    for (std::size_t i = 0; i < len; ++i) {
        const float t = (x[i] - lo) * inv;  // >= 0: x[i] >= lo
        const int q = static_cast<int>(t);
        const float frac = t - static_cast<float>(q);
        const float u = static_cast<float>(draw(key32, first + static_cast<std::uint32_t>(i)) >> 8) * 0x1p-24f;
        const int up = q + (u < frac ? 1 : 0);
        level[i] = static_cast<std::uint8_t>(up < kLevels ? up : kLevels);
    }
    for (std::size_t i = len; i < (len + kPerByte - 1) / kPerByte * kPerByte; ++i) level[i] = 0;
    const std::size_t bytes = (len + kPerByte - 1) / kPerByte;
    for (std::size_t b = 0; b < bytes; ++b) {
        std::uint8_t packed = 0;
        for (std::size_t j = 0; j < kPerByte; ++j) packed |= static_cast<std::uint8_t>(level[b * kPerByte + j] << (BITS * j));
        out[b] = packed;
    }
}

template <int BITS>
FEDACTORS_INLINE void dequantize_block_body(const std::uint8_t* __restrict in, std::size_t len, float lo, float step,
                                            float* __restrict out) {
    constexpr unsigned kMask = (1u << BITS) - 1u;
    constexpr std::size_t kPerByte = 8 / BITS;
    const std::size_t whole = len / kPerByte;
    for (std::size_t b = 0; b < whole; ++b)
        for (std::size_t j = 0; j < kPerByte; ++j)
            out[b * kPerByte + j] = lo + static_cast<float>((in[b] >> (BITS * j)) & kMask) * step;
    for (std::size_t i = whole * kPerByte; i < len; ++i)
        out[i] = lo + static_cast<float>((in[i / kPerByte] >> (BITS * (i % kPerByte))) & kMask) * step;
}

#define FEDACTORS_QUANT_VARIANTS(BITS)                                                                            \
    FEDACTORS_MULTIVERSIONED(void, quantize_block_##BITS, quantize_block_body<BITS>,                                \
                             (const float* __restrict x, std::size_t len, std::uint32_t first, std::uint32_t key32, \
                              float lo, float inv, std::uint8_t* __restrict out),                                  \
                             (x, len, first, key32, lo, inv, out))                                                 \
    FEDACTORS_MULTIVERSIONED(void, dequantize_block_##BITS, dequantize_block_body<BITS>,                            \
                             (const std::uint8_t* __restrict in, std::size_t len, float lo, float step,             \
                              float* __restrict out),                                                              \
                             (in, len, lo, step, out))
FEDACTORS_QUANT_VARIANTS(2)
FEDACTORS_QUANT_VARIANTS(4)
FEDACTORS_QUANT_VARIANTS(8)
#undef FEDACTORS_QUANT_VARIANTS

using QuantizeBlock = void (*)(const float*, std::size_t, std::uint32_t, std::uint32_t, float, float, std::uint8_t*);
using DequantizeBlock = void (*)(const std::uint8_t*, std::size_t, float, float, float*);

inline QuantizeBlock quantize_block(int bits, Isa isa) {
    return bits == 2 ? quantize_block_2(isa) : bits == 4 ? quantize_block_4(isa) : quantize_block_8(isa);
}

inline DequantizeBlock dequantize_block(int bits, Isa isa) {
    return bits == 2 ? dequantize_block_2(isa) : bits == 4 ? dequantize_block_4(isa) : dequantize_block_8(isa);
}

inline int omp_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

}  // namespace detail

// Quantize x[0..n) in blocks of `block` values (block * bits a multiple of 8, block <= kQuantMaxBlock,
// n < 2^32) to `bits` (2, 4 or 8) each: per block lo = min, step = (max - min) / (2^bits - 1); a value
// is t = (v - lo) * (1 / step) levels up, rounded down or up at random with P(up) = t - floor(t), so
// lo + q * step is v in expectation. codes: the levels packed low bits first, bits * block / 8 bytes a
// block (the last block's tail zero); lo and step one float per block. The values must be finite (the
// caller checks: a level of NaN would be a cast of NaN to int, undefined). Returns how many blocks span
// a range float32 cannot hold (max - min overflows): their codes are meaningless, the caller refuses
// them. A block whose step is so small (below ~3e-39) that 1 / step overflows is sent as its min.
inline std::size_t quantize(const float* x, std::size_t n, int bits, std::size_t block, std::uint64_t key,
                     std::uint8_t* codes, float* lo, float* step, int threads, Isa isa = Isa::automatic) {
    const std::size_t blocks = (n + block - 1) / block;
    const float levels = static_cast<float>((1 << bits) - 1);
    const std::size_t block_bytes = block * bits / 8;
    const auto body = detail::quantize_block(bits, resolve_isa(isa));
    const auto range = detail::min_max(resolve_isa(isa));
    const std::uint32_t key32 = detail::fold(key);
    std::size_t wide = 0;
#pragma omp parallel for schedule(static) num_threads(detail::omp_threads(threads)) reduction(+ : wide)
    for (std::ptrdiff_t b = 0; b < static_cast<std::ptrdiff_t>(blocks); ++b) {
        const std::size_t first = static_cast<std::size_t>(b) * block;
        const std::size_t len = std::min(block, n - first);
        float mn, mx;
        range(x + first, len, &mn, &mx);
        const float s = (mx - mn) / levels;
        lo[b] = mn;
        step[b] = s;
        std::uint8_t* out = codes + static_cast<std::size_t>(b) * block_bytes;
        std::fill(out, out + block_bytes, std::uint8_t{0});
        if (!std::isfinite(s)) {  // (x - lo) * (1 / s) would be inf * 0 = NaN somewhere: no level to cast
            ++wide;
            continue;
        }
        const float inv = s > 0.0f ? 1.0f / s : 0.0f;
        // Levels are t = (x - lo) * inv in [0, 2^bits - 1]; an infinite inv would make x == lo's NaN.
        body(x + first, len, static_cast<std::uint32_t>(first), key32, mn, std::isfinite(inv) ? inv : 0.0f, out);
    }
    return wide;
}

// The inverse of quantize's packing: out[i] = lo[b] + q_i * step[b], float32.
inline void dequantize(const std::uint8_t* codes, const float* lo, const float* step, std::size_t n, int bits,
                       std::size_t block, float* out, int threads, Isa isa = Isa::automatic) {
    const std::size_t blocks = (n + block - 1) / block;
    const std::size_t block_bytes = block * bits / 8;
    const auto body = detail::dequantize_block(bits, resolve_isa(isa));
#pragma omp parallel for schedule(static) num_threads(detail::omp_threads(threads))
    for (std::ptrdiff_t b = 0; b < static_cast<std::ptrdiff_t>(blocks); ++b) {
        const std::size_t first = static_cast<std::size_t>(b) * block;
        body(codes + static_cast<std::size_t>(b) * block_bytes, std::min(block, n - first), lo[b], step[b],
             out + first);
    }
}

// The randomized Hadamard rotation, in place, chunk by chunk: each chunk of `chunk` values (a power of 4,
// so 1/sqrt(chunk) is a power of two and the scaling exact) becomes H D x / sqrt(chunk), D a diagonal of
// +-1 drawn from (key, index); with `inverse`, D H y / sqrt(chunk), which undoes it (H H = chunk I). n must
// be a multiple of chunk and below 2^32. The butterflies run in double, one rounding to float at the end.
inline void hadamard(float* x, std::size_t n, std::size_t chunk, std::uint64_t key, bool inverse, int threads) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(chunk));
    const std::size_t chunks = n / chunk;
    const std::uint32_t key32 = detail::fold(key);
#pragma omp parallel num_threads(detail::omp_threads(threads))
    {
        std::vector<double> buf(chunk);
#pragma omp for schedule(static)
        for (std::ptrdiff_t c = 0; c < static_cast<std::ptrdiff_t>(chunks); ++c) {
            float* v = x + static_cast<std::size_t>(c) * chunk;
            const auto base = static_cast<std::uint32_t>(static_cast<std::size_t>(c) * chunk);
            auto sign = [&](std::size_t i) { return (detail::draw(key32, base + static_cast<std::uint32_t>(i)) & 1u) ? -1.0 : 1.0; };
            for (std::size_t i = 0; i < chunk; ++i) buf[i] = (inverse ? 1.0 : sign(i)) * static_cast<double>(v[i]);
            for (std::size_t i = 0; i < chunk; i += 2) {  // h = 1: neighbours (the general loop's j runs once)
                const double a = buf[i], b = buf[i + 1];
                buf[i] = a + b;
                buf[i + 1] = a - b;
            }
            for (std::size_t h = 2; h < chunk; h <<= 1)
                for (std::size_t i = 0; i < chunk; i += 2 * h) {
                    double* __restrict lo = buf.data() + i;
                    double* __restrict hi = buf.data() + i + h;
                    for (std::size_t j = 0; j < h; ++j) {
                        const double a = lo[j], b = hi[j];
                        lo[j] = a + b;
                        hi[j] = a - b;
                    }
                }
            for (std::size_t i = 0; i < chunk; ++i) v[i] = static_cast<float>((inverse ? sign(i) : 1.0) * buf[i] * scale);
        }
    }
}

}  // namespace fedactors
