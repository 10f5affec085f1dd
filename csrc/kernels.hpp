// Aggregation kernels: plain C++17 + OpenMP, no Python. The caller owns all memory.
//
// Every kernel walks `n` in fixed blocks of kBlock floats. A block is the unit of work given
// to a thread, and within a block each element sums the clients in the order given, so the
// result does not depend on how many threads run or which thread takes which block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include <omp.h>

#include "isa.hpp"

namespace fedactors {

// 16,384 floats = 64 KiB per input: each input is read in runs of 64 KiB, long enough for the
// hardware prefetchers to stream it, while the output block (and the 128 KiB float64
// accumulator) stays in L2. Measured on a Zen 3 VM (AVX2, 10 x 1.66 M floats, interleaved
// repeats, against a linear read of the inputs): 512-float blocks ran at 1.37-1.39x that read
// at 1 and 2 threads, and so did a read with the same 512-float blocking (2 KiB runs, half a
// page, defeat the prefetchers); 4,096 at 1.08-1.10x; 16,384-65,536 at 0.97-1.06x.
// Non-temporal stores of the output block measured no better.
inline constexpr std::size_t kBlock = 16384;

enum class Accumulate { float32, float64 };

namespace detail {

inline std::size_t num_blocks(std::size_t n) { return (n + kBlock - 1) / kBlock; }

inline int resolve_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

// fn(lo, len) for every kBlock-float block of [0, n), the blocks shared among the threads (static
// schedule: the same blocks whatever the timing). A block's result must depend on it alone.
template <typename Fn>
inline void for_each_block(std::size_t n, int threads, Fn&& fn) {
    const auto blocks = static_cast<std::ptrdiff_t>(num_blocks(n));
    const int nt = resolve_threads(threads);
#pragma omp parallel for schedule(static) num_threads(nt) if (blocks > 1)
    for (std::ptrdiff_t b = 0; b < blocks; ++b) {
        const std::size_t lo = static_cast<std::size_t>(b) * kBlock;
        fn(lo, lo + kBlock < n ? kBlock : n - lo);
    }
}

// o[0:len] (+)= sum_j float(w[j] / total) * in[j][lo:lo+len], clients in order, rounding to float
// after each term. With `init` the sum starts from the first term (o is only written); without
// it, from o's values, so folding clients in over several calls gives the one-call bytes.
FEDACTORS_INLINE void block_f32_body(const float* const* in, const double* w, double total, std::size_t k,
                      bool init, std::size_t lo, std::size_t len, float* __restrict o) {
    std::size_t j = 0;
    if (init) {
        const float* __restrict x = in[0] + lo;
        const float a0 = static_cast<float>(w[0] / total);
        for (std::size_t i = 0; i < len; ++i) o[i] = a0 * x[i];
        j = 1;
    }
    // Two clients per sweep halve the passes over the output block; the per-element order
    // of operations, ((o + a1*x1) + a2*x2), is the same as one client at a time.
    for (; j + 1 < k; j += 2) {
        const float* __restrict x1 = in[j] + lo;
        const float* __restrict x2 = in[j + 1] + lo;
        const float a1 = static_cast<float>(w[j] / total);
        const float a2 = static_cast<float>(w[j + 1] / total);
        for (std::size_t i = 0; i < len; ++i) o[i] = (o[i] + a1 * x1[i]) + a2 * x2[i];
    }
    if (j < k) {
        const float* __restrict x1 = in[j] + lo;
        const float a1 = static_cast<float>(w[j] / total);
        for (std::size_t i = 0; i < len; ++i) o[i] = o[i] + a1 * x1[i];
    }
}

// As block_f32 but the running sum is a double in `acc` (kBlock long), rounded to float once.
FEDACTORS_INLINE void block_f64_body(const float* const* in, const double* w, double total, std::size_t k,
                      std::size_t lo, std::size_t len, double* __restrict acc,
                      float* __restrict o) {
    const float* __restrict x = in[0] + lo;
    const double a0 = w[0] / total;
    for (std::size_t i = 0; i < len; ++i) acc[i] = a0 * static_cast<double>(x[i]);
    std::size_t j = 1;
    for (; j + 1 < k; j += 2) {
        const float* __restrict x1 = in[j] + lo;
        const float* __restrict x2 = in[j + 1] + lo;
        const double a1 = w[j] / total, a2 = w[j + 1] / total;
        for (std::size_t i = 0; i < len; ++i)
            acc[i] = (acc[i] + a1 * static_cast<double>(x1[i])) + a2 * static_cast<double>(x2[i]);
    }
    if (j < k) {
        const float* __restrict x1 = in[j] + lo;
        const double a1 = w[j] / total;
        for (std::size_t i = 0; i < len; ++i) acc[i] = acc[i] + a1 * static_cast<double>(x1[i]);
    }
    for (std::size_t i = 0; i < len; ++i) o[i] = static_cast<float>(acc[i]);
}

FEDACTORS_MULTIVERSIONED(void, block_f32, block_f32_body,
                         (const float* const* in, const double* w, double total, std::size_t k,
                          bool init, std::size_t lo, std::size_t len, float* __restrict o),
                         (in, w, total, k, init, lo, len, o))
FEDACTORS_MULTIVERSIONED(void, block_f64, block_f64_body,
                         (const float* const* in, const double* w, double total, std::size_t k,
                          std::size_t lo, std::size_t len, double* __restrict acc,
                          float* __restrict o),
                         (in, w, total, k, lo, len, acc, o))

// The float64 sum of in[j][lo:lo+len] over j, every float read once.
FEDACTORS_INLINE double block_read_body(const float* const* in, std::size_t k, std::size_t lo,
                                        std::size_t len) {
    // 32 independent partial sums let the loop vectorise without -ffast-math and hide the
    // add latency; with 8 the read is compute-bound at one thread.
    constexpr int kLanes = 32;
    float part[kLanes] = {};
    for (std::size_t j = 0; j < k; ++j) {
        const float* __restrict x = in[j] + lo;
        std::size_t i = 0;
        for (; i + kLanes <= len; i += kLanes)
            for (int l = 0; l < kLanes; ++l) part[l] += x[i + l];
        for (; i < len; ++i) part[0] += x[i];
    }
    double total = 0.0;
    for (float p : part) total += p;
    return total;
}

FEDACTORS_MULTIVERSIONED(double, block_read, block_read_body,
                         (const float* const* in, std::size_t k, std::size_t lo, std::size_t len),
                         (in, k, lo, len))

}  // namespace detail

// out[i] (+)= sum_j float(w[j] / total) * in[j][i], j = 0..k-1 in order, rounding to float after
// each term: FedAvg's float32 sum, folded in a few clients at a time. `init` starts the sum
// (out is only written); otherwise the clients are added to what out holds. Folding clients
// 0..a-1 with init and then a..k-1 without gives the bytes of one weighted_average call over
// all k, if `total` is the sum of all k weights added in order in double, as weighted_average
// computes it. Preconditions as for weighted_average, and total finite and > 0. No allocation.
inline void weighted_fold(const float* const* in, const double* w, std::size_t k, double total, bool init,
                          std::size_t n, float* out, int threads, Isa isa = Isa::automatic) {
    const auto block = detail::block_f32(resolve_isa(isa));
    detail::for_each_block(n, threads, [&](std::size_t lo, std::size_t len) {
        block(in, w, total, k, init, lo, len, out + lo);
    });
}

// out[i] = sum_j (w[j] / sum(w)) * in[j][i], j = 0..k-1 in order.
// Preconditions (checked by the caller): k >= 1; w[j] finite and >= 0 with a positive, finite
// sum; in[j] and out hold n floats each and out overlaps no input. threads <= 0: OpenMP default.
// The weights are normalised in double; `acc` picks float32 accumulation (one rounding per
// client, the default; no heap allocation) or float64 (one rounding per element, same traffic;
// a kBlock-double accumulator per thread, on the heap: 128 KiB is too much for some threads'
// stacks). `isa` picks the compiled variant (isa.hpp); all give the same bytes. It must be
// supported.
inline void weighted_average(const float* const* in, const double* w, std::size_t k,
                             std::size_t n, float* out, int threads,
                             Accumulate acc = Accumulate::float32, Isa isa = Isa::automatic) {
    double total = 0.0;
    for (std::size_t j = 0; j < k; ++j) total += w[j];
    if (acc == Accumulate::float32) {
        weighted_fold(in, w, k, total, true, n, out, threads, isa);
        return;
    }
    const auto block = detail::block_f64(resolve_isa(isa));
    const auto blocks = static_cast<std::ptrdiff_t>(detail::num_blocks(n));
    const int nt = detail::resolve_threads(threads);
#pragma omp parallel num_threads(nt) if (blocks > 1)
    {
        const std::unique_ptr<double[]> buf(new double[kBlock]);  // per thread
#pragma omp for schedule(static)
        for (std::ptrdiff_t b = 0; b < blocks; ++b) {
            const std::size_t lo = static_cast<std::size_t>(b) * kBlock;
            const std::size_t len = lo + kBlock < n ? kBlock : n - lo;
            block(in, w, total, k, lo, len, buf.get(), out + lo);
        }
    }
}

// Sum of every float of the k inputs, each read once, in float64: the streaming-read floor for
// the benchmarks. It reads the way memory is fastest to read, not the way the kernels do: each
// thread takes one contiguous slice of [0, n) and reads that slice of every input from start to
// end, one input after another, so the floor does not inherit any weakness of the kernels'
// blocking. Same instruction-set variants as the kernels, no output.
inline double stream_read(const float* const* in, std::size_t k, std::size_t n, int threads,
                          Isa isa = Isa::automatic) {
    const int nt = detail::resolve_threads(threads);
    const auto read = detail::block_read(resolve_isa(isa));
    double total = 0.0;
#pragma omp parallel num_threads(nt) if (n > kBlock) reduction(+ : total)
    {
        const auto parts = static_cast<std::size_t>(omp_get_num_threads());
        const auto part = static_cast<std::size_t>(omp_get_thread_num());
        const std::size_t lo = n * part / parts, hi = n * (part + 1) / parts;
        for (std::size_t j = 0; j < k; ++j) total += read(in + j, 1, lo, hi - lo);
    }
    return total;
}

// How many of x[0:n] are NaN or +-infinity (all exponent bits set). An integer test on the
// bits: exact under any floating-point mode, where a sum of the values could overflow to inf.
inline std::size_t count_nonfinite(const float* x, std::size_t n, int threads) {
    const auto blocks = static_cast<std::ptrdiff_t>(detail::num_blocks(n));
    const int nt = detail::resolve_threads(threads);
    std::size_t count = 0;
#pragma omp parallel for schedule(static) num_threads(nt) if (blocks > 1) reduction(+ : count)
    for (std::ptrdiff_t b = 0; b < blocks; ++b) {
        const std::size_t lo = static_cast<std::size_t>(b) * kBlock;
        const std::size_t hi = lo + kBlock < n ? lo + kBlock : n;
        for (std::size_t i = lo; i < hi; ++i) {
            std::uint32_t bits;
            std::memcpy(&bits, x + i, sizeof bits);
            count += (bits & 0x7f800000u) == 0x7f800000u;
        }
    }
    return count;
}

}  // namespace fedactors
