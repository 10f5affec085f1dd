"""fedactors._kernels against NumPy oracles; its ISA variants; its argument checks; its GIL release; its stub."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fedactors
from fedactors import _kernels
from fedactors.aggregate import fedavg_reference, median_reference, trimmed_mean_reference

LENGTHS = [1, 7, 16_385, 1_663_370]  # 16,385: two blocks (kernels.hpp kBlock), the second of one float
F32_EPS = float(np.finfo(np.float32).eps)
ISAS = _kernels.available_isas()


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
    with pytest.raises(ValueError, match=message):
        _kernels.median(buffers)
    with pytest.raises(ValueError, match=message):
        _kernels.trimmed_mean(buffers, 0.1)


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
    with pytest.raises(ValueError, match=message):
        _kernels.median([good(), good()], out=out)
    with pytest.raises(ValueError, match=message):
        _kernels.trimmed_mean([good(), good()], 0.1, out=out)


def test_out_aliasing_an_input_is_rejected() -> None:
    a, b = good(), np.arange(20, dtype=np.float32)
    with pytest.raises(ValueError, match="out overlaps buffer 1"):
        _kernels.weighted_average([a, b[:16]], [1, 1], out=b[4:])  # partial overlap
    with pytest.raises(ValueError, match="out overlaps buffer 0"):
        _kernels.weighted_average([a, a.copy()], [1, 1], out=a)
    with pytest.raises(ValueError, match="out overlaps buffer 1"):
        _kernels.median([a, b[:16]], out=b[4:])
    with pytest.raises(ValueError, match="out overlaps buffer 0"):
        _kernels.trimmed_mean([a, a.copy()], 0.2, out=a)


def test_validation_happens_before_any_write() -> None:
    out = np.full(16, 5, dtype=np.float32)
    with pytest.raises(ValueError):
        _kernels.weighted_average([good(), good().astype(np.float64)], [1, 1], out=out)
    assert np.all(out == 5)


# --- Instruction-set variants ---------------------------------------------------------------


def test_available_isas_start_with_the_baseline() -> None:
    assert ISAS[0] == "baseline"
    assert set(ISAS) <= {"baseline", "avx2", "avx512"}


@pytest.mark.parametrize("accumulate", ["float32", "float64"])
@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_every_isa_gives_the_same_bytes_as_the_baseline(k: int, accumulate: str) -> None:
    """No FMA contraction: the wider variants do the same float operations in the same order."""
    buffers = make_buffers(k, 100_003)
    weights = unequal_counts(k)
    want = _kernels.weighted_average(buffers, weights, isa="baseline", threads=1, accumulate=accumulate)
    for isa in ISAS:
        for threads in (1, 2):
            got = _kernels.weighted_average(buffers, weights, isa=isa, threads=threads, accumulate=accumulate)
            assert got.tobytes() == want.tobytes(), (isa, threads)
    assert_close_to_reference(want, buffers, weights)


def test_float32_accumulation_matches_numpy_float32_order_bit_for_bit() -> None:
    """((o + a1*x1) + a2*x2)... with float32 weights: what a NumPy float32 loop computes."""
    buffers = make_buffers(10, 10_007)
    weights = unequal_counts(10)
    total = float(sum(weights))
    w32 = [np.float32(w / total) for w in weights]
    want = w32[0] * buffers[0]
    for b, w in zip(buffers[1:], w32[1:]):
        want = want + w * b
    for isa in ISAS:
        assert _kernels.weighted_average(buffers, weights, isa=isa).tobytes() == want.tobytes(), isa


def test_stream_read_is_the_same_for_every_isa() -> None:
    buffers = make_buffers(3, 100_003)
    assert len({_kernels.stream_read(buffers, threads=1, isa=isa) for isa in ISAS}) == 1


def test_unknown_isa_is_rejected() -> None:
    for call in (
        lambda: _kernels.weighted_average([good()], [1], isa="sse9"),
        lambda: _kernels.stream_read([good()], isa="sse9"),
        lambda: _kernels.median([good()], isa="sse9"),
        lambda: _kernels.trimmed_mean([good()], 0.1, isa="sse9"),
    ):
        with pytest.raises(ValueError, match="isa is 'sse9', expected 'auto', 'baseline', 'avx2' or 'avx512'"):
            call()


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_an_isa_runs_if_and_only_if_the_cpu_supports_it(isa: str) -> None:
    if isa in ISAS:
        np.testing.assert_array_equal(_kernels.weighted_average([good()], [1], isa=isa), good())
    else:
        with pytest.raises(ValueError, match=f"isa '{isa}' is not supported by this CPU"):
            _kernels.weighted_average([good()], [1], isa=isa)


# --- Median and trimmed mean ------------------------------------------------------------------


def assert_same_bytes_everywhere(run, want: np.ndarray) -> None:
    """run(isa, threads) gives want's bytes for every ISA variant at 1 and 2 threads."""
    for isa in ISAS:
        for threads in (1, 2):
            got = run(isa, threads)
            assert got.dtype == np.float32 and got.shape == want.shape
            assert got.tobytes() == want.tobytes(), (isa, threads)


