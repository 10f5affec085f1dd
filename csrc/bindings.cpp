// Python bindings for kernels.hpp. Validate, don't convert: every argument is checked and
// rejected with a ValueError naming it; nothing is silently copied or cast (py::array_t's
// default forcecast would turn a float64 buffer into a fresh float32 copy).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "clip.hpp"
#include "distance.hpp"
#include "exact.hpp"
#include "kernels.hpp"
#include "optim.hpp"
#include "quantize.hpp"
#include "robust.hpp"

namespace py = pybind11;

namespace {

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
    std::ostringstream msg;
    (msg << ... << parts);
    throw py::value_error(msg.str());
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Checks that `obj` is a float32, 1-D, C-contiguous, aligned NumPy array; `what` names it.
py::array check_vector(const py::handle& obj, const std::string& what) {
    if (!py::isinstance<py::array>(obj))
        fail(what, " is a ", py::str(py::type::of(obj).attr("__name__")).cast<std::string>(),
             ", expected a numpy.ndarray of float32");
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(py::dtype::of<float>()))
        fail(what, " has dtype ", dtype_name(a), ", expected float32");
    if (a.ndim() != 1)
        fail(what, " has ", a.ndim(), " dimensions, expected a 1-D array");
    if (!(a.flags() & py::array::c_style))
        fail(what, " is not C-contiguous (a strided view?); pass np.ascontiguousarray(...)");
    if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(float) != 0)
        fail(what, " is not aligned to ", alignof(float), " bytes");
    return a;
}

// The inputs as arrays (kept alive by the caller's vector) and their data pointers.
std::vector<py::array> check_buffers(const py::sequence& buffers) {
    const std::size_t k = py::len(buffers);
    if (k == 0) fail("buffers is empty, expected at least one array");
    std::vector<py::array> arrays;
    arrays.reserve(k);
    for (std::size_t j = 0; j < k; ++j) {
        arrays.push_back(check_vector(buffers[j], "buffer " + std::to_string(j)));
        if (arrays[j].shape(0) != arrays[0].shape(0))
            fail("buffer ", j, " has length ", arrays[j].shape(0), ", expected ",
                 arrays[0].shape(0), " (the length of buffer 0)");
    }
    return arrays;
}

// Each weight finite and >= 0; returns their sum, added in order in double.
double check_each_weight(const std::vector<double>& w, std::size_t k) {
    if (w.size() != k) fail("got ", w.size(), " weights for ", k, " buffers, expected one each");
    double total = 0.0;
    for (std::size_t j = 0; j < k; ++j) {
        if (!std::isfinite(w[j])) fail("weight ", j, " is ", w[j], ", expected a finite number");
        if (w[j] < 0) fail("weight ", j, " is ", w[j], ", expected >= 0");
        total += w[j];
    }
    return total;
}

void check_weights(const std::vector<double>& w, std::size_t k) {
    const double total = check_each_weight(w, k);
    if (total == 0) fail("all weights are zero, expected at least one > 0");
    if (!std::isfinite(total)) fail("the weights sum to ", total, ", expected a finite sum");
}

bool overlaps(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
    const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
    return a_bytes > 0 && b_bytes > 0 && x < y + b_bytes && y < x + a_bytes;
}

bool overlaps(const void* a, const void* b, std::size_t bytes) { return overlaps(a, bytes, b, bytes); }

// "auto" or one of available_isas(); anything else, or an ISA this CPU lacks, is a ValueError.
fedactors::Isa parse_isa(const std::string& name) {
    for (auto isa : {fedactors::Isa::automatic, fedactors::Isa::baseline, fedactors::Isa::avx2,
                     fedactors::Isa::avx512}) {
        if (name != fedactors::isa_name(isa)) continue;
        if (!fedactors::isa_supported(isa))
            fail("isa '", name, "' is not supported by this CPU or build; available: ",
                 py::str(py::cast(fedactors::available_isas())).cast<std::string>());
        return isa;
    }
    fail("isa is '", name, "', expected 'auto', 'baseline', 'avx2' or 'avx512'");
}

std::vector<const float*> pointers(const std::vector<py::array>& arrays) {
    std::vector<const float*> in;
    in.reserve(arrays.size());
    // data(), not mutable_data(): object-store arrays are read-only and that is fine here.
    for (const auto& a : arrays) in.push_back(static_cast<const float*>(a.data()));
    return in;
}

