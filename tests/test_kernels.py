"""fedactors._kernels against a NumPy oracle; its argument checks; its GIL release; its stub."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fedactors
from fedactors import _kernels
from fedactors.aggregate import fedavg_reference

LENGTHS = [1, 7, 1_663_370]
F32_EPS = float(np.finfo(np.float32).eps)


def make_buffers(k: int, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n, dtype=np.float32) for _ in range(k)]


def unequal_counts(k: int) -> list[int]:
    return [int(c) for c in np.random.default_rng(k).integers(1, 1000, size=k)]


def assert_close_to_reference(got: np.ndarray, buffers: list[np.ndarray], weights: list) -> None:
    """Float32 accumulation error bound: (k + 2) roundings of the weighted sum of |terms|."""
    want = fedavg_reference(buffers, weights)
    total = float(sum(weights))
    scale = sum((w / total) * np.abs(b.astype(np.float64)) for b, w in zip(buffers, weights))
    bound = (len(buffers) + 2) * F32_EPS * scale + np.abs(want) * F32_EPS + 1e-30
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), f"element {worst}: error {err[worst]} > bound {bound[worst]}"


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("k", [1, 50])
def test_matches_reference_and_is_identical_across_threads(k: int, n: int) -> None:
    # Prepare
    buffers = make_buffers(k, n)
    weights = unequal_counts(k)
    # Execute
    one = _kernels.weighted_average(buffers, weights, threads=1)
    two = _kernels.weighted_average(buffers, weights, threads=2)
    default = _kernels.weighted_average(buffers, weights)
    # Assert
    assert one.dtype == np.float32 and one.shape == (n,)
    assert one.tobytes() == two.tobytes() == default.tobytes()
    assert_close_to_reference(one, buffers, weights)


@pytest.mark.parametrize("n", LENGTHS)
def test_float64_accumulation_matches_reference(n: int) -> None:
    buffers = make_buffers(10, n)
    weights = unequal_counts(10)
    one = _kernels.weighted_average(buffers, weights, threads=1, accumulate="float64")
    two = _kernels.weighted_average(buffers, weights, threads=2, accumulate="float64")
    assert one.tobytes() == two.tobytes()
    # Same operations in the same order as the oracle; 1 ulp of slack in case the compiler
    # fuses multiply-adds (FEDACTORS_NATIVE builds).
    np.testing.assert_array_max_ulp(one, fedavg_reference(buffers, weights), maxulp=1)


def test_single_buffer_is_returned_unchanged_in_value() -> None:
    (buffer,) = make_buffers(1, 1001)
    assert np.array_equal(_kernels.weighted_average([buffer], [7]), buffer)


def test_zero_weight_ignores_that_buffer() -> None:
    a, b = make_buffers(2, 1000)
    got = _kernels.weighted_average([a, b, a], [1, 0, 3])
    np.testing.assert_allclose(got, a, rtol=2 * F32_EPS)


def test_read_only_inputs_are_accepted() -> None:
    buffers = make_buffers(3, 513)
    for b in buffers:
        b.flags.writeable = False
    got = _kernels.weighted_average(buffers, [1, 2, 3])
    assert_close_to_reference(got, buffers, [1, 2, 3])


def test_out_is_written_in_place_and_returned() -> None:
    buffers = make_buffers(4, 4099)
    out = np.full(4099, np.nan, dtype=np.float32)
    got = _kernels.weighted_average(buffers, [4, 3, 2, 1], out=out)
    assert got is out
    assert out.tobytes() == _kernels.weighted_average(buffers, [4, 3, 2, 1]).tobytes()


def test_weights_may_be_a_numpy_array() -> None:
    buffers = make_buffers(3, 10)
    got = _kernels.weighted_average(buffers, np.array([600, 300, 100]))
    assert got.tobytes() == _kernels.weighted_average(buffers, [600, 300, 100]).tobytes()


def good() -> np.ndarray:
    return np.ones(16, dtype=np.float32)


@pytest.mark.parametrize(
    ("buffers", "message"),
    [
        ([], "buffers is empty"),
        ([good(), good(), good(), good().astype(np.float64)], "buffer 3 has dtype float64, expected float32"),
        ([good().astype(">f4")], "buffer 0 has dtype >f4, expected float32"),
        ([good(), good().reshape(4, 4)], "buffer 1 has 2 dimensions, expected a 1-D array"),
        ([good(), np.ones(32, dtype=np.float32)[::2]], "buffer 1 is not C-contiguous"),
        ([good(), np.ones(15, dtype=np.float32)], r"buffer 1 has length 15, expected 16"),
        ([good(), [1.0] * 16], "buffer 1 is a list, expected a numpy.ndarray"),
    ],
)
def test_bad_buffers_raise_value_error_naming_them(buffers: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _kernels.weighted_average(buffers, [1] * len(buffers))
    with pytest.raises(ValueError, match=message):
        _kernels.stream_read(buffers)


def test_misaligned_buffer_is_rejected() -> None:
    raw = np.zeros(4 * 16 + 1, dtype=np.uint8)
    misaligned = raw[1:].view(np.float32)
    with pytest.raises(ValueError, match="buffer 1 is not aligned"):
        _kernels.weighted_average([good(), misaligned], [1, 1])


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1, -1, 1], "weight 1 is -1, expected >= 0"),
        ([0, 0, 0], "all weights are zero"),
        ([1, float("nan"), 1], "weight 1 is nan, expected a finite number"),
        ([float("inf"), 1, 1], "weight 0 is inf, expected a finite number"),
        ([1e308, 1e308, 1e308], "the weights sum to inf"),
        ([1, 1], "got 2 weights for 3 buffers"),
        ([1, 1, 1, 1], "got 4 weights for 3 buffers"),
    ],
)
def test_bad_weights_raise_value_error_naming_them(weights: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _kernels.weighted_average([good(), good(), good()], weights)


def test_bad_accumulate_is_rejected() -> None:
    with pytest.raises(ValueError, match="accumulate is 'float16', expected 'float32' or 'float64'"):
        _kernels.weighted_average([good()], [1], accumulate="float16")


def read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (np.ones(16), "out has dtype float64, expected float32"),
        (np.ones((4, 4), dtype=np.float32), "out has 2 dimensions"),
        (np.ones(32, dtype=np.float32)[::2], "out is not C-contiguous"),
        (np.ones(15, dtype=np.float32), "out has length 15, expected 16"),
        (read_only(good()), "out is read-only"),
        ([0.0] * 16, "out is a list"),
    ],
)
def test_bad_out_raises_value_error(out: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _kernels.weighted_average([good(), good()], [1, 1], out=out)


def test_out_aliasing_an_input_is_rejected() -> None:
    a, b = good(), np.arange(20, dtype=np.float32)
    with pytest.raises(ValueError, match="out overlaps buffer 1"):
        _kernels.weighted_average([a, b[:16]], [1, 1], out=b[4:])  # partial overlap
    with pytest.raises(ValueError, match="out overlaps buffer 0"):
        _kernels.weighted_average([a, a.copy()], [1, 1], out=a)


def test_validation_happens_before_any_write() -> None:
    out = np.full(16, 5, dtype=np.float32)
    with pytest.raises(ValueError):
        _kernels.weighted_average([good(), good().astype(np.float64)], [1, 1], out=out)
    assert np.all(out == 5)


@pytest.mark.parametrize("n", LENGTHS)
def test_stream_read_sums_every_element(n: int) -> None:
    buffers = make_buffers(3, n)
    want = sum(float(b.astype(np.float64).sum()) for b in buffers)
    scale = sum(float(np.abs(b).sum()) for b in buffers)
    for threads in (1, 2):
        assert abs(_kernels.stream_read(buffers, threads=threads) - want) <= 1e-4 * scale + 1e-6


def test_openmp_max_threads_is_positive() -> None:
    assert _kernels.openmp_max_threads() >= 1


def test_gil_is_released_while_the_kernel_runs() -> None:
    """Python in another thread keeps running during one long kernel call."""
    buffer = make_buffers(1, 1_663_370)[0]
    start = time.perf_counter()
    _kernels.weighted_average([buffer] * 50, [1] * 50, threads=1)
    per_input_seconds = (time.perf_counter() - start) / 50
    k = int(min(5000, max(50, 0.3 / per_input_seconds)))  # aim at one ~0.3 s call
    window: list[float] = []

    def worker() -> None:
        window.append(time.perf_counter())
        _kernels.weighted_average([buffer] * k, [1] * k, threads=1)
        window.append(time.perf_counter())

    thread = threading.Thread(target=worker)
    samples: list[float] = []
    thread.start()
    while thread.is_alive():
        samples.append(time.perf_counter())
    thread.join()
    t0, t1 = window
    # With the GIL held for the call, this thread could only run at its edges (one switch
    # interval, 5 ms, each side): at most the first and last tenth of the window.
    tenths = {int(10 * (s - t0) / (t1 - t0)) for s in samples if t0 < s < t1}
    assert len(tenths) >= 6, f"main thread ran in only {sorted(tenths)} tenths of {t1 - t0:.3f} s"


def signature_from_doc(function: object) -> ast.arguments:
    """The argument list pybind11 writes as the first line of a function's docstring."""
    first_line = function.__doc__.splitlines()[0]
    tree = ast.parse(f"def {first_line}: ...")
    return tree.body[0].args


def test_stub_matches_the_module() -> None:
    stub_path = Path(fedactors.__file__).with_name("_kernels.pyi")
    stub = ast.parse(stub_path.read_text())
    stubbed = {node.name: node.args for node in stub.body if isinstance(node, ast.FunctionDef)}
    public = {name for name in dir(_kernels) if not name.startswith("_")}
    assert set(stubbed) == public
    for name, stub_args in stubbed.items():
        real = signature_from_doc(getattr(_kernels, name))
        assert [a.arg for a in stub_args.args] == [a.arg for a in real.args], name
        assert [a.arg for a in stub_args.kwonlyargs] == [a.arg for a in real.kwonlyargs], name
        assert len(stub_args.defaults) == len(real.defaults), name
        assert [d is None for d in stub_args.kw_defaults] == [d is None for d in real.kw_defaults], name