# k <= 16 runs the network in registers; 17, 33 and 50 the scratch path.
@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 9, 10, 16, 17, 33, 50])
def test_median_matches_np_median_bit_for_bit(k: int, n: int) -> None:
    buffers = make_buffers(k, n, seed=k)
    want = median_reference(buffers)
    assert_same_bytes_everywhere(lambda isa, t: _kernels.median(buffers, isa=isa, threads=t), want)


@pytest.mark.parametrize("k", [10, 50])
def test_median_of_full_length_buffers(k: int) -> None:
    buffers = make_buffers(k, 1_663_370)
    want = median_reference(buffers)
    assert_same_bytes_everywhere(lambda isa, t: _kernels.median(buffers, isa=isa, threads=t), want)


@pytest.mark.parametrize("trim_fraction", [0.0, 0.05, 0.1, 0.2, 0.3, 0.49])
@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("k", [1, 2, 3, 10, 16, 17, 50])
def test_trimmed_mean_matches_sorted_reference_bit_for_bit(k: int, n: int, trim_fraction: float) -> None:
    buffers = make_buffers(k, n, seed=k + n)
    want = trimmed_mean_reference(buffers, trim_fraction)
    assert_same_bytes_everywhere(
        lambda isa, t: _kernels.trimmed_mean(buffers, trim_fraction, isa=isa, threads=t), want
    )


@pytest.mark.parametrize("k", [10, 50])
def test_trimmed_mean_of_full_length_buffers(k: int) -> None:
    buffers = make_buffers(k, 1_663_370)
    want = trimmed_mean_reference(buffers, 0.1)
    assert_same_bytes_everywhere(lambda isa, t: _kernels.trimmed_mean(buffers, 0.1, isa=isa, threads=t), want)


def test_trim_fraction_that_rounds_to_zero_is_the_plain_mean() -> None:
    buffers = make_buffers(10, 1001)
    plain = np.mean(np.stack(buffers), axis=0)  # rows summed in client order, then / 10
    for trim_fraction in (0.0, 0.05, 0.099):  # floor(beta * 10) == 0
        assert _kernels.trimmed_mean(buffers, trim_fraction).tobytes() == plain.tobytes()
    assert _kernels.trimmed_mean(buffers, 0.1).tobytes() != plain.tobytes()  # g == 1 trims


def test_trimmed_mean_drops_floor_of_beta_k_from_each_end() -> None:
    # Coordinate values 0..9 in scrambled client order; 1000 and -1000 are outliers.
    rows = [3, 7, 1, 9, 0, 5, 2, 8, 6, 4]
    buffers = [np.array([v, 1000 if v == 9 else (-1000 if v == 0 else v)], dtype=np.float32) for v in rows]
    assert _kernels.trimmed_mean(buffers, 0.1).tolist() == [4.5, 4.5]  # drops 0 and 9 / -1000 and 1000
    assert _kernels.trimmed_mean(buffers, 0.25).tolist() == [4.5, 4.5]  # floor(2.5) = 2 each end
    assert _kernels.median(buffers).tolist() == [4.5, 4.5]