// `out` checked (float32, 1-D, C-contiguous, writeable, the inputs' length, aliasing none of
// them), or a new array if it is None.
py::array output(const py::object& out, const std::vector<py::array>& arrays) {
    const auto n = static_cast<std::size_t>(arrays[0].shape(0));
    if (out.is_none()) return py::array_t<float>(static_cast<py::ssize_t>(n));
    auto result = check_vector(out, "out");
    if (!result.writeable()) fail("out is read-only, expected a writeable array");
    if (static_cast<std::size_t>(result.shape(0)) != n)
        fail("out has length ", result.shape(0), ", expected ", n, " (the buffers' length)");
    for (std::size_t j = 0; j < arrays.size(); ++j)
        if (overlaps(result.data(), arrays[j].data(), n * sizeof(float)))
            fail("out overlaps buffer ", j, "; the output must not alias an input");
    return result;
}

py::array weighted_average(const py::sequence& buffers, const std::vector<double>& weights,
                           const py::object& out, int threads, const std::string& accumulate,
                           const std::string& isa_name) {
    const auto arrays = check_buffers(buffers);
    const std::size_t k = arrays.size();
    const auto n = static_cast<std::size_t>(arrays[0].shape(0));
    check_weights(weights, k);
    fedactors::Accumulate acc;
    if (accumulate == "float32") acc = fedactors::Accumulate::float32;
    else if (accumulate == "float64") acc = fedactors::Accumulate::float64;
    else fail("accumulate is '", accumulate, "', expected 'float32' or 'float64'");
    const auto isa = parse_isa(isa_name);

    auto result = output(out, arrays);
    const auto in = pointers(arrays);
    auto* dst = static_cast<float*>(result.mutable_data());
    {
        py::gil_scoped_release nogil;
        fedactors::weighted_average(in.data(), weights.data(), k, n, dst, threads, acc, isa);
    }
    return result;
}

py::array weighted_fold(const py::sequence& buffers, const std::vector<double>& weights, double total,
                        const py::object& out, bool start, int threads, const std::string& isa_name) {
    const auto arrays = check_buffers(buffers);
    const std::size_t k = arrays.size();
    const auto n = static_cast<std::size_t>(arrays[0].shape(0));
    check_each_weight(weights, k);
    if (!(std::isfinite(total) && total > 0)) fail("total is ", total, ", expected a finite number > 0");
    if (out.is_none()) fail("out is None, expected the float32 array the sum is folded into");
    const auto isa = parse_isa(isa_name);
    auto result = output(out, arrays);
    const auto in = pointers(arrays);
    auto* dst = static_cast<float*>(result.mutable_data());
    {
        py::gil_scoped_release nogil;
        fedactors::weighted_fold(in.data(), weights.data(), k, total, start, n, dst, threads, isa);
    }
    return result;
}

py::array median(const py::sequence& buffers, const py::object& out, int threads,
                 const std::string& isa_name) {
    const auto arrays = check_buffers(buffers);
    const auto isa = parse_isa(isa_name);
    auto result = output(out, arrays);
    const auto in = pointers(arrays);
    const auto n = static_cast<std::size_t>(arrays[0].shape(0));
    auto* dst = static_cast<float*>(result.mutable_data());
    {
        py::gil_scoped_release nogil;
        fedactors::median(in.data(), in.size(), n, dst, threads, isa);
    }
    return result;
}

py::array trimmed_mean(const py::sequence& buffers, double trim_fraction, const py::object& out,
                       int threads, const std::string& isa_name) {
    const auto arrays = check_buffers(buffers);
    // Written so that NaN fails too.
    if (!(trim_fraction >= 0.0 && trim_fraction < 0.5))
        fail("trim_fraction is ", trim_fraction, ", expected a number in [0, 0.5)");
    const auto isa = parse_isa(isa_name);
    auto result = output(out, arrays);
    const auto in = pointers(arrays);
    const std::size_t k = in.size();
    const auto n = static_cast<std::size_t>(arrays[0].shape(0));
    // floor(beta * k) in double, as scipy.stats.trim_mean's int(proportiontocut * nobs).
    const auto trim = static_cast<std::size_t>(trim_fraction * static_cast<double>(k));
    auto* dst = static_cast<float*>(result.mutable_data());
    {
        py::gil_scoped_release nogil;
        fedactors::trimmed_mean(in.data(), k, n, trim, dst, threads, isa);
    }
    return result;
}

double stream_read(const py::sequence& buffers, int threads, const std::string& isa_name) {
    const auto arrays = check_buffers(buffers);
    const auto isa = parse_isa(isa_name);
    const auto in = pointers(arrays);
    const auto n = static_cast<std::size_t>(arrays[0].shape(0));
    py::gil_scoped_release nogil;
    return fedactors::stream_read(in.data(), in.size(), n, threads, isa);
}

