// Instruction-set dispatch for the kernels: one portable binary, the widest vectors the CPU has.
//
// The default build targets the x86-64 baseline (SSE2), where the kernels are compute-bound
// (1.3-1.4x the streaming floor at one thread). Each hot block function is therefore compiled
// three times from one always-inline body -- baseline, AVX2, AVX-512F -- and the caller picks one
// per call with `resolve_isa`. The bodies do no FMA contraction (CMakeLists.txt passes
// -ffp-contract=off, and neither variant enables FMA), so every variant performs the same
// float operations in the same order and returns the same bytes; only the vector width differs.
// Other compilers and CPUs get the baseline body alone.
#pragma once

#include <string>
#include <vector>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FEDACTORS_MULTIVERSION 1
#define FEDACTORS_TARGET(isa) __attribute__((target(isa)))
#define FEDACTORS_INLINE inline __attribute__((always_inline))
#else
#define FEDACTORS_MULTIVERSION 0
#define FEDACTORS_TARGET(isa)
#if defined(__GNUC__) || defined(__clang__)
#define FEDACTORS_INLINE inline __attribute__((always_inline))
#else
#define FEDACTORS_INLINE inline
#endif
#endif

namespace fedactors {

enum class Isa { automatic, baseline, avx2, avx512 };

inline const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::baseline: return "baseline";
        case Isa::avx2: return "avx2";
        case Isa::avx512: return "avx512";
        default: return "auto";
    }
}

// Whether this build and this CPU (and OS: libgcc checks XCR0) can run `isa`.
inline bool isa_supported(Isa isa) {
    switch (isa) {
        case Isa::automatic:
        case Isa::baseline: return true;
#if FEDACTORS_MULTIVERSION
        case Isa::avx2: __builtin_cpu_init(); return __builtin_cpu_supports("avx2");
        case Isa::avx512: __builtin_cpu_init(); return __builtin_cpu_supports("avx512f");
#endif
        default: return false;
    }
}

// `automatic` becomes the widest supported variant; others are returned as given (the caller
// checks isa_supported first).
inline Isa resolve_isa(Isa isa) {
    if (isa != Isa::automatic) return isa;
    if (isa_supported(Isa::avx512)) return Isa::avx512;
    if (isa_supported(Isa::avx2)) return Isa::avx2;
    return Isa::baseline;
}

inline std::vector<std::string> available_isas() {
    std::vector<std::string> names;
    for (Isa isa : {Isa::baseline, Isa::avx2, Isa::avx512})
        if (isa_supported(isa)) names.emplace_back(isa_name(isa));
    return names;
}

}  // namespace fedactors

// Defines NAME##_baseline, NAME##_avx2, NAME##_avx512 (each calling BODY, an always-inline
// function, so the body is vectorised for that target) and NAME(Isa), returning the pointer.
// PARAMS and ARGS are parenthesised parameter and argument lists.
#if FEDACTORS_MULTIVERSION
#define FEDACTORS_MULTIVERSIONED(RET, NAME, BODY, PARAMS, ARGS)                          \
    inline RET NAME##_baseline PARAMS { return BODY ARGS; }                            \
    FEDACTORS_TARGET("avx2") inline RET NAME##_avx2 PARAMS { return BODY ARGS; }       \
    FEDACTORS_TARGET("avx512f") inline RET NAME##_avx512 PARAMS { return BODY ARGS; }  \
    inline auto NAME(::fedactors::Isa isa) -> RET(*) PARAMS {                         \
        switch (isa) {                                                                 \
            case ::fedactors::Isa::avx512: return &NAME##_avx512;                      \
            case ::fedactors::Isa::avx2: return &NAME##_avx2;                          \
            default: return &NAME##_baseline;                                          \
        }                                                                              \
    }
#else
#define FEDACTORS_MULTIVERSIONED(RET, NAME, BODY, PARAMS, ARGS) \
    inline RET NAME##_baseline PARAMS { return BODY ARGS; }   \
    inline auto NAME(::fedactors::Isa) -> RET(*) PARAMS { return &NAME##_baseline; }
#endif
