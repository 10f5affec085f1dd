"""fedactors.aggregate: each native aggregator against its NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from fedactors.aggregate import (
    krum_select,
    all_finite,
    combine,
    fedavg,
    fedavg_reference,
    median,
    median_reference,
    trimmed_mean,
    trimmed_mean_reference,
)

F32_EPS = float(np.finfo(np.float32).eps)


def make_updates(k: int, n: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(n + k)
    buffers = [rng.standard_normal(n, dtype=np.float32) for _ in range(k)]
    counts = [int(c) for c in rng.integers(1, 1200, size=k)]
    return buffers, counts


@pytest.mark.parametrize("n", [1, 7, 1_663_370])
@pytest.mark.parametrize("k", [1, 50])
def test_fedavg_matches_reference(k: int, n: int) -> None:
    # Prepare
    buffers, counts = make_updates(k, n)
    for b in buffers:
        b.flags.writeable = False  # as Ray's object store hands them over
    # Execute
    one = fedavg(buffers, counts, threads=1)
    two = fedavg(buffers, counts, threads=2)
    want = fedavg_reference(buffers, counts)
    # Assert
    assert one.tobytes() == two.tobytes()
    assert one.dtype == np.float32 and one.shape == (n,)
    # (k + 2) float32 roundings of the weighted sum of magnitudes bound the error.
    scale = sum((c / sum(counts)) * np.abs(b.astype(np.float64)) for b, c in zip(buffers, counts))
    np.testing.assert_array_less(np.abs(one.astype(np.float64) - want), (k + 2) * F32_EPS * scale + 1e-30)


def test_fedavg_weights_by_example_count() -> None:
    a = np.zeros(3, dtype=np.float32)
    b = np.full(3, 4.0, dtype=np.float32)
    # 100 examples at 0 and 300 at 4: the average is 3, not the unweighted 2.
    assert fedavg([a, b], [100, 300]).tolist() == [3.0, 3.0, 3.0]
    assert fedavg_reference([a, b], [100, 300]).tolist() == [3.0, 3.0, 3.0]


def test_fedavg_accepts_float_counts_and_writes_out() -> None:
    buffers, _ = make_updates(3, 1001)
    out = np.empty(1001, dtype=np.float32)
    got = fedavg(buffers, [0.5, 1.5, 2.0], out=out)
    assert got is out
    np.testing.assert_allclose(out, fedavg_reference(buffers, [0.5, 1.5, 2.0]), rtol=0, atol=1e-6)


def test_fedavg_reference_returns_float32_accumulated_in_float64() -> None:
    big = np.full(2, 2.0**24, dtype=np.float32)
    one = np.ones(2, dtype=np.float32)
    got = fedavg_reference([big, one, one], [1, 1, 1])
    assert got.dtype == np.float32
    assert got.tolist() == [np.float32((2.0**24 + 2) / 3)] * 2


@pytest.mark.parametrize(
    ("buffers", "counts", "message"),
    [
        ([np.ones(4), np.ones(4)], [1, 1], "buffer 0 has dtype float64"),
        ([np.ones(4, np.float32), np.ones(5, np.float32)], [1, 1], "buffer 1 has length 5"),
        ([np.ones(4, np.float32)], [1, 2], "got 2 weights for 1 buffers"),
        ([np.ones(4, np.float32)] * 2, [0, 0], "all weights are zero"),
        ([np.ones(4, np.float32)] * 2, [3, -3], "weight 1 is -3"),
    ],
)
def test_fedavg_rejects_bad_input(buffers: list, counts: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fedavg(buffers, counts)


@pytest.mark.parametrize("n", [1, 7, 1_663_370])
@pytest.mark.parametrize("k", [1, 2, 10])
def test_median_matches_reference(k: int, n: int) -> None:
    buffers, _ = make_updates(k, n)
    for b in buffers:
        b.flags.writeable = False
    one = median(buffers, threads=1)
    assert one.tobytes() == median(buffers, threads=2).tobytes() == median_reference(buffers).tobytes()


@pytest.mark.parametrize("trim_fraction", [0.0, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_trimmed_mean_matches_reference(k: int, trim_fraction: float) -> None:
    buffers, _ = make_updates(k, 10_001)
    one = trimmed_mean(buffers, trim_fraction, threads=1)
    two = trimmed_mean(buffers, trim_fraction, threads=2)
    assert one.tobytes() == two.tobytes() == trimmed_mean_reference(buffers, trim_fraction).tobytes()


def test_median_and_trimmed_mean_ignore_an_outlier() -> None:
    honest = [np.full(3, v, dtype=np.float32) for v in (0.9, 1.0, 1.1, 1.0)]
    attacker = np.full(3, 1e6, dtype=np.float32)
    assert median([*honest, attacker]).tolist() == [1.0] * 3
    assert trimmed_mean([*honest, attacker], 0.2).tolist() == pytest.approx([1.0333333] * 3)


def test_references_give_nan_where_any_buffer_is_nan() -> None:
    a = np.array([1, np.nan, 3], dtype=np.float32)
    b = np.array([np.nan, 2, 3], dtype=np.float32)
    c = np.array([1, 2, 3], dtype=np.float32)
    assert np.isnan(median_reference([a, b, c])).tolist() == [True, True, False]
    assert np.isnan(trimmed_mean_reference([a, b, c, c, c], 0.2)).tolist() == [True, True, False]
    assert np.isnan(median([a, b, c])).tolist() == [True, True, False]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: median([np.ones(4), np.ones(4)]), "buffer 0 has dtype float64"),
        (lambda: median([]), "buffers is empty"),
        (lambda: trimmed_mean([np.ones(4, np.float32), np.ones(5, np.float32)], 0.1), "buffer 1 has length 5"),
        (lambda: trimmed_mean([np.ones(4, np.float32)] * 4, 0.5), r"trim_fraction is 0.5, expected a number in \[0, 0.5\)"),
    ],
)
def test_robust_aggregators_reject_bad_input(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_combine_dispatches_to_each_aggregator() -> None:
    buffers, counts = make_updates(5, 1001)
    np.testing.assert_array_equal(combine("fedavg", buffers, counts), fedavg(buffers, counts))
    np.testing.assert_array_equal(combine("median", buffers, counts), median(buffers))
    np.testing.assert_array_equal(combine("trimmed-mean", buffers, counts, trim_fraction=0.2), trimmed_mean(buffers, 0.2))
    best = krum_select(buffers, 1, 1)[0]
    np.testing.assert_array_equal(combine("krum", buffers, counts, krum_f=1), buffers[best])
    chosen = krum_select(buffers, 1, 4)
    np.testing.assert_array_equal(combine("multi-krum", buffers, counts, krum_f=1),
                                  fedavg([buffers[i] for i in chosen], [counts[i] for i in chosen]))
    with pytest.raises(ValueError, match="unknown aggregator 'bulyan'"):
        combine("bulyan", buffers, counts)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 777, 1_663_369])
def test_all_finite_finds_one_bad_value_anywhere(bad: float, where: int) -> None:
    w = np.full(1_663_370, 3e38, dtype=np.float32)  # huge but finite: a float32 sum of these overflows
    assert all_finite(w)
    w[where] = bad
    assert not all_finite(w)


def test_weighted_fold_validates_its_total_and_output() -> None:
    from fedactors import _kernels

    buffers, counts = make_updates(2, 10)
    out = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="total is 0, expected a finite number > 0"):
        _kernels.weighted_fold(buffers, counts, total=0.0, out=out, start=True)
    with pytest.raises(ValueError, match="out is None"):
        _kernels.weighted_fold(buffers, counts, total=1.0, out=None, start=True)
    with pytest.raises(ValueError, match="out overlaps buffer 1"):
        _kernels.weighted_fold(buffers, counts, total=1.0, out=buffers[1], start=False)
