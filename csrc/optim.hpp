// Server optimizers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021; FedAvgM after
// Hsu et al. 2019) as one fused pass over the flat weights: plain C++17 + OpenMP, no Python.
//
// With x the global weights and a the round's aggregate (FedAvg's average, or a robust one),
// d = a - x is the pseudo-gradient's negative, and per element, in float32:
//
//   fedavgm:    m = beta1 * m + d                                         x' = x + lr * m
//   fedadagrad: m = beta1 * m + (1 - beta1) * d;  v = v + d * d           x' = x + lr * m / (sqrt(v) + tau)
//   fedadam:    m = beta1 * m + (1 - beta1) * d;  v = beta2 * v + (1 - beta2) * d * d
//   fedyogi:    m = beta1 * m + (1 - beta1) * d;  v = v - (1 - beta2) * d * d * sign(v - d * d)
//
// (no bias correction, as in the paper). Every element is independent, the same float
// operations run in the same order in every instruction-set variant (no FMA: CMakeLists.txt),
// so the bytes do not depend on thread count or ISA, and equal NumPy's doing the same steps.
// One pass reads a, x, m (and v) once and writes m (and v) and x' once. The caller owns memory.
#pragma once

#include <cmath>
#include <cstddef>

#include <omp.h>

#include "isa.hpp"
#include "kernels.hpp"

namespace fedactors {

enum class ServerOpt { fedavgm, fedadagrad, fedadam, fedyogi };

struct ServerHyper {
    float lr, beta1, beta2, tau;
};

namespace detail {

FEDACTORS_INLINE void step_block_body(ServerOpt opt, ServerHyper h, const float* __restrict a,
                                      const float* __restrict x, float* __restrict m, float* __restrict v,
                                      float* __restrict out, std::size_t len) {
    const float b1 = h.beta1, c1 = 1.0f - h.beta1, b2 = h.beta2, c2 = 1.0f - h.beta2;
    switch (opt) {
        case ServerOpt::fedavgm:
            for (std::size_t i = 0; i < len; ++i) {
                const float d = a[i] - x[i];
                const float mi = b1 * m[i] + d;
                m[i] = mi;
                out[i] = x[i] + h.lr * mi;
            }
            break;
        case ServerOpt::fedadagrad:
            for (std::size_t i = 0; i < len; ++i) {
                const float d = a[i] - x[i];
                const float mi = b1 * m[i] + c1 * d;
                const float vi = v[i] + d * d;
                m[i] = mi;
                v[i] = vi;
                out[i] = x[i] + h.lr * mi / (std::sqrt(vi) + h.tau);
            }
            break;
        case ServerOpt::fedadam:
            for (std::size_t i = 0; i < len; ++i) {
                const float d = a[i] - x[i];
                const float mi = b1 * m[i] + c1 * d;
                const float vi = b2 * v[i] + c2 * (d * d);
                m[i] = mi;
                v[i] = vi;
                out[i] = x[i] + h.lr * mi / (std::sqrt(vi) + h.tau);
            }
            break;
        case ServerOpt::fedyogi:
            for (std::size_t i = 0; i < len; ++i) {
                const float d = a[i] - x[i];
                const float mi = b1 * m[i] + c1 * d;
                const float dd = d * d;
                const float diff = v[i] - dd;
                const float sign = diff > 0.0f ? 1.0f : (diff < 0.0f ? -1.0f : 0.0f);
                const float vi = v[i] - c2 * dd * sign;
                m[i] = mi;
                v[i] = vi;
                out[i] = x[i] + h.lr * mi / (std::sqrt(vi) + h.tau);
            }
            break;
    }
}

FEDACTORS_MULTIVERSIONED(void, step_block, step_block_body,
                         (ServerOpt opt, ServerHyper h, const float* __restrict a, const float* __restrict x,
                          float* __restrict m, float* __restrict v, float* __restrict out, std::size_t len),
                         (opt, h, a, x, m, v, out, len))

}  // namespace detail

// out = the new global weights; m (and v, unless fedavgm, where it may be null) updated in
// place. a, x, m, v, out hold n floats each and no two of them overlap (out is a new buffer:
// a and x may be read-only object-store arrays). threads <= 0: OpenMP's default.
inline void server_step(ServerOpt opt, ServerHyper h, const float* a, const float* x, float* m, float* v,
                        float* out, std::size_t n, int threads, Isa isa = Isa::automatic) {
    const auto step = detail::step_block(resolve_isa(isa));
    detail::for_each_block(n, threads, [&](std::size_t lo, std::size_t len) {
        step(opt, h, a + lo, x + lo, m + lo, v ? v + lo : nullptr, out + lo, len);
    });
}

}  // namespace fedactors
