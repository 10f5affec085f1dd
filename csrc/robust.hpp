// Robust aggregators: coordinate-wise median and trimmed mean over k float32 buffers.
//
// Both are "the mean of the values ranked first..last" of each coordinate: the median is ranks
// (k-1)/2..k/2 (one value, or the two middle ones), the beta-trimmed mean ranks g..k-1-g with
// g = floor(beta*k). Coordinates are independent, so instead of sorting each one on its own
// (k scattered loads, branchy), a block of `width` coordinates is copied into a k x width
// scratch (row j = buffer j) and one sorting network runs over the rows: each comparator is a
// min and a max of two rows, `width` lanes at a time in vector registers, no branches. Rows
// first..last then hold the needed ranks of every coordinate of the block. For k <= kSmallK
// (16) the network is unrolled at compile time and the k rows of 4-16 lanes never leave the
// registers: 2-3x faster again. Any NaN makes its coordinate NaN (tracked on the side, since
// min/max only permute NaNs around).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include <omp.h>

#include "isa.hpp"
#include "kernels.hpp"

#if FEDACTORS_MULTIVERSION
#include <immintrin.h>
#endif

namespace fedactors {

// After it runs, row lo <= row hi in every lane.
struct Comparator {
    std::uint32_t lo, hi;
};

// A network sorting k values into ascending ranks 0..k-1, keeping only the comparators that can
// change ranks first..last. It is Batcher's odd-even merge sort for the next power of two, with
// every comparator that touches a wire >= k dropped: such wires act as +inf, which a comparator
// (min to the lower wire) never moves, so the first k wires are sorted by what remains. Then,
// walking backwards, a comparator is dropped unless one of its outputs is needed (and if kept,
// both its inputs are). k = 10: 29 comparators (median) or 32 (all ranks); k = 50: 330 or 403.
inline std::vector<Comparator> sorting_network(std::size_t k, std::size_t first, std::size_t last) {
    std::size_t wires = 1;
    while (wires < k) wires <<= 1;
    std::vector<Comparator> net;
    for (std::size_t p = 1; p < wires; p <<= 1)
        for (std::size_t d = p; d >= 1; d >>= 1)
            for (std::size_t j = d % p; j + d < wires; j += 2 * d)
                for (std::size_t i = 0; i < std::min(d, wires - j - d); ++i)
                    if ((i + j) / (2 * p) == (i + j + d) / (2 * p) && i + j + d < k)
                        net.push_back({static_cast<std::uint32_t>(i + j),
                                       static_cast<std::uint32_t>(i + j + d)});
    std::vector<bool> needed(k, false);
    for (std::size_t w = first; w <= last && w < k; ++w) needed[w] = true;
    std::vector<Comparator> kept;
    for (auto c = net.rbegin(); c != net.rend(); ++c) {
        if (!needed[c->lo] && !needed[c->hi]) continue;
        needed[c->lo] = needed[c->hi] = true;
        kept.push_back(*c);
    }
    std::reverse(kept.begin(), kept.end());
    return kept;
}

namespace detail {

// Widest block: the scratch is k x width floats, and `width` lanes of NaN flags live on the stack.
inline constexpr std::size_t kMaxWidth = 512;

// Lanes per block: the k x width scratch fits in 16 KiB (half of L1d), a multiple of 16 floats
// (one AVX-512 vector), at least 16.
inline std::size_t robust_width(std::size_t k) {
    const std::size_t fit = (16 * 1024 / sizeof(float)) / k / 16 * 16;
    return std::clamp<std::size_t>(fit, 16, kMaxWidth);
}

// NaN test on the bits, for vectorising without float compares (see load_lanes below): the sign
// bit of the result is set exactly when f is a NaN.
FEDACTORS_INLINE std::int32_t nan_sign(float f) {
    std::int32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    return 0x7f800000 - (bits & 0x7fffffff);
}

// Copies in[j][lo:lo+len] to row j of scratch (rows `width` long, zero past len); nan[l] != 0
// where any of the k values of coordinate lo+l is NaN. 16 lanes at a time, all k rows, so the
// flags stay in registers and the k inputs stream as in the small-k path.
FEDACTORS_INLINE void gather_body(const float* const* in, std::size_t k, std::size_t lo,
                                  std::size_t len, std::size_t width, float* __restrict scratch,
                                  std::uint32_t* __restrict nan) {
    constexpr std::size_t kLanes = 16;
    for (std::size_t off = 0; off < width; off += kLanes) {
        std::int32_t flag[kLanes] = {};
        const bool whole = off + kLanes <= len;
        for (std::size_t j = 0; j < k; ++j) {
            const float* __restrict x = in[j] + lo + off;
            float* __restrict row = scratch + j * width + off;
            if (whole) {
                for (std::size_t l = 0; l < kLanes; ++l) {
                    row[l] = x[l];
                    flag[l] |= nan_sign(x[l]);
                }
            } else {  // the block's tail: lanes past len read nothing and hold an inert 0
                for (std::size_t l = 0; l < kLanes; ++l) {
                    const float v = off + l < len ? x[l] : 0.0f;
                    row[l] = v;
                    flag[l] |= nan_sign(v);
                }
            }
        }
        for (std::size_t l = 0; l < kLanes; ++l) nan[off + l] = static_cast<std::uint32_t>(flag[l] >> 31);
    }
}

// o[0:width] = (rows first..last of scratch, summed in order in float32) / (last - first + 1),
// or NaN where nan[l] is set.
FEDACTORS_INLINE void reduce_body(const float* __restrict scratch, std::size_t width,
                                  std::size_t first, std::size_t last,
                                  const std::uint32_t* __restrict nan, float* __restrict o) {
    const float* __restrict row = scratch + first * width;
    for (std::size_t l = 0; l < width; ++l) o[l] = row[l];
    for (std::size_t r = first + 1; r <= last; ++r) {
        row = scratch + r * width;
        for (std::size_t l = 0; l < width; ++l) o[l] += row[l];
    }
    const float count = static_cast<float>(last - first + 1);
    const float qnan = std::numeric_limits<float>::quiet_NaN();
    for (std::size_t l = 0; l < width; ++l) o[l] = nan[l] ? qnan : o[l] / count;
}

FEDACTORS_MULTIVERSIONED(void, gather, gather_body,
                         (const float* const* in, std::size_t k, std::size_t lo, std::size_t len,
                          std::size_t width, float* __restrict scratch,
                          std::uint32_t* __restrict nan),
                         (in, k, lo, len, width, scratch, nan))
FEDACTORS_MULTIVERSIONED(void, reduce, reduce_body,
                         (const float* __restrict scratch, std::size_t width, std::size_t first,
                          std::size_t last, const std::uint32_t* __restrict nan,
                          float* __restrict o),
                         (scratch, width, first, last, nan, o))

// Runs the network over the rows of scratch: for each comparator, lane by lane,
// lo, hi = (x < y ? x : y), (y > x ? y : x) with x, y the old lo, hi. On ties lo gets y and
// hi gets x, so the pair is always a permutation of the inputs (-0.0 and +0.0 are not merged).
// That is exactly minps(x, y) and maxps(y, x), which is how the x86 variants spell it: GCC 12
// turns these selects into compare-and-blend (AVX2), or does not vectorise them (SSE2), 2-6x
// slower. `width` is a multiple of 16.
inline void network_portable(const Comparator* net, std::size_t comparators, std::size_t width,
                             float* __restrict scratch) {
    for (std::size_t c = 0; c < comparators; ++c) {
        float* a = scratch + net[c].lo * width;
        float* b = scratch + net[c].hi * width;
        for (std::size_t l = 0; l < width; ++l) {
            const float x = a[l], y = b[l];
            a[l] = x < y ? x : y;
            b[l] = y > x ? y : x;
        }
    }
}

#if FEDACTORS_MULTIVERSION
inline void network_baseline(const Comparator* net, std::size_t comparators, std::size_t width,
                             float* __restrict scratch) {
    for (std::size_t c = 0; c < comparators; ++c) {
        float* a = scratch + net[c].lo * width;
        float* b = scratch + net[c].hi * width;
        for (std::size_t l = 0; l < width; l += 4) {
            const __m128 x = _mm_loadu_ps(a + l), y = _mm_loadu_ps(b + l);
            _mm_storeu_ps(a + l, _mm_min_ps(x, y));
            _mm_storeu_ps(b + l, _mm_max_ps(y, x));
        }
    }
}

FEDACTORS_TARGET("avx2")
inline void network_avx2(const Comparator* net, std::size_t comparators, std::size_t width,
                         float* __restrict scratch) {
    for (std::size_t c = 0; c < comparators; ++c) {
        float* a = scratch + net[c].lo * width;
        float* b = scratch + net[c].hi * width;
        for (std::size_t l = 0; l < width; l += 8) {
            const __m256 x = _mm256_loadu_ps(a + l), y = _mm256_loadu_ps(b + l);
            _mm256_storeu_ps(a + l, _mm256_min_ps(x, y));
            _mm256_storeu_ps(b + l, _mm256_max_ps(y, x));
        }
    }
}

FEDACTORS_TARGET("avx512f")
inline void network_avx512(const Comparator* net, std::size_t comparators, std::size_t width,
                           float* __restrict scratch) {
    for (std::size_t c = 0; c < comparators; ++c) {
        float* a = scratch + net[c].lo * width;
        float* b = scratch + net[c].hi * width;
        for (std::size_t l = 0; l < width; l += 16) {
            const __m512 x = _mm512_loadu_ps(a + l), y = _mm512_loadu_ps(b + l);
            _mm512_storeu_ps(a + l, _mm512_min_ps(x, y));
            _mm512_storeu_ps(b + l, _mm512_max_ps(y, x));
        }
    }
}
#endif

using NetworkFn = void (*)(const Comparator*, std::size_t, std::size_t, float* __restrict);

inline NetworkFn network(Isa isa) {
#if FEDACTORS_MULTIVERSION
    switch (isa) {
        case Isa::avx512: return &network_avx512;
        case Isa::avx2: return &network_avx2;
        default: return &network_baseline;
    }
#else
    (void)isa;
    return &network_portable;
#endif
}

// --- Small k: the whole network in vector registers, no scratch. ---------------------------
//
// For k <= kSmallK the k values of W neighbouring coordinates are k vectors (one unaligned load
// from each buffer), the network is unrolled at compile time into min/max selects between
// registers, and ranks first..last are summed in registers. Reads each input once, like
// weighted_average. The selects are written as GCC/Clang vector extensions rather than
// intrinsics so that one body serves every target; whether a compiler emits minps or
// compare-and-blend, the lanes get the same values as compare_exchange above.
inline constexpr std::size_t kSmallK = 16;

inline constexpr std::size_t batcher_size(std::size_t k) {
    std::size_t wires = 1, count = 0;
    while (wires < k) wires <<= 1;
    for (std::size_t p = 1; p < wires; p <<= 1)
        for (std::size_t d = p; d >= 1; d >>= 1)
            for (std::size_t j = d % p; j + d < wires; j += 2 * d)
                for (std::size_t i = 0; i < std::min(d, wires - j - d); ++i)
                    if ((i + j) / (2 * p) == (i + j + d) / (2 * p) && i + j + d < k) ++count;
    return count;
}

// All of sorting_network(K, 0, K - 1), at compile time.
template <std::size_t K>
constexpr std::array<Comparator, batcher_size(K)> batcher() {
    std::array<Comparator, batcher_size(K)> net{};
    std::size_t wires = 1, c = 0;
    while (wires < K) wires <<= 1;
    for (std::size_t p = 1; p < wires; p <<= 1)
        for (std::size_t d = p; d >= 1; d >>= 1)
            for (std::size_t j = d % p; j + d < wires; j += 2 * d)
                for (std::size_t i = 0; i < std::min(d, wires - j - d); ++i)
                    if ((i + j) / (2 * p) == (i + j + d) / (2 * p) && i + j + d < K)
                        net[c++] = {static_cast<std::uint32_t>(i + j),
                                    static_cast<std::uint32_t>(i + j + d)};
    return net;
}

template <std::size_t W>
struct Lanes {
    typedef float f __attribute__((vector_size(W * sizeof(float))));
    typedef std::int32_t i __attribute__((vector_size(W * sizeof(float))));
};

template <std::size_t W>
FEDACTORS_INLINE void compare_exchange(typename Lanes<W>::f& a, typename Lanes<W>::f& b) {
    const auto x = a, y = b;
    a = x < y ? x : y;
    b = y > x ? y : x;
}

// Loads v[j] = src[j][off:off+W]. The NaN test is integer arithmetic on the bits, not a float
// compare (whose AVX-512 mask result GCC 12 lowers to scalar code here): with b the bits
// without the sign, 0x7f800000 - b is negative exactly when b is a NaN's, so the sign bit of
// `nan` ends up set in every lane where some value is NaN.
#if FEDACTORS_MULTIVERSION
// SSE2 is always there on x86-64, so the baseline may say minps directly: GCC 12 spells the
// 4-lane selects as compare, and, andnot, or (the wider variants get min/max or blend).
template <>
FEDACTORS_INLINE void compare_exchange<4>(Lanes<4>::f& a, Lanes<4>::f& b) {
    const __m128 x = a, y = b;
    a = _mm_min_ps(x, y);
    b = _mm_max_ps(y, x);
}
#endif

template <std::size_t K, std::size_t W, std::size_t... J>
FEDACTORS_INLINE void load_lanes(const float* const* src, std::size_t off,
                                 typename Lanes<W>::f (&v)[K], typename Lanes<W>::i& nan,
                                 std::index_sequence<J...>) {
    typename Lanes<W>::i bits[K];
    ((std::memcpy(&v[J], src[J] + off, sizeof(v[J])), std::memcpy(&bits[J], &v[J], sizeof(v[J])),
      nan |= 0x7f800000 - (bits[J] & 0x7fffffff)),
     ...);
}

template <std::size_t K, std::size_t W, std::size_t... C>
FEDACTORS_INLINE void sort_lanes(typename Lanes<W>::f (&v)[K], std::index_sequence<C...>) {
    [[maybe_unused]] constexpr auto net = batcher<K>();  // unused if K == 1
    (compare_exchange<W>(v[net[C].lo], v[net[C].hi]), ...);
}

template <std::size_t K, std::size_t W, std::size_t... R>
FEDACTORS_INLINE void sum_lanes(const typename Lanes<W>::f (&v)[K], std::size_t first,
                                std::size_t last, typename Lanes<W>::f& sum,
                                std::index_sequence<R...>) {
    ((R >= first && R <= last ? sum += v[R] : sum), ...);
}

// dst[off:off+W] = ranked mean of src[0..K-1][off:off+W].
template <std::size_t K, std::size_t W>
FEDACTORS_INLINE void small_chunk(const float* const* src, std::size_t off, std::size_t first,
                                  std::size_t last, float* dst) {
    using F = typename Lanes<W>::f;
    F v[K];
    typename Lanes<W>::i nan = {};
    load_lanes<K, W>(src, off, v, nan, std::make_index_sequence<K>{});
    sort_lanes<K, W>(v, std::make_index_sequence<batcher_size(K)>{});
    F sum = F{} - 0.0f;  // -0.0 + x == x for every x, so the first add is exact, as is NumPy's
    sum_lanes<K, W>(v, first, last, sum, std::make_index_sequence<K>{});
    const F mean = sum / static_cast<float>(last - first + 1);
    typename Lanes<W>::i bits, qnan = {};
    std::memcpy(&bits, &mean, sizeof(bits));
    qnan += 0x7fc00000;
    const auto is_nan = nan >> 31;  // all ones where some value was NaN
    bits = (bits & ~is_nan) | (qnan & is_nan);
    std::memcpy(dst + off, &bits, sizeof(bits));
}

// o[0:len] = ranked mean of in[0..K-1][lo:lo+len], W coordinates at a time.
template <std::size_t K, std::size_t W>
FEDACTORS_INLINE void small_body(const float* const* in, std::size_t lo, std::size_t len,
                                 std::size_t first, std::size_t last, float* o) {
    const float* src[K];
    for (std::size_t j = 0; j < K; ++j) src[j] = in[j] + lo;
    std::size_t off = 0;
    for (; off + W <= len; off += W) small_chunk<K, W>(src, off, first, last, o);
    if (off == len) return;
    float pad[K][W] = {}, tail[W];  // the last len % W coordinates, padded with zeros
    for (std::size_t j = 0; j < K; ++j) {
        std::copy(src[j] + off, src[j] + len, pad[j]);
        src[j] = pad[j];
    }
    small_chunk<K, W>(src, 0, first, last, tail);
    std::copy(tail, tail + (len - off), o + off);
}

using SmallFn = void (*)(const float* const*, std::size_t, std::size_t, std::size_t, std::size_t,
                         float*);

template <std::size_t K>
void small_baseline(const float* const* in, std::size_t lo, std::size_t len, std::size_t first,
                    std::size_t last, float* o) {
    small_body<K, 4>(in, lo, len, first, last, o);
}

#if FEDACTORS_MULTIVERSION
template <std::size_t K>
FEDACTORS_TARGET("avx2")
void small_avx2(const float* const* in, std::size_t lo, std::size_t len, std::size_t first,
                std::size_t last, float* o) {
    small_body<K, 8>(in, lo, len, first, last, o);
}

template <std::size_t K>
FEDACTORS_TARGET("avx512f")
void small_avx512(const float* const* in, std::size_t lo, std::size_t len, std::size_t first,
                  std::size_t last, float* o) {
    small_body<K, 16>(in, lo, len, first, last, o);
}
#endif

template <std::size_t... K>
SmallFn small_fn(std::size_t k, Isa isa, std::index_sequence<K...>) {
    static constexpr SmallFn baseline[] = {&small_baseline<K + 1>...};
#if FEDACTORS_MULTIVERSION
    static constexpr SmallFn avx2[] = {&small_avx2<K + 1>...};
    static constexpr SmallFn avx512[] = {&small_avx512<K + 1>...};
    if (isa == Isa::avx512) return avx512[k - 1];
    if (isa == Isa::avx2) return avx2[k - 1];
#endif
    (void)isa;
    return baseline[k - 1];
}

// o[0:len] = (in[0] + in[1] + ... + in[k-1]) / k at lo..lo+len, clients in order, in float32.
FEDACTORS_INLINE void mean_block_body(const float* const* in, std::size_t k, std::size_t lo,
                                      std::size_t len, float* __restrict o) {
    const float* __restrict x = in[0] + lo;
    for (std::size_t i = 0; i < len; ++i) o[i] = x[i];
    for (std::size_t j = 1; j < k; ++j) {
        const float* __restrict xj = in[j] + lo;
        for (std::size_t i = 0; i < len; ++i) o[i] += xj[i];
    }
    const float count = static_cast<float>(k);
    for (std::size_t i = 0; i < len; ++i) o[i] /= count;
}

FEDACTORS_MULTIVERSIONED(void, mean_block, mean_block_body,
                         (const float* const* in, std::size_t k, std::size_t lo, std::size_t len,
                          float* __restrict o),
                         (in, k, lo, len, o))

}  // namespace detail

// out[i] = mean of the values ranked first..last (0-based, ascending) among in[0][i] ..
// in[k-1][i], summed in rank order in float32 and divided by last - first + 1 in float32; NaN
// if any of the k values is NaN. With first = 0 and last = k - 1 this is the plain mean, summed
// in client order instead (no sort needed). Preconditions (checked by the caller): 1 <= k <
// 2^32; first <= last < k; in[j] and out hold n floats each; out overlaps no input. Allocates
// threads * k * robust_width(k) floats of scratch and the network. Same bytes at any thread
// count and with every isa (which must be supported).
inline void ranked_mean(const float* const* in, std::size_t k, std::size_t n, std::size_t first,
                        std::size_t last, float* out, int threads, Isa isa = Isa::automatic) {
    isa = resolve_isa(isa);
    const int nt = detail::resolve_threads(threads);
    if (first == 0 && last + 1 == k) {
        const auto block = detail::mean_block(isa);
        const auto blocks = static_cast<std::ptrdiff_t>(detail::num_blocks(n));
#pragma omp parallel for schedule(static) num_threads(nt) if (blocks > 1)
        for (std::ptrdiff_t b = 0; b < blocks; ++b) {
            const std::size_t lo = static_cast<std::size_t>(b) * kBlock;
            block(in, k, lo, lo + kBlock < n ? kBlock : n - lo, out + lo);
        }
        return;
    }
    if (k <= detail::kSmallK) {
        const auto block = detail::small_fn(k, isa, std::make_index_sequence<detail::kSmallK>{});
        const auto blocks = static_cast<std::ptrdiff_t>(detail::num_blocks(n));
#pragma omp parallel for schedule(static) num_threads(nt) if (blocks > 1)
        for (std::ptrdiff_t b = 0; b < blocks; ++b) {
            const std::size_t lo = static_cast<std::size_t>(b) * kBlock;
            block(in, lo, lo + kBlock < n ? kBlock : n - lo, first, last, out + lo);
        }
        return;
    }
    const auto net = sorting_network(k, first, last);
    const std::size_t width = detail::robust_width(k);
    const auto blocks = static_cast<std::ptrdiff_t>((n + width - 1) / width);
    // Per thread: k rows of width floats, then one spare row for the tail block's output.
    const std::size_t per_thread = (k + 1) * width;
    std::vector<float> scratch(static_cast<std::size_t>(nt) * per_thread);
    const auto gather = detail::gather(isa);
    const auto network = detail::network(isa);
    const auto reduce = detail::reduce(isa);
#pragma omp parallel num_threads(nt) if (blocks > 1)
    {
        float* rows = scratch.data() + static_cast<std::size_t>(omp_get_thread_num()) * per_thread;
        float* spare = rows + k * width;
        alignas(64) std::uint32_t nan[detail::kMaxWidth];
#pragma omp for schedule(static)
        for (std::ptrdiff_t b = 0; b < blocks; ++b) {
            const std::size_t lo = static_cast<std::size_t>(b) * width;
            const std::size_t len = lo + width < n ? width : n - lo;
            gather(in, k, lo, len, width, rows, nan);
            network(net.data(), net.size(), width, rows);
            // Whole rows, so every loop runs over whole vectors; the tail block via `spare`.
            reduce(rows, width, first, last, nan, len == width ? out + lo : spare);
            if (len < width) std::copy(spare, spare + len, out + lo);
        }
    }
}

// Coordinate-wise median: the middle value, or for even k the float32 (a + b) / 2 of the two
// middle ones (as np.median computes it); NaN where any value is NaN.
inline void median(const float* const* in, std::size_t k, std::size_t n, float* out, int threads,
                   Isa isa = Isa::automatic) {
    ranked_mean(in, k, n, (k - 1) / 2, k / 2, out, threads, isa);
}

// Coordinate-wise trimmed mean dropping the `trim` smallest and `trim` largest values (2 * trim
// < k): the mean of the rest in ascending order, or the plain mean in client order if trim == 0.
inline void trimmed_mean(const float* const* in, std::size_t k, std::size_t n, std::size_t trim,
                         float* out, int threads, Isa isa = Isa::automatic) {
    ranked_mean(in, k, n, trim, k - 1 - trim, out, threads, isa);
}

}  // namespace fedactors