std::size_t count_nonfinite(const py::handle& buffer, int threads) {
    const auto a = check_vector(buffer, "buffer");
    const auto* x = static_cast<const float*>(a.data());
    const auto n = static_cast<std::size_t>(a.shape(0));
    py::gil_scoped_release nogil;
    return fedactors::count_nonfinite(x, n, threads);
}

// A writeable float32 vector of length n (for state updated in place); `what` names it.
py::array check_state(const py::handle& obj, std::size_t n, const std::string& what) {
    auto a = check_vector(obj, what);
    if (!a.writeable()) fail(what, " is read-only, expected a writeable array (it is updated in place)");
    if (static_cast<std::size_t>(a.shape(0)) != n)
        fail(what, " has length ", a.shape(0), ", expected ", n, " (the weights' length)");
    return a;
}

py::array server_step(const std::string& method, const py::handle& aggregate, const py::handle& weights,
                      const py::handle& m, const py::object& v, double lr, double beta1, double beta2, double tau,
                      int threads, const std::string& isa_name) {
    fedactors::ServerOpt opt;
    if (method == "fedavgm") opt = fedactors::ServerOpt::fedavgm;
    else if (method == "fedadagrad") opt = fedactors::ServerOpt::fedadagrad;
    else if (method == "fedadam") opt = fedactors::ServerOpt::fedadam;
    else if (method == "fedyogi") opt = fedactors::ServerOpt::fedyogi;
    else fail("method is '", method, "', expected 'fedavgm', 'fedadagrad', 'fedadam' or 'fedyogi'");
    const auto a = check_vector(aggregate, "aggregate");
    const auto x = check_vector(weights, "weights");
    const auto n = static_cast<std::size_t>(x.shape(0));
    if (static_cast<std::size_t>(a.shape(0)) != n)
        fail("aggregate has length ", a.shape(0), ", expected ", n, " (the weights' length)");
    auto ma = check_state(m, n, "m");
    py::array va;
    const bool needs_v = opt != fedactors::ServerOpt::fedavgm;
    if (needs_v) {
        if (v.is_none()) fail("v is None, expected the second-moment array for ", method);
        va = check_state(v, n, "v");
    }
    for (const double* value : {&lr, &beta1, &beta2, &tau})
        if (!std::isfinite(*value)) fail("the hyper-parameters must be finite numbers");
    if (!(lr > 0)) fail("lr is ", lr, ", expected > 0");
    if (!(beta1 >= 0 && beta1 < 1)) fail("beta1 is ", beta1, ", expected a number in [0, 1)");
    if (!(beta2 >= 0 && beta2 < 1)) fail("beta2 is ", beta2, ", expected a number in [0, 1)");
    if (needs_v && !(tau > 0)) fail("tau is ", tau, ", expected > 0");
    const auto isa = parse_isa(isa_name);
    const std::size_t bytes = n * sizeof(float);
    std::vector<std::pair<const void*, const char*>> named = {{a.data(), "aggregate"}, {x.data(), "weights"},
                                                              {ma.data(), "m"}};
    if (needs_v) named.emplace_back(va.data(), "v");
    for (std::size_t i = 0; i < named.size(); ++i)
        for (std::size_t j = i + 1; j < named.size(); ++j)
            if (overlaps(named[i].first, named[j].first, bytes)) fail(named[i].second, " overlaps ", named[j].second);
    py::array_t<float> result(static_cast<py::ssize_t>(n));
    const fedactors::ServerHyper h{static_cast<float>(lr), static_cast<float>(beta1), static_cast<float>(beta2),
                                   static_cast<float>(tau)};
    auto* vp = needs_v ? static_cast<float*>(va.mutable_data()) : nullptr;
    {
        py::gil_scoped_release nogil;
        fedactors::server_step(opt, h, static_cast<const float*>(a.data()), static_cast<const float*>(x.data()),
                               static_cast<float*>(ma.mutable_data()), vp, result.mutable_data(), n, threads, isa);
    }
    return result;
}

py::array pairwise_sq_distances(const py::sequence& buffers, int threads, const std::string& isa_name,
                                std::size_t max_partials) {
    const auto arrays = check_buffers(buffers);
    const auto isa = parse_isa(isa_name);
    const auto in = pointers(arrays);
    const std::size_t k = in.size();
    const auto n = static_cast<std::size_t>(arrays[0].shape(0));
    py::array_t<double> result({static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(k)});
    auto* dst = result.mutable_data();
    {
        py::gil_scoped_release nogil;
        fedactors::pairwise_sq_distances(in.data(), k, n, dst, threads, isa, max_partials);
    }
    return result;
}