@pytest.mark.parametrize("k", [2, 3, 5, 10, 11, 16, 17, 50])
def test_ties_and_signed_zeros(k: int) -> None:
    """Equal values are interchangeable; only which zero (-0.0 or +0.0) comes back may differ from
    NumPy, whose partition order among equal elements is its own. Our bytes are still fixed."""
    rng = np.random.default_rng(k)
    buffers = [rng.integers(-2, 3, size=4099).astype(np.float32) for _ in range(k)]
    buffers[0][::5] = -0.0
    runs = [lambda isa, t: _kernels.median(buffers, isa=isa, threads=t)]
    wants = [median_reference(buffers)]
    for trim_fraction in (0.0, 0.2, 0.4):
        runs.append(lambda isa, t, f=trim_fraction: _kernels.trimmed_mean(buffers, f, isa=isa, threads=t))
        wants.append(trimmed_mean_reference(buffers, trim_fraction))
    for run, want in zip(runs, wants):
        ours = run("baseline", 1)
        assert np.array_equal(ours, want)  # -0.0 == +0.0
        nonzero = want != 0
        assert ours[nonzero].tobytes() == want[nonzero].tobytes()
        assert_same_bytes_everywhere(run, ours)


@pytest.mark.parametrize("k", list(range(1, 17)))
def test_networks_sort_every_zero_one_input(k: int) -> None:
    """0-1 principle: a comparator network sorts everything iff it sorts all 2**k 0-1 inputs."""
    codes = np.arange(2**k, dtype=np.uint32)
    buffers = [((codes >> j) & 1).astype(np.float32) for j in range(k)]
    assert np.array_equal(_kernels.median(buffers), median_reference(buffers))
    for trim_fraction in (0.1, 0.2, 0.3, 0.4):
        want = trimmed_mean_reference(buffers, trim_fraction)
        assert _kernels.trimmed_mean(buffers, trim_fraction).tobytes() == want.tobytes()


