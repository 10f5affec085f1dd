"""FedAvg's exact sum (csrc/exact.hpp, aggregate.ExactSum): its oracle, and the same bytes in any order and grouping."""

from __future__ import annotations

import numpy as np
import pytest

from fedactors import _kernels
from fedactors.aggregate import ExactSum, exact_fedavg_reference

ISAS = _kernels.available_isas()
LIMIT = 2.0**18  # |share * value| must stay below it


def updates(k: int, n: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """k buffers of weights-like values (a spread of magnitudes, signs, zeros) and unequal example counts."""
    rng = np.random.default_rng(seed)
    buffers = []
    for _ in range(k):
        x = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 3, n)).astype(np.float32)
        x[rng.random(n) < 0.01] = 0.0
        x[rng.random(n) < 0.01] = -0.0
        buffers.append(x)
    return buffers, rng.integers(1, 700, k).tolist()


def summed(buffers, counts, order=None, groups=1, total=None, threads=0, isa="auto") -> ExactSum:
    """The ExactSum of the buffers taken in `order`, split into `groups` partial sums merged in reverse."""
    total = sum(counts) if total is None else total
    order = range(len(buffers)) if order is None else order
    parts = [ExactSum(len(buffers[0]), total, threads=threads) for _ in range(groups)]
    for i, j in enumerate(order):
        s = parts[i % groups]
        assert _kernels.exact_add(s.acc, buffers[j], s.share(counts[j]), threads=threads, isa=isa) == 0
        s.examples += counts[j]
    whole = ExactSum(len(buffers[0]), total, threads=threads)
    for s in reversed(parts):
        whole.merge(s.acc, s.examples)
    return whole


@pytest.mark.parametrize("n", [1, 7, 16_385, 200_003])  # 16,385: two blocks, the second of one value
@pytest.mark.parametrize("k", [1, 7, 50])
def test_the_sum_is_the_oracles_at_every_thread_count_and_isa(k, n):
    buffers, counts = updates(k, n)
    expected = exact_fedavg_reference(buffers, counts)
    for threads in (1, 2):
        for isa in ISAS:
            s = summed(buffers, counts, threads=threads, isa=isa)
            assert _kernels.exact_result(s.acc, threads=threads, isa=isa).tobytes() == expected.tobytes(), (threads, isa)


def test_any_order_and_any_grouping_gives_the_same_integers_and_bytes():
    buffers, counts = updates(30, 50_000, seed=1)
    reference = summed(buffers, counts)
    rng = np.random.default_rng(2)
    for _ in range(6):
        order = rng.permutation(30).tolist()
        s = summed(buffers, counts, order=order, groups=int(rng.integers(1, 8)))
        assert np.array_equal(s.acc, reference.acc)
        assert s.result().tobytes() == reference.result().tobytes()
    # A float32 running sum is not like that: the same terms in another order round differently.
    floats = [np.float32(c / sum(counts)) * b for b, c in zip(buffers, counts)]
    forward, backward = np.zeros(50_000, np.float32), np.zeros(50_000, np.float32)
    for f in floats:
        forward += f
    for f in reversed(floats):
        backward += f
    assert forward.tobytes() != backward.tobytes()


def test_the_result_is_the_average_rounded_once_where_the_terms_are_on_the_grid():
    # Values that are multiples of 2^-20 with shares 1/4: every term is exact, so the result is the
    # float32 nearest the true average (computed here in exact integers).
    rng = np.random.default_rng(3)
    ints = [rng.integers(-2**30, 2**30, 10_000) for _ in range(4)]
    buffers = [(i * 2.0**-20).astype(np.float32) for i in ints]
    exact_ints = [np.round(b.astype(np.float64) * 2**20).astype(np.int64) for b in buffers]  # the floats' own values
    true_average = sum(exact_ints).astype(np.float64) / 4 * 2.0**-20  # exact: below 2^53 in units of 2^-22
    assert summed(buffers, [5, 5, 5, 5]).result().tobytes() == true_average.astype(np.float32).tobytes()


def test_a_buffer_with_a_value_out_of_range_or_not_finite_is_left_out_and_the_sum_untouched():
    buffers, counts = updates(3, 40_000, seed=4)
    s = summed(buffers[1:], counts[1:], total=sum(counts))  # room left for client 0's share
    before = s.acc.copy()
    share = s.share(counts[0])
    for bad in (np.float32(LIMIT / share * 1.0001), np.float32(-LIMIT / share * 1.0001), np.nan, np.inf, -np.inf):
        x = buffers[0].copy()
        x[35_000] = bad  # in the third block: the first two are added, then taken out again
        assert not s.add(x, counts[0])
        assert np.array_equal(s.acc, before)
    assert _kernels.exact_add(s.acc, np.full(40_000, np.nan, np.float32), 0.5) == 40_000
    assert np.array_equal(s.acc, before)
    x = buffers[0].copy()
    x[0] = np.float32(LIMIT / share * 0.999)  # just inside
    assert s.add(x, counts[0])