py::tuple clipped_sum(const py::sequence& buffers, const py::handle& weights, double clip, int threads,
                      const std::string& isa_name) {
    const auto x = check_vector(weights, "weights");
    const auto n = static_cast<std::size_t>(x.shape(0));
    if (!(std::isfinite(clip) && clip > 0)) fail("clip is ", clip, ", expected a finite number > 0");
    const auto isa = parse_isa(isa_name);
    std::vector<py::array> arrays;
    for (std::size_t j = 0; j < py::len(buffers); ++j) {
        arrays.push_back(check_vector(buffers[j], "buffer " + std::to_string(j)));
        if (static_cast<std::size_t>(arrays[j].shape(0)) != n)
            fail("buffer ", j, " has length ", arrays[j].shape(0), ", expected ", n, " (the weights' length)");
    }
    const auto in = pointers(arrays);
    py::array_t<float> out(static_cast<py::ssize_t>(n));
    py::array_t<double> norms(static_cast<py::ssize_t>(in.size()));
    auto* dst = out.mutable_data();
    auto* nrm = norms.mutable_data();
    const auto* xp = static_cast<const float*>(x.data());
    {
        py::gil_scoped_release nogil;
        fedactors::clipped_sum(in.data(), in.size(), xp, clip, n, dst, nrm, threads, isa);
    }
    return py::make_tuple(out, norms);
}

void check_bits(int bits, std::size_t block) {
    if (bits != 2 && bits != 4 && bits != 8) fail("bits is ", bits, ", expected 2, 4 or 8");
    if (block == 0 || (block * bits) % 8 != 0 || block > fedactors::kQuantMaxBlock)
        fail("block is ", block, ", expected a positive multiple of ", 8 / bits, " up to ", fedactors::kQuantMaxBlock);
}

void check_length(std::size_t n) {
    if (n >= (std::size_t{1} << 32)) fail("values has ", n, " elements, expected fewer than 2**32");
}

py::tuple quantize(const py::handle& values, int bits, std::size_t block, std::uint64_t key, int threads) {
    check_bits(bits, block);
    const auto x = check_vector(values, "values");
    const auto n = static_cast<std::size_t>(x.shape(0));
    if (n == 0) fail("values is empty");
    check_length(n);
    const std::size_t blocks = (n + block - 1) / block;
    py::array_t<std::uint8_t> codes(static_cast<py::ssize_t>(blocks * block * bits / 8));
    py::array_t<float> lo(static_cast<py::ssize_t>(blocks)), step(static_cast<py::ssize_t>(blocks));
    const auto* xp = static_cast<const float*>(x.data());
    auto* cp = codes.mutable_data();
    auto* lp = lo.mutable_data();
    auto* sp = step.mutable_data();
    std::size_t nonfinite, wide;
    {
        py::gil_scoped_release nogil;
        // A level of NaN or infinity is a cast of NaN to int (undefined): none reaches the kernel.
        nonfinite = fedactors::count_nonfinite(xp, n, threads);
        wide = nonfinite ? 0 : fedactors::quantize(xp, n, bits, block, key, cp, lp, sp, threads);
    }
    if (nonfinite) {
        std::size_t i = 0;
        while (std::isfinite(xp[i])) ++i;
        fail("values[", i, "] is ", xp[i], ", expected a finite number");
    }
    if (wide) {
        std::size_t b = 0;
        while (std::isfinite(sp[b])) ++b;
        const std::size_t first = b * block, last = std::min(n, first + block);
        fail("values[", first, ":", last, "] range from ", lp[b], " to ", *std::max_element(xp + first, xp + last),
             ", more than float32 holds (max - min overflows): no step quantizes them");
    }
    return py::make_tuple(codes, lo, step);
}

py::array_t<float> dequantize(const py::handle& codes, const py::handle& lo, const py::handle& step, std::size_t n,
                              int bits, std::size_t block, int threads) {
    check_bits(bits, block);
    if (!py::isinstance<py::array>(codes)) fail("codes is not a numpy.ndarray of uint8");
    auto c = py::reinterpret_borrow<py::array>(codes);
    if (!c.dtype().equal(py::dtype::of<std::uint8_t>()) || c.ndim() != 1 || !(c.flags() & py::array::c_style))
        fail("codes must be a 1-D C-contiguous uint8 array, got ", dtype_name(c));
    const auto l = check_vector(lo, "lo");
    const auto st = check_vector(step, "step");
    const std::size_t blocks = (n + block - 1) / block;
    if (static_cast<std::size_t>(l.shape(0)) != blocks || static_cast<std::size_t>(st.shape(0)) != blocks)
        fail("lo and step must hold one value per block (", blocks, ")");
    if (static_cast<std::size_t>(c.shape(0)) != blocks * block * bits / 8)
        fail("codes has ", c.shape(0), " bytes, expected ", blocks * block * bits / 8);
    py::array_t<float> out(static_cast<py::ssize_t>(n));
    const auto* cp = static_cast<const std::uint8_t*>(c.data());
    const auto* lp = static_cast<const float*>(l.data());
    const auto* sp = static_cast<const float*>(st.data());
    auto* op = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        fedactors::dequantize(cp, lp, sp, n, bits, block, op, threads);
    }
    return out;
}

