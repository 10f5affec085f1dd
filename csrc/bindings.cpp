// Python bindings for kernels.hpp. Validate, don't convert: every argument is checked and
// rejected with a ValueError naming it; nothing is silently copied or cast (py::array_t's
// default forcecast would turn a float64 buffer into a fresh float32 copy).
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "kernels.hpp"

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

void check_weights(const std::vector<double>& w, std::size_t k) {
    if (w.size() != k) fail("got ", w.size(), " weights for ", k, " buffers, expected one each");
    double total = 0.0;
    for (std::size_t j = 0; j < k; ++j) {
        if (!std::isfinite(w[j])) fail("weight ", j, " is ", w[j], ", expected a finite number");
        if (w[j] < 0) fail("weight ", j, " is ", w[j], ", expected >= 0");
        total += w[j];
    }
    if (total == 0) fail("all weights are zero, expected at least one > 0");
    if (!std::isfinite(total)) fail("the weights sum to ", total, ", expected a finite sum");
}

bool overlaps(const void* a, const void* b, std::size_t bytes) {
    const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
    return bytes > 0 && x < y + bytes && y < x + bytes;
}

std::vector<const float*> pointers(const std::vector<py::array>& arrays) {
    std::vector<const float*> in;
    in.reserve(arrays.size());
    // data(), not mutable_data(): object-store arrays are read-only and that is fine here.
    for (const auto& a : arrays) in.push_back(static_cast<const float*>(a.data()));
    return in;
}

py::array weighted_average(const py::sequence& buffers, const std::vector<double>& weights,
                           const py::object& out, int threads, const std::string& accumulate) {
    const auto arrays = check_buffers(buffers);
    const std::size_t k = arrays.size();
    const auto n = static_cast<std::size_t>(arrays[0].shape(0));
    check_weights(weights, k);
    fedactors::Accumulate acc;
    if (accumulate == "float32") acc = fedactors::Accumulate::float32;
    else if (accumulate == "float64") acc = fedactors::Accumulate::float64;
    else fail("accumulate is '", accumulate, "', expected 'float32' or 'float64'");

    py::array result;
    if (out.is_none()) {
        result = py::array_t<float>(static_cast<py::ssize_t>(n));
    } else {
        result = check_vector(out, "out");
        if (!result.writeable()) fail("out is read-only, expected a writeable array");
        if (static_cast<std::size_t>(result.shape(0)) != n)
            fail("out has length ", result.shape(0), ", expected ", n, " (the buffers' length)");
        for (std::size_t j = 0; j < k; ++j)
            if (overlaps(result.data(), arrays[j].data(), n * sizeof(float)))
                fail("out overlaps buffer ", j, "; the output must not alias an input");
    }
    const auto in = pointers(arrays);
    auto* dst = static_cast<float*>(result.mutable_data());
    {
        py::gil_scoped_release nogil;
        fedactors::weighted_average(in.data(), weights.data(), k, n, dst, threads, acc);
    }
    return result;
}

double stream_read(const py::sequence& buffers, int threads) {
    const auto arrays = check_buffers(buffers);
    const auto in = pointers(arrays);
    const auto n = static_cast<std::size_t>(arrays[0].shape(0));
    py::gil_scoped_release nogil;
    return fedactors::stream_read(in.data(), in.size(), n, threads);
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
    m.doc() = "Native aggregation kernels for fedactors (C++17, OpenMP).";
    m.def("weighted_average", &weighted_average, py::arg("buffers"), py::arg("weights"),
          py::kw_only(), py::arg("out") = py::none(), py::arg("threads") = 0,
          py::arg("accumulate") = "float32",
          R"doc(Return sum_j (weights[j] / sum(weights)) * buffers[j] as a float32 array.

buffers: non-empty sequence of float32, 1-D, C-contiguous arrays of equal length (read-only
is fine; nothing is copied or converted). weights: one finite weight >= 0 per buffer, not all
zero. out: optional float32, 1-D, C-contiguous, writeable array of the same length that
overlaps no buffer; written in place and returned. threads <= 0 uses OpenMP's default.
accumulate: 'float32' (default) or 'float64' running sums. Clients are summed in the given
order, so the result is the same bytes at any thread count. The GIL is released while the
kernel runs. Raises ValueError naming the offending argument.)doc");
    m.def("stream_read", &stream_read, py::arg("buffers"), py::kw_only(),
          py::arg("threads") = 0,
          R"doc(Return the float64 sum of every element of buffers, reading each byte once.

A streaming-bandwidth reference for benchmarks: same inputs, blocking and threads as
weighted_average, no output. The summation order depends on the thread count. Validates
buffers as weighted_average does.)doc");
    m.def("openmp_max_threads", &omp_get_max_threads,
          "Return omp_get_max_threads(): the thread count used when threads <= 0.");
}