@pytest.mark.parametrize("k", [1, 2, 3, 10, 17, 50])
def test_any_nan_makes_the_coordinate_nan(k: int) -> None:
    buffers = make_buffers(k, 1000, seed=k)
    buffers[k // 2][3] = np.nan
    buffers[0][500:520] = np.nan
    buffers[-1][999] = np.nan
    nan_at = np.isnan(np.stack(buffers)).any(axis=0)
    for isa in ISAS:
        for trim_fraction in (0.0, 0.2, 0.4):  # NaN even where it would sort into the trimmed end
            got = _kernels.trimmed_mean(buffers, trim_fraction, isa=isa)
            assert np.array_equal(np.isnan(got), nan_at), (isa, trim_fraction)
            np.testing.assert_array_equal(got, trimmed_mean_reference(buffers, trim_fraction))
        got = _kernels.median(buffers, isa=isa)
        assert np.array_equal(np.isnan(got), nan_at), isa
        np.testing.assert_array_equal(got, median_reference(buffers))  # equal_nan by default


def test_infinities_sort_to_the_ends() -> None:
    buffers = make_buffers(5, 3)
    buffers[0][:] = np.inf
    buffers[1][:] = -np.inf
    assert np.array_equal(_kernels.median(buffers), median_reference(buffers))
    assert np.isfinite(_kernels.trimmed_mean(buffers, 0.2)).all()
    assert _kernels.trimmed_mean(buffers, 0.2).tobytes() == trimmed_mean_reference(buffers, 0.2).tobytes()


@pytest.mark.parametrize("trim_fraction", [0.5, 0.7, -0.1, float("nan"), float("inf")])
def test_trim_fraction_outside_the_range_is_rejected(trim_fraction: float) -> None:
    with pytest.raises(ValueError, match=r"trim_fraction is .*, expected a number in \[0, 0.5\)"):
        _kernels.trimmed_mean([good()] * 4, trim_fraction)


def test_robust_out_is_written_in_place_and_returned() -> None:
    buffers = make_buffers(5, 4099)
    for run in (lambda out: _kernels.median(buffers, out=out), lambda out: _kernels.trimmed_mean(buffers, 0.2, out=out)):
        out = np.full(4099, np.nan, dtype=np.float32)
        assert run(out) is out
        assert out.tobytes() == run(None).tobytes()


def test_robust_inputs_may_be_read_only() -> None:
    buffers = [read_only(b) for b in make_buffers(4, 513)]
    assert np.array_equal(_kernels.median(buffers), median_reference(buffers))


@pytest.mark.parametrize("n", LENGTHS)
def test_stream_read_sums_every_element(n: int) -> None:
    buffers = make_buffers(3, n)
    want = sum(float(b.astype(np.float64).sum()) for b in buffers)
    scale = sum(float(np.abs(b).sum()) for b in buffers)
    for threads in (1, 2):
        assert abs(_kernels.stream_read(buffers, threads=threads) - want) <= 1e-4 * scale + 1e-6


@pytest.mark.parametrize("threads", ["1", "3"])
def test_openmp_max_threads_follows_omp_num_threads(threads: str) -> None:
    code = "from fedactors import _kernels; print(_kernels.openmp_max_threads())"
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == threads, result.stderr


def test_gil_is_released_while_the_kernel_runs() -> None:
    """Another Python thread runs while one kernel call is in progress; decided by the GIL, not by timing.

    With a switch interval of 1000 s, a thread holding the GIL keeps it until it blocks or
    releases it. The main thread waits for the worker to be about to call the kernel; it can
    then run again only when the worker lets the GIL go: inside the call if the kernel releases
    it (the call is still running: `done` is False), or after the call if it does not.
    """
    buffer = make_buffers(1, 1_663_370)[0]
    start = time.perf_counter()
    _kernels.weighted_average([buffer] * 20, [1] * 20, threads=1)
    k = int(min(20_000, max(100, 20 * 1.0 / (time.perf_counter() - start))))  # a call of about a second
    about_to_call, done = threading.Event(), []

    def worker() -> None:
        about_to_call.set()
        _kernels.weighted_average([buffer] * k, [1] * k, threads=1)
        done.append(True)

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        about_to_call.wait()
        ran_during_the_call = not done
        thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert ran_during_the_call, "the main thread could run only after the kernel call returned: it holds the GIL"


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


@pytest.mark.parametrize("n", [1, 7, 513, 1_663_370])
@pytest.mark.parametrize("threads", [1, 2])
def test_count_nonfinite_matches_numpy(n: int, threads: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    specials = [np.nan, np.inf, -np.inf, np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny]
    x[rng.integers(0, n, size=min(n, 40))] = rng.choice(specials, size=min(n, 40))
    x.flags.writeable = False  # read-only input, as from the object store
    assert _kernels.count_nonfinite(x, threads=threads) == int((~np.isfinite(x)).sum())


def test_count_nonfinite_validates_without_converting() -> None:
    with pytest.raises(ValueError, match="buffer has dtype float64, expected float32"):
        _kernels.count_nonfinite(np.zeros(4))
    with pytest.raises(ValueError, match="buffer is not C-contiguous"):
        _kernels.count_nonfinite(np.zeros(8, dtype=np.float32)[::2])


# ---- The server optimizers' fused step and Krum's distances --------------------------------------

@pytest.mark.parametrize("method", ["fedavgm", "fedadagrad", "fedadam", "fedyogi"])
def test_server_step_is_numpys_float32_steps_bit_for_bit_at_any_thread_count_and_isa(method: str) -> None:
    from fedactors.strategy import server_step_reference

    rng = np.random.default_rng(3)
    n = 70_001  # several blocks and a ragged end
    x = rng.standard_normal(n).astype(np.float32)
    a = (x + 0.05 * rng.standard_normal(n)).astype(np.float32)
    m0 = (0.01 * rng.standard_normal(n)).astype(np.float32)
    v0 = np.abs(0.01 * rng.standard_normal(n)).astype(np.float32)
    v0[::7] = (a - x)[::7] ** 2  # v == d*d: Yogi's sign(0) branch
    hyper = dict(lr=0.03, beta1=0.9, beta2=0.99, tau=1e-3)
    m_ref, v_ref = m0.copy(), v0.copy()
    want = server_step_reference(method, a, x, m_ref, None if method == "fedavgm" else v_ref, **hyper)
    for isa in _kernels.available_isas():
        for threads in (1, 2, 3):
            m, v = m0.copy(), v0.copy()
            got = _kernels.server_step(method, a, x, m, None if method == "fedavgm" else v, threads=threads, isa=isa, **hyper)
            assert got.tobytes() == want.tobytes(), (isa, threads)
            assert m.tobytes() == m_ref.tobytes() and v.tobytes() == (v0 if method == "fedavgm" else v_ref).tobytes()


@pytest.mark.parametrize(("call", "message"), [
    (lambda a, x, m, v: _kernels.server_step("sgd", a, x, m, v, lr=1, beta1=0.9), "method is 'sgd'"),
    (lambda a, x, m, v: _kernels.server_step("fedadam", a, x, m, None, lr=1, beta1=0.9), "v is None"),
    (lambda a, x, m, v: _kernels.server_step("fedadam", a, x, m, v, lr=0, beta1=0.9), "lr is 0"),
    (lambda a, x, m, v: _kernels.server_step("fedadam", a, x, m, v, lr=1, beta1=1.0), r"beta1 is 1, expected a number in \[0, 1\)"),
    (lambda a, x, m, v: _kernels.server_step("fedadam", a, x, m, v, lr=1, beta1=0.9, tau=0), "tau is 0"),
    (lambda a, x, m, v: _kernels.server_step("fedadam", a, x, m, m, lr=1, beta1=0.9), "m overlaps v"),
    (lambda a, x, m, v: _kernels.server_step("fedadam", a, x, m[:-1], v, lr=1, beta1=0.9), "m has length 9"),
    (lambda a, x, m, v: _kernels.server_step("fedadam", a, x.astype(np.float64), m, v, lr=1, beta1=0.9), "weights has dtype float64"),
    (lambda a, x, m, v: _kernels.server_step("fedadam", a, x, np.zeros(10, np.float32)[::-1], v, lr=1, beta1=0.9), "m is not C-contiguous"),
])
def test_server_step_refuses_bad_arguments_by_name(call, message) -> None:
    a, x, m, v = (np.zeros(10, np.float32) for _ in range(4))
    readonly = np.zeros(10, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=message):
        call(a, x, m, v)
    with pytest.raises(ValueError, match="m is read-only"):
        _kernels.server_step("fedavgm", a, x, readonly, None, lr=1, beta1=0.9)


@pytest.mark.parametrize("k", [2, 10, 50])
def test_pairwise_distances_match_numpy_and_are_the_same_bytes_at_any_thread_count(k: int) -> None:
    from fedactors.aggregate import pairwise_sq_distances_reference

    rng = np.random.default_rng(k)
    buffers = [rng.standard_normal(20_011).astype(np.float32) for _ in range(k)]
    got = [_kernels.pairwise_sq_distances(buffers, threads=t, isa=isa) for t in (1, 2, 3) for isa in _kernels.available_isas()]
    # Memory bounded by max_partials: blocks (10 of them here) formed one, three or all at a time, the same bytes.
    pairs = k * (k - 1) // 2
    got += [_kernels.pairwise_sq_distances(buffers, threads=2, max_partials=m) for m in (1, 3 * pairs, 10**9)]
    assert len({g.tobytes() for g in got}) == 1
    want = pairwise_sq_distances_reference(buffers)
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
    assert np.all(np.diag(got[0]) == 0) and np.array_equal(got[0], got[0].T)


def test_krum_picks_an_honest_update_and_multi_krum_averages_the_honest_ones() -> None:
    from fedactors.aggregate import combine, fedavg, krum_scores, krum_select, pairwise_sq_distances_reference

    rng = np.random.default_rng(7)
    center = rng.standard_normal(5000).astype(np.float32)
    honest = [center + 0.01 * rng.standard_normal(5000).astype(np.float32) for _ in range(8)]
    attackers = [center - 10 * (h - center) + 5 for h in honest[:2]]
    buffers = [honest[0], attackers[0], *honest[1:4], attackers[1], *honest[4:]]  # faulty at positions 1 and 5
    # The NumPy oracle: score = the sum of each update's n - f - 2 smallest distances to the others.
    d = pairwise_sq_distances_reference(buffers)
    n, f = len(buffers), 2
    oracle = [sum(sorted(d[i, j] for j in range(n) if j != i)[: n - f - 2]) for i in range(n)]
    np.testing.assert_allclose(krum_scores(_kernels.pairwise_sq_distances(buffers), f), oracle, rtol=1e-6)
    best = int(np.argmin(oracle))
    assert krum_select(buffers, f, 1) == [best] and best not in (1, 5)
    assert combine("krum", buffers, [1] * n, krum_f=f).tobytes() == buffers[best].tobytes()
    chosen = krum_select(buffers, f, n - f)
    assert chosen == [i for i in range(n) if i not in (1, 5)]
    counts = list(range(1, n + 1))
    assert combine("multi-krum", buffers, counts, krum_f=f).tobytes() == \
        fedavg([buffers[i] for i in chosen], [counts[i] for i in chosen]).tobytes()
    # n > 2f + 2 in every round, not only in the configuration (--min-fit-fraction may leave fewer).
    with pytest.raises(ValueError, match=r"Krum with f = 2 needs more than 2f \+ 2 = 6 updates for its guarantee, got 6"):
        krum_scores(d[:6, :6], 2)
    assert len(krum_scores(d[:7, :7], 2)) == 7


# ---- DP-FedAvg's clipped sum -----------------------------------------------------------------------

def test_clipped_sum_norms_and_sum_match_numpy_at_any_thread_count_and_isa() -> None:
    from fedactors.strategy import clipped_sum_reference

    rng = np.random.default_rng(11)
    n = 70_001
    x = rng.standard_normal(n).astype(np.float32)
    updates = [(x + s * rng.standard_normal(n)).astype(np.float32) for s in (1e-4, 0.003, 0.01, 0.5)]
    results = [_kernels.clipped_sum(updates, x, clip=1.0, threads=t, isa=isa)
               for t in (1, 2, 3) for isa in _kernels.available_isas()]
    assert len({s.tobytes() for s, _ in results}) == 1 and len({nrm.tobytes() for _, nrm in results}) == 1
    total, norms = results[0]
    want = [np.sqrt(np.sum((u - x).astype(np.float64) ** 2)) for u in updates]
    np.testing.assert_allclose(norms, want, rtol=1e-12)
    assert norms[0] < 1.0 < norms[3]  # some clipped, some not
    assert total.tobytes() == clipped_sum_reference(updates, x, 1.0, norms).tobytes()
    empty, no_norms = _kernels.clipped_sum([], x, clip=1.0)
    assert not empty.any() and len(no_norms) == 0
    with pytest.raises(ValueError, match="clip is 0"):
        _kernels.clipped_sum(updates, x, clip=0.0)
    with pytest.raises(ValueError, match="buffer 1 has length 3"):
        _kernels.clipped_sum([x, x[:3]], x, clip=1.0)