void hadamard(const py::handle& values, std::size_t chunk, std::uint64_t key, bool inverse, int threads) {
    auto x = check_vector(values, "values");
    if (!x.writeable()) fail("values is read-only, expected a writeable array (rotated in place)");
    const auto n = static_cast<std::size_t>(x.shape(0));
    bool power_of_4 = chunk >= 4;
    for (std::size_t c = chunk; c > 1 && power_of_4; c /= 4) power_of_4 = c % 4 == 0;
    if (!power_of_4) fail("chunk is ", chunk, ", expected a power of 4 (>= 4)");
    if (n % chunk != 0) fail("values has length ", n, ", expected a multiple of chunk ", chunk);
    check_length(n);
    auto* xp = static_cast<float*>(x.mutable_data());
    {
        py::gil_scoped_release nogil;
        fedactors::hadamard(xp, n, chunk, key, inverse, threads);
    }
}

// `acc` checked: an int64, 1-D, C-contiguous, writeable array of length n (`what` names it).
std::int64_t* check_accumulator(const py::handle& obj, std::size_t n, const std::string& what) {
    if (!py::isinstance<py::array>(obj)) fail(what, " is not a numpy.ndarray, expected one of int64");
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(py::dtype::of<std::int64_t>())) fail(what, " has dtype ", dtype_name(a), ", expected int64");
    if (a.ndim() != 1 || !(a.flags() & py::array::c_style))
        fail(what, " is not a 1-D C-contiguous array");
    if (static_cast<std::size_t>(a.shape(0)) != n) fail(what, " has length ", a.shape(0), ", expected ", n);
    if (!a.writeable()) fail(what, " is read-only, expected a writeable array");
    return static_cast<std::int64_t*>(a.mutable_data());
}

// The one line for an accumulator taken past the exact sum's range (csrc/exact.hpp: kAccLimit).
[[noreturn]] void fail_range(const char* what) {
    fail(what, " would leave the exact sum's range (|acc| < 2**51 grid units): the shares summed add up to more "
         "than 1 (a client added twice, or a wrong total); acc is left as it was");
}

std::size_t exact_add(const py::object& acc, const py::handle& buffer, double weight, bool subtract, int threads,
                      const std::string& isa_name) {
    const auto x = check_vector(buffer, "buffer");
    const auto n = static_cast<std::size_t>(x.shape(0));
    auto* dst = check_accumulator(acc, n, "acc");
    if (!(std::isfinite(weight) && weight >= 0 && weight <= 1))
        fail("weight is ", weight, ", expected a number in [0, 1] (a client's share of the round's examples)");
    if (overlaps(dst, n * sizeof(std::int64_t), x.data(), n * sizeof(float))) fail("acc overlaps buffer");
    const auto isa = parse_isa(isa_name);
    const auto* src = static_cast<const float*>(x.data());
    fedactors::ExactCounts counts;
    {
        py::gil_scoped_release nogil;
        counts = fedactors::exact_add(dst, src, weight, n, subtract, threads, isa);
        if (counts.acc_overflow) fedactors::exact_add(dst, src, weight, n, !subtract, threads, isa);  // undone
    }
    if (counts.acc_overflow) fail_range("acc");
    return counts.out_of_range;
}

void exact_merge(const py::object& acc, const py::object& other, int threads) {
    if (!py::isinstance<py::array>(other)) fail("other is not a numpy.ndarray, expected one of int64");
    const auto o = py::reinterpret_borrow<py::array>(other);
    const auto n = static_cast<std::size_t>(o.ndim() == 1 ? o.shape(0) : 0);
    if (!o.dtype().equal(py::dtype::of<std::int64_t>()) || o.ndim() != 1 || !(o.flags() & py::array::c_style))
        fail("other is not a 1-D C-contiguous int64 array");
    auto* dst = check_accumulator(acc, n, "acc");
    const auto* src = static_cast<const std::int64_t*>(o.data());
    if (overlaps(dst, src, n * sizeof(std::int64_t))) fail("acc overlaps other");
    bool bad;
    {
        py::gil_scoped_release nogil;
        bad = fedactors::exact_merge(dst, src, n, false, threads);
        if (bad) fedactors::exact_merge(dst, src, n, true, threads);  // undone: uint64 addition inverts exactly
    }
    if (bad) fail_range("acc + other");
}

