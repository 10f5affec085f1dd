// FedAvg's weighted sum, exact and order-independent: plain C++17 + OpenMP, no Python, the caller
// owns memory.
//
// A float sum rounds after every term, so its bytes depend on the order the terms come in, and a
// sum made of partial sums (one per host) depends on who summed what. Here every term is rounded
// once, on its own, to a fixed grid, and the grid values are added as integers:
//
//   term(a, x) = round(a * x * 2^kExactBits) as int64     (a: the client's weight, x: one float)
//   acc[i]    += term(a, x[i])                            (exact: integer addition)
//   out[i]     = float(acc[i] * 2^-kExactBits * factor)   (one rounding to float, with factor 1)
//
// Integer addition is associative, so acc holds the same integers whatever order the clients come
// in and however they are grouped into partial sums (which are added the same way), and the result
// has the same bytes. The product a * x is a double (a: 53 bits, x: 24; rounded once, the same
// way wherever it is computed); the grid is 2^-32 (2.3e-10), so a term carries an absolute error
// below 1.2e-10, smaller than a float's spacing at 1e-3 (1.2e-10 at 2^-10 .. 2^-9, growing with
// the value).
//
// Range: every term must satisfy |a * x| < kExactLimit (2^18 = 262,144). With weights that add up
// to at most 1 (each client's examples over the round's), the sum then stays below 2^50 in grid
// units, which is why the rounding and the conversions below can use the 1.5 * 2^52 trick: adding
// it to a double below 2^51 in magnitude leaves the integer nearest to it (ties to even, IEEE's
// default) in the low mantissa bits, where an integer subtraction reads it. That vectorises with
// SSE2, AVX2 and AVX-512F alike (a double-to-int64 conversion instruction needs AVX-512DQ).
//
// The kernels hold the accumulator to that range rather than trust their caller: an acc value
// must stay in [-kAccLimit, kAccLimit) (2^51), where the conversion back is exact. exact_add and
// exact_merge tell whether a sum would take one past it (shares adding up to more than 1: a
// client added twice, a wrong total) and exact_result whether it holds one, so the binding
// refuses them; integer additions run in uint64, whose wrap-around is defined (int64's overflow
// is not) and gives the same bits wherever int64 would not overflow.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <omp.h>

#include "isa.hpp"
#include "kernels.hpp"