def test_fewer_clients_than_sampled_are_averaged_by_rescaling():
    buffers, counts = updates(5, 20_000, seed=5)
    total = sum(counts)
    s = ExactSum(20_000, total)
    for b, c in zip(buffers[:3], counts[:3]):
        assert s.add(b, c)
    expected = exact_fedavg_reference(buffers[:3], counts[:3], total=total)
    assert s.result().tobytes() == expected.tobytes()
    np.testing.assert_allclose(s.result(), exact_fedavg_reference(buffers[:3], counts[:3]), rtol=1e-6, atol=1e-9)


def test_shares_adding_up_to_more_than_1_are_refused_not_averaged_wrongly():
    """Issue 34: a client added twice, or a wrong total, gave a silently wrong average."""
    buffers, counts = updates(3, 20_000, seed=6)
    s = summed(buffers, counts)
    before = s.acc.copy()
    twice = r"clients of \d+ examples summed where the round has \d+: the shares add up to more than 1 \(a client added twice"
    with pytest.raises(ValueError, match=twice):
        s.add(buffers[0], counts[0])
    with pytest.raises(ValueError, match=twice):
        s.merge(summed(buffers[:1], counts[:1], total=sum(counts)).acc, counts[0])
    assert np.array_equal(s.acc, before) and s.examples == sum(counts)
    with pytest.raises(ValueError, match=twice):
        ExactSum(20_000, 10).add(buffers[0], 11)


RANGE = r"the exact sum's range \(\|acc\| < 2\*\*51 grid units\): the shares summed add up to more than 1"


@pytest.mark.parametrize("isa", ISAS)
def test_the_kernels_refuse_an_accumulator_taken_past_its_range_and_leave_it_as_it_was(isa):
    """Called directly with shares adding up to more than 1, the kernels raise (no wrong average, no int64 overflow)."""
    x = np.full(40_000, np.float32(LIMIT * 0.99), np.float32)  # each a term just inside: 0.99 * 2^50
    acc = np.zeros(40_000, np.int64)
    assert _kernels.exact_add(acc, x, 1.0, isa=isa) == 0 and _kernels.exact_add(acc, x, 1.0, isa=isa) == 0
    before = acc.copy()  # 1.98 * 2^50, inside 2^51
    with pytest.raises(ValueError, match="acc would leave " + RANGE):  # a third share of 1
        _kernels.exact_add(acc, x, 1.0, isa=isa)
    assert np.array_equal(acc, before)
    with pytest.raises(ValueError, match="acc \\+ other would leave " + RANGE):
        _kernels.exact_merge(acc, before.copy())
    assert np.array_equal(acc, before)
    big = np.full(40_000, 2**62, np.int64)  # merged in int64, this overflowed (undefined behaviour)
    with pytest.raises(ValueError, match="acc \\+ other would leave"):
        _kernels.exact_merge(big, big.copy())
    assert (big == 2**62).all()
    with pytest.raises(ValueError, match="acc holds values past " + RANGE):
        _kernels.exact_result(big, isa=isa)
    acc[7] = -(2**51) - 1  # the first value out of range, below
    with pytest.raises(ValueError, match="acc holds values past "):
        _kernels.exact_result(acc, isa=isa)


def test_out_and_buffer_may_not_overlap_the_accumulator_anywhere_in_its_8_bytes_a_value():
    acc = np.zeros(8, np.int64)
    with pytest.raises(ValueError, match="out overlaps acc"):
        _kernels.exact_result(acc, out=acc.view(np.float32)[8:])  # the accumulator's second half
    with pytest.raises(ValueError, match="acc overlaps buffer"):
        _kernels.exact_add(acc, acc.view(np.float32)[8:], 0.5)


@pytest.mark.parametrize("call, message", [
    (lambda: _kernels.exact_add(np.zeros(4, np.int32), np.zeros(4, np.float32), 0.5), "acc has dtype int32"),
    (lambda: _kernels.exact_add(np.zeros(5, np.int64), np.zeros(4, np.float32), 0.5), "acc has length 5, expected 4"),
    (lambda: _kernels.exact_add(np.zeros(4, np.int64), np.zeros(4, np.float64), 0.5), "buffer has dtype float64"),
    (lambda: _kernels.exact_add(np.zeros(4, np.int64), np.zeros(4, np.float32), 1.5), r"weight is 1.5, expected a number in \[0, 1\]"),
    (lambda: _kernels.exact_merge(np.zeros(4, np.int64), np.zeros(3, np.int64)), "acc has length 4, expected 3"),
    (lambda: _kernels.exact_result(np.zeros(4, np.int64), factor=0.0), "factor is 0, expected a finite number > 0"),
])
def test_bad_arguments_raise_value_error_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()