py::array exact_result(const py::object& acc, double factor, const py::object& out, int threads,
                       const std::string& isa_name) {
    if (!py::isinstance<py::array>(acc)) fail("acc is not a numpy.ndarray, expected one of int64");
    const auto a = py::reinterpret_borrow<py::array>(acc);
    if (!a.dtype().equal(py::dtype::of<std::int64_t>()) || a.ndim() != 1 || !(a.flags() & py::array::c_style))
        fail("acc is not a 1-D C-contiguous int64 array");
    if (!(std::isfinite(factor) && factor > 0)) fail("factor is ", factor, ", expected a finite number > 0");
    const auto n = static_cast<std::size_t>(a.shape(0));
    py::array result = out.is_none() ? py::array(py::array_t<float>(static_cast<py::ssize_t>(n))) : check_vector(out, "out");
    if (static_cast<std::size_t>(result.shape(0)) != n) fail("out has length ", result.shape(0), ", expected ", n);
    if (!result.writeable()) fail("out is read-only, expected a writeable array");
    const auto isa = parse_isa(isa_name);
    const auto* src = static_cast<const std::int64_t*>(a.data());
    auto* dst = static_cast<float*>(result.mutable_data());
    if (overlaps(dst, n * sizeof(float), src, n * sizeof(std::int64_t)))
        fail("out overlaps acc; the output must not alias the accumulator");
    bool bad;
    {
        py::gil_scoped_release nogil;
        bad = fedactors::exact_result(src, factor, n, dst, threads, isa);
    }
    if (bad)
        fail("acc holds values past the exact sum's range (|acc| < 2**51 grid units): the shares summed "
             "add up to more than 1 (a client added twice, or a wrong total)");
    return result;
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
    m.doc() = "Native aggregation kernels for fedactors (C++17, OpenMP).";
    m.def("weighted_average", &weighted_average, py::arg("buffers"), py::arg("weights"),
          py::kw_only(), py::arg("out") = py::none(), py::arg("threads") = 0,
          py::arg("accumulate") = "float32", py::arg("isa") = "auto",
          R"doc(Return sum_j (weights[j] / sum(weights)) * buffers[j] as a float32 array.

buffers: non-empty sequence of float32, 1-D, C-contiguous arrays of equal length (read-only
is fine; nothing is copied or converted). weights: one finite weight >= 0 per buffer, not all
zero. out: optional float32, 1-D, C-contiguous, writeable array of the same length that
overlaps no buffer; written in place and returned. threads <= 0 uses OpenMP's default.
accumulate: 'float32' (default) or 'float64' running sums. Clients are summed in the given
order, so the result is the same bytes at any thread count. isa: 'auto' (the widest vectors
this CPU has) or one of available_isas(), for testing and benchmarks; every variant returns
the same bytes (no FMA contraction). The GIL is released while the kernel runs. Raises
ValueError naming the offending argument.)doc");
    m.def("weighted_fold", &weighted_fold, py::arg("buffers"), py::arg("weights"), py::kw_only(),
          py::arg("total"), py::arg("out"), py::arg("start"), py::arg("threads") = 0,
          py::arg("isa") = "auto",
          R"doc(Fold buffers into out: out (+)= sum_j float32(weights[j] / total) * buffers[j]; return out.

FedAvg's float32 sum a few clients at a time, in client order, rounding to float32 after each
term. start=True begins the sum (out is only written); start=False adds to what out holds.
Folding clients 0..a-1 with start=True and then a..k-1 with start=False gives the bytes of one
weighted_average over all k, when total is the sum of all k weights added in order in double.
buffers, out (required here), threads and isa as for weighted_average; weights finite and >= 0
(all zero is allowed); total finite and > 0. The GIL is released while the kernel runs.)doc");
    m.def("median", &median, py::arg("buffers"), py::kw_only(), py::arg("out") = py::none(),
          py::arg("threads") = 0, py::arg("isa") = "auto",
          R"doc(Return the coordinate-wise median of buffers as a float32 array.

The middle value of each coordinate, or for an even count the float32 (a + b) / 2 of the two
middle values, as np.median(np.stack(buffers), axis=0) computes it (bit for bit, up to the
sign of a zero median). NaN semantics: a coordinate where any buffer holds NaN is NaN (as
np.median; not nanmedian). buffers, out, threads and isa as for weighted_average; same bytes at
any thread count and isa. The GIL is released while the kernel runs.)doc");
    m.def("trimmed_mean", &trimmed_mean, py::arg("buffers"), py::arg("trim_fraction"),
          py::kw_only(), py::arg("out") = py::none(), py::arg("threads") = 0,
          py::arg("isa") = "auto",
          R"doc(Return the coordinate-wise beta-trimmed mean of buffers as a float32 array.

With k buffers and g = floor(trim_fraction * k), each coordinate drops its g smallest and g
largest values and averages the other k - 2g (as scipy.stats.trim_mean): summed in ascending
order in float32, then divided by k - 2g: np.sort(stack, axis=0)[g:k-g] summed row by row,
bit for bit up to the sign of a zero result. If g == 0 it is the plain mean, rows summed in
client order.
trim_fraction must be in [0, 0.5). NaN semantics: a coordinate where any buffer holds NaN is
NaN, even if the NaN would have been trimmed. buffers, out, threads and isa as for
weighted_average; same bytes at any thread count and isa. The GIL is released while the kernel
runs.)doc");
    m.def("stream_read", &stream_read, py::arg("buffers"), py::kw_only(),
          py::arg("threads") = 0, py::arg("isa") = "auto",
          R"doc(Return the float64 sum of every element of buffers, reading each byte once.

A streaming-bandwidth reference for benchmarks: each thread reads its contiguous slice of every
buffer from start to end, one buffer after another (the fastest way to read them, not the
kernels' blocking), no output. The summation order depends on the thread count. Validates
buffers and isa as weighted_average does.)doc");
    m.def("count_nonfinite", &count_nonfinite, py::arg("buffer"), py::kw_only(), py::arg("threads") = 0,
          R"doc(Return how many values of buffer are NaN or +-infinity.

buffer: a float32, 1-D, C-contiguous array (read-only is fine; nothing is copied). Tests the
exponent bits, so it is exact where a sum of the values could overflow. threads <= 0 uses
OpenMP's default. The GIL is released while it runs. Raises ValueError naming the problem.)doc");
    m.def("server_step", &server_step, py::arg("method"), py::arg("aggregate"), py::arg("weights"), py::arg("m"),
          py::arg("v") = py::none(), py::kw_only(), py::arg("lr"), py::arg("beta1"), py::arg("beta2") = 0.99,
          py::arg("tau") = 1e-3, py::arg("threads") = 0, py::arg("isa") = "auto",
          R"doc(Return the new global weights after one server-optimizer step; update m (and v) in place.

method: 'fedavgm', 'fedadagrad', 'fedadam' or 'fedyogi' (Reddi et al., ICLR 2021; FedAvgM after
Hsu et al. 2019). With d = aggregate - weights, per element in float32: fedavgm m = beta1*m + d,
new = weights + lr*m; the others m = beta1*m + (1-beta1)*d, and v = v + d*d (adagrad),
beta2*v + (1-beta2)*d*d (adam) or v - (1-beta2)*d*d*sign(v - d*d) (yogi), new = weights +
lr*m/(sqrt(v) + tau); no bias correction. One pass over the buffers. aggregate and weights:
float32, 1-D, C-contiguous, equal length (read-only is fine); m and v: the same, writeable
(v unused, may be None, for fedavgm); no two may overlap. lr > 0, beta1 and beta2 in [0, 1),
tau > 0. threads and isa as for weighted_average; the same bytes at any thread count and isa,
and as NumPy doing the same float32 steps. The GIL is released while the kernel runs.)doc");
    m.def("pairwise_sq_distances", &pairwise_sq_distances, py::arg("buffers"), py::kw_only(),
          py::arg("threads") = 0, py::arg("isa") = "auto", py::arg("max_partials") = fedactors::kDistMaxPartials,
          R"doc(Return the (k, k) float64 matrix of squared Euclidean distances between the k buffers.

For Krum (Blanchard et al., NeurIPS 2017). Blocks of 2,048 floats; within a block a pair's
float32 squared differences are summed over 32 fixed lanes, the lanes added in double, the
blocks added in order: the same bytes at any thread count and isa. buffers, threads and isa as
for weighted_average. At most max_partials doubles of per-block partial sums are held at once
(default 64 MiB; blocks are formed in groups that fit, with the same bytes). The GIL is released
while the kernel runs.)doc");
    m.def("clipped_sum", &clipped_sum, py::arg("buffers"), py::arg("weights"), py::kw_only(), py::arg("clip"),
          py::arg("threads") = 0, py::arg("isa") = "auto",
          R"doc(Return (sum, norms): DP-FedAvg's clipped sum of the updates buffers[j] - weights, and their L2 norms.

norms[j] = |buffers[j] - weights| in float64 (blocks summed in order); sum = sum_j float32(min(1,
clip / norms[j])) * (buffers[j] - weights), clients in order, float32, one rounding per term.
buffers may be empty (the sum is zeros). buffers and weights float32, 1-D, C-contiguous, equal
length (read-only is fine); clip finite and > 0. The same bytes at any thread count and isa.
The GIL is released while the kernel runs.)doc");
    m.def("exact_add", &exact_add, py::arg("acc"), py::arg("buffer"), py::arg("weight"), py::kw_only(),
          py::arg("subtract") = false, py::arg("threads") = 0, py::arg("isa") = "auto",
          R"doc(Add weight * buffer into acc exactly: acc[i] += round(weight * buffer[i] * 2**32); return the count left out.

FedAvg's exact, order-independent sum (csrc/exact.hpp): each term is a double product rounded
once to the 2**-32 grid and added as an int64, so any order and any grouping of the same terms
gives the same integers. acc: int64, 1-D, C-contiguous, writeable, the buffer's length. buffer:
float32, 1-D, C-contiguous (read-only is fine). weight in [0, 1]: the client's share of the
round's examples (the shares of one sum must add up to at most 1, which keeps it in range).
Every |weight * value| must be below 2**18 (and finite): a block of 16,384 values holding one
that is not is left out, and the number of such values is returned (0: added whole). Called
again with subtract=True on the same buffer, it takes out exactly what it added. A sum that would
take an acc value to 2**51 grid units or past (shares adding up to more than 1) is a ValueError,
acc left as it was. threads and isa as for weighted_average; the same integers at any thread
count and isa. The GIL is released.)doc");
    m.def("exact_merge", &exact_merge, py::arg("acc"), py::arg("other"), py::kw_only(), py::arg("threads") = 0,
          R"doc(acc += other: two exact sums (int64 arrays of one length) combined, exactly.

A value of acc, other or their sum at 2**51 grid units or past (shares adding up to more than 1) is
a ValueError, acc left as it was. The GIL is released.)doc");
    m.def("exact_result", &exact_result, py::arg("acc"), py::kw_only(), py::arg("factor") = 1.0,
          py::arg("out") = py::none(), py::arg("threads") = 0, py::arg("isa") = "auto",
          R"doc(Return the float32 array float(acc * 2**-32 * factor): an exact sum rounded once (factor 1).

factor (finite, > 0) rescales first, in double: FedAvg over fewer clients than its weights were
made for. out as for weighted_average, and it must not overlap acc. An acc value at 2**51 grid
units or past (shares adding up to more than 1) is a ValueError (out is then not the sum). The
GIL is released.)doc");
    m.def("quantize", &quantize, py::arg("values"), py::kw_only(), py::arg("bits"), py::arg("block"), py::arg("key"),
          py::arg("threads") = 0,
          R"doc(Return (codes, lo, step): values quantized stochastically to `bits` (2, 4, 8) levels a block.

Per block of `block` values lo = min, step = (max - min) / (2**bits - 1); a value t = (v - lo) /
step levels up is rounded down or up at random, up with probability t - floor(t), so that
lo + q * step is v in expectation. The draws hash (key, index): the same codes at any thread
count. codes: uint8, the levels packed low bits first, block * bits / 8 bytes a block. values:
float32, 1-D, C-contiguous, finite, no block spanning more than float32 holds (max - min finite);
read-only is fine. Anything else is a ValueError naming the first value or block. The GIL is
released.)doc");
    m.def("dequantize", &dequantize, py::arg("codes"), py::arg("lo"), py::arg("step"), py::kw_only(), py::arg("n"),
          py::arg("bits"), py::arg("block"), py::arg("threads") = 0,
          R"doc(Return the n float32 values lo + q * step that quantize's (codes, lo, step) stand for.)doc");
    m.def("hadamard", &hadamard, py::arg("values"), py::kw_only(), py::arg("chunk"), py::arg("key"),
          py::arg("inverse") = false, py::arg("threads") = 0,
          R"doc(Rotate values in place, chunk by chunk: H D x / sqrt(chunk), or with inverse D H y / sqrt(chunk).

The randomized Hadamard transform of Suresh et al. (ICML 2017): D is a diagonal of signs drawn
from (key, index), H the chunk's Walsh-Hadamard matrix; chunk a power of 4 (the scaling is then
exact), len(values) a multiple of it. The butterflies run in double, rounded to float32 once, so
the inverse gives back the input to a float32 rounding. values: float32, 1-D, C-contiguous,
writeable. The GIL is released.)doc");
    m.def("available_isas", &fedactors::available_isas,
          R"doc(Return the instruction-set variants this CPU and build can run, narrowest first.

'baseline' is the build's target (SSE2 on x86-64, or whatever FEDACTORS_NATIVE chose); 'avx2'
and 'avx512' are extra variants of the hot loops compiled in by GCC and Clang on x86. isa='auto'
picks the last.)doc");
    m.def("openmp_max_threads", &omp_get_max_threads,
          "Return omp_get_max_threads(): the thread count used when threads <= 0.");
}