namespace fedactors {

inline constexpr int kExactBits = 32;
inline constexpr double kExactLimit = 262144.0;  // 2^18: |a * x| must stay below it
inline constexpr std::uint64_t kAccLimit = std::uint64_t{1} << 51;  // |acc[i]| must stay below it

namespace detail {

inline constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52

FEDACTORS_INLINE std::int64_t magic_bits() {
    std::int64_t bits;
    std::memcpy(&bits, &kMagic, sizeof bits);
    return bits;
}

// Non-zero iff an accumulator value v (as uint64 bits) is outside [-kAccLimit, kAccLimit): an add and a
// shift, OR-ed over a block (cheaper in the vector units than counting).
FEDACTORS_INLINE std::uint64_t acc_past(std::uint64_t v) { return (v + kAccLimit) >> 52; }

// How many of x[0:len] give a term outside the range (or are NaN or infinite: the comparison
// is false for NaN), for a scaled weight s = a * 2^kExactBits and limit = kExactLimit * 2^kExactBits.
FEDACTORS_INLINE std::size_t exact_out_of_range_body(const float* __restrict x, double s, double limit,
                                                     std::size_t len) {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < len; ++i) bad += !(std::fabs(s * static_cast<double>(x[i])) < limit);
    return bad;
}

// acc[0:len] += sign * term(a, x[i]), s = a * 2^kExactBits (a power-of-two scaling: exact); returns
// non-zero iff an acc value was, or is now, out of range (x in range: |term| < 2^50, so no wrap-around
// hides one).
FEDACTORS_INLINE std::uint64_t exact_add_body(const float* __restrict x, double s, bool subtract, std::size_t len,
                                            std::int64_t* __restrict acc) {
    const auto mb = static_cast<std::uint64_t>(magic_bits());
    std::uint64_t bad = 0;
    if (subtract) {
        for (std::size_t i = 0; i < len; ++i) {
            const double r = s * static_cast<double>(x[i]) + kMagic;
            std::uint64_t bits;
            std::memcpy(&bits, &r, sizeof bits);
            const auto old = static_cast<std::uint64_t>(acc[i]), now = old - (bits - mb);
            bad |= acc_past(old) | acc_past(now);
            acc[i] = static_cast<std::int64_t>(now);
        }
    } else {
        for (std::size_t i = 0; i < len; ++i) {
            const double r = s * static_cast<double>(x[i]) + kMagic;
            std::uint64_t bits;
            std::memcpy(&bits, &r, sizeof bits);
            const auto old = static_cast<std::uint64_t>(acc[i]), now = old + (bits - mb);
            bad |= acc_past(old) | acc_past(now);
            acc[i] = static_cast<std::int64_t>(now);
        }
    }
    return bad;
}

// acc[0:len] +(-)= other[0:len] in uint64; returns non-zero iff a value of acc, other or their sum is out
// of range.
FEDACTORS_INLINE std::uint64_t exact_merge_body(const std::int64_t* __restrict other, bool subtract, std::size_t len,
                                                std::int64_t* __restrict acc) {
    std::uint64_t bad = 0;
    for (std::size_t i = 0; i < len; ++i) {
        const auto a = static_cast<std::uint64_t>(acc[i]), o = static_cast<std::uint64_t>(other[i]);
        const std::uint64_t now = subtract ? a - o : a + o;
        bad |= acc_past(a) | acc_past(o) | acc_past(now);
        acc[i] = static_cast<std::int64_t>(now);
    }
    return bad;
}

// out[0:len] = float(double(acc[i]) * scale), scale = factor * 2^-kExactBits; returns non-zero iff an
// acc value is out of range (its out is meaningless).
FEDACTORS_INLINE std::uint64_t exact_result_body(const std::int64_t* __restrict acc, double scale, std::size_t len,
                                                 float* __restrict out) {
    const auto mb = static_cast<std::uint64_t>(magic_bits());
    std::uint64_t bad = 0;
    for (std::size_t i = 0; i < len; ++i) {
        const auto a = static_cast<std::uint64_t>(acc[i]);
        bad |= acc_past(a);
        const std::uint64_t bits = a + mb;
        double d;
        std::memcpy(&d, &bits, sizeof d);
        out[i] = static_cast<float>((d - kMagic) * scale);
    }
    return bad;
}

FEDACTORS_MULTIVERSIONED(std::size_t, exact_out_of_range, exact_out_of_range_body,
                         (const float* __restrict x, double s, double limit, std::size_t len), (x, s, limit, len))
FEDACTORS_MULTIVERSIONED(std::uint64_t, exact_add_block, exact_add_body,
                         (const float* __restrict x, double s, bool subtract, std::size_t len,
                          std::int64_t* __restrict acc),
                         (x, s, subtract, len, acc))
FEDACTORS_MULTIVERSIONED(std::uint64_t, exact_merge_block, exact_merge_body,
                         (const std::int64_t* __restrict other, bool subtract, std::size_t len,
                          std::int64_t* __restrict acc),
                         (other, subtract, len, acc))
FEDACTORS_MULTIVERSIONED(std::uint64_t, exact_result_block, exact_result_body,
                         (const std::int64_t* __restrict acc, double scale, std::size_t len, float* __restrict out),
                         (acc, scale, len, out))

}  // namespace detail

// What exact_add returns: the values left out, and whether the accumulator left its range.
struct ExactCounts {
    std::size_t out_of_range = 0;  // x values out of range, or NaN, or infinite (their blocks left out)
    bool acc_overflow = false;     // an acc value was, or the sum took it, past kAccLimit
};

// acc[i] += term(a, x[i]) for i in [0, n), block by block; a block holding a value out of range
// (or NaN, or infinite) is left out. Returns how many values were out of range (0 means x was
// added whole) and whether an acc value is past kAccLimit. A caller that got a non-zero count
// calls again with `subtract`, which takes out exactly what was added (the same blocks pass the
// same test; uint64 arithmetic undoes itself), leaving acc as it was. One read of each block of x
// from memory (the test reads it into cache, the sum from there).
inline ExactCounts exact_add(std::int64_t* acc, const float* x, double a, std::size_t n, bool subtract, int threads,
                             Isa isa = Isa::automatic) {
    const double s = std::ldexp(a, kExactBits);
    const double limit = std::ldexp(kExactLimit, kExactBits);
    const auto test = detail::exact_out_of_range(resolve_isa(isa));
    const auto add = detail::exact_add_block(resolve_isa(isa));
    const auto blocks = static_cast<std::ptrdiff_t>(detail::num_blocks(n));
    const int nt = detail::resolve_threads(threads);
    std::size_t bad = 0;
    std::uint64_t overflow = 0;
#pragma omp parallel for schedule(static) num_threads(nt) if (blocks > 1) reduction(+ : bad) reduction(| : overflow)
    for (std::ptrdiff_t b = 0; b < blocks; ++b) {
        const std::size_t lo = static_cast<std::size_t>(b) * kBlock;
        const std::size_t len = lo + kBlock < n ? kBlock : n - lo;
        const std::size_t here = test(x + lo, s, limit, len);
        if (here == 0) overflow |= add(x + lo, s, subtract, len, acc + lo);
        bad += here;
    }
    return {bad, overflow != 0};
}

// acc[i] +(-)= other[i] (a partial sum of other clients: integer addition, exact and associative);
// returns whether a value of acc, other or the sum is past kAccLimit. A caller that got true calls
// again with `subtract` to leave acc as it was.
inline bool exact_merge(std::int64_t* acc, const std::int64_t* other, std::size_t n, bool subtract,
                               int threads, Isa isa = Isa::automatic) {
    const auto merge = detail::exact_merge_block(resolve_isa(isa));
    const auto blocks = static_cast<std::ptrdiff_t>(detail::num_blocks(n));
    const int nt = detail::resolve_threads(threads);
    std::uint64_t bad = 0;
#pragma omp parallel for schedule(static) num_threads(nt) if (blocks > 1) reduction(| : bad)
    for (std::ptrdiff_t b = 0; b < blocks; ++b) {
        const std::size_t lo = static_cast<std::size_t>(b) * kBlock;
        bad |= merge(other + lo, subtract, lo + kBlock < n ? kBlock : n - lo, acc + lo);
    }
    return bad != 0;
}

// out[i] = float(acc[i] * 2^-kExactBits * factor): the sum with one rounding to float (factor 1),
// or rescaled first (FedAvg over fewer clients than the weights were made for). Returns whether an
// acc value is past kAccLimit (then out is not the sum).
inline bool exact_result(const std::int64_t* acc, double factor, std::size_t n, float* out, int threads,
                                Isa isa = Isa::automatic) {
    const double scale = std::ldexp(factor, -kExactBits);
    const auto block = detail::exact_result_block(resolve_isa(isa));
    const auto blocks = static_cast<std::ptrdiff_t>(detail::num_blocks(n));
    const int nt = detail::resolve_threads(threads);
    std::uint64_t bad = 0;
#pragma omp parallel for schedule(static) num_threads(nt) if (blocks > 1) reduction(| : bad)
    for (std::ptrdiff_t b = 0; b < blocks; ++b) {
        const std::size_t lo = static_cast<std::size_t>(b) * kBlock;
        bad |= block(acc + lo, scale, lo + kBlock < n ? kBlock : n - lo, out + lo);
    }
    return bad != 0;
}

}  // namespace fedactors
