"""The collection phase both loops share (fedactors.runtime.collect): retry, refuse, accept and the counts, with a fake dispatch."""

from dataclasses import dataclass

import numpy as np
import pytest

from fedactors.runtime.collect import MAX_ATTEMPTS, NOT_FINITE, TOO_LARGE, Collection, Refused
from fedactors.errors import RoundFailed
from fedactors.messages import Failure


@dataclass
class Result:
    weights: np.ndarray
    host: int = 0


class FakePool:
    """A dispatch: each key's outcome on each try it is sent, from `script` (key -> outcomes, the last repeats)."""

    def __init__(self, **script):
        self.script = {int(k[1:]): v for k, v in script.items()}  # c7=... -> client 7
        self.sent: list[list[int]] = []  # what each try dispatched

    def __call__(self, todo):
        self.sent.append(list(todo))
        for key in reversed(todo):  # back from the hosts in another order than sent
            outcomes = self.script.get(key, ["ok"])
            outcome = outcomes[min(self.sent_count(key), len(outcomes)) - 1]
            if outcome == "fail":
                yield key, Failure(key, 1, f"RuntimeError: client {key} broke")
            elif outcome == "nan":
                yield key, Result(np.array([1.0, np.nan], np.float32))
            elif outcome == "range":
                yield key, Refused(host=2, finite=True)  # as a host's exact partial sum refuses it
            else:
                yield key, Result(np.full(2, float(key), np.float32))

    def sent_count(self, key):
        return sum(key in t for t in self.sent)


def test_a_failed_client_is_retried_and_its_second_result_used():
    pool = FakePool(c5=["fail", "ok"])
    c = Collection([3, 5, 9], required=3).collect(pool)
    assert pool.sent == [[3, 5, 9], [5]]
    assert c.usable == [3, 5, 9] and c.retried == [5] and c.dropped == [] and c.rejected == []
    assert [f.error for f in c.failures] == ["RuntimeError: client 5 broke"]
    c.accept(1, of=3, min_fit_fraction=1.0)  # enough: no error


def test_a_client_that_fails_every_time_is_tried_max_attempts_times_and_fails_the_round_naming_it():
    pool = FakePool(c7=["fail"])
    c = Collection([2, 7, 4], required=3).collect(pool)
    assert pool.sent == [[2, 7, 4], [7], [7]] and MAX_ATTEMPTS == 3
    assert c.retried == [7, 7, 7] and c.dropped == [7] and c.uploads == 2  # once per try it failed with too few in
    with pytest.raises(RoundFailed) as failed:
        c.accept(4, of=3, min_fit_fraction=1.0)
    assert str(failed.value) == ("round 4: clients [7] failed 3 times, leaving 2 of 3 updates where 3 are required "
                                 "(errors: RuntimeError: client 7 broke)")


def test_a_nan_update_is_refused_never_retried_and_counted_as_rejected_and_dropped():
    pool = FakePool(c1=["nan"])
    c = Collection([0, 1, 2], required=2).collect(pool)
    assert pool.sent == [[0, 1, 2]]
    assert c.usable == [0, 2] and c.rejected == [1] and c.dropped == [1] and c.retried == []
    assert [(f.client_id, f.error) for f in c.failures] == [(1, NOT_FINITE)]
    assert c.uploads == 3  # a refused update was sent all the same
    c.accept(1, of=3, min_fit_fraction=0.6)
    with pytest.raises(RoundFailed, match=r"^round 1: clients \[1\] returned NaN or infinite weights, which are never "
                                          r"aggregated, leaving 2 of 3 updates where 3 are required; --min-fit-fraction "
                                          r"below 1 accepts rounds without them$"):
        Collection([0, 1, 2], required=3).collect(FakePool(c1=["nan"])).accept(1, of=3, min_fit_fraction=1.0)


def test_out_of_range_is_refused_alike_where_the_host_found_it_by_admit_and_after_the_fact():
    """The synchronous loop learns it from a host's sum or its exact sum on arrival, FedBuff only once the update is
    weighted by its staleness: each ends as the same refusal."""
    by_host = Collection([0, 1], required=1).collect(FakePool(c1=["range"]))

    def admit(key, result):
        return Refused(result.host, finite=True) if key == 1 else None

    by_admit = Collection([0, 1], required=1).collect(FakePool(), admit)
    after = Collection([0, 1], required=1).collect(FakePool())
    assert after.usable == [0, 1]
    after.refuse(1, Refused(host=2, finite=True))
    for c in (by_host, by_admit, after):
        assert c.usable == [0] and c.too_large == [1] and c.rejected == [1] and c.dropped == [1] and c.retried == []
        assert [f.error for f in c.failures] == [TOO_LARGE] and c.uploads == 2
    with pytest.raises(RoundFailed, match=r"clients \[1\] returned values too large for FedAvg's exact sum"):
        after.required = 2
        after.accept(3, of=2, min_fit_fraction=1.0)


def test_the_retry_rule_stops_once_required_usable_results_are_in():
    """README: with --min-fit-fraction, once ceil(F m) returned the failed ones are dropped instead of retrained.
    The asynchronous loop retried them all the same (issue 35: the loops had drifted)."""
    pool = FakePool(c6=["fail", "ok"])
    c = Collection([6, 8, 9], required=2).collect(pool)
    assert pool.sent == [[6, 8, 9]] and c.retried == [] and c.usable == [8, 9] and c.dropped == [6]
    c.accept(1, of=3, min_fit_fraction=0.5)
    # Too few without it: retried, and only it.
    pool = FakePool(c6=["fail", "ok"], c8=["fail", "fail", "ok"])
    c = Collection([6, 8, 9], required=2).collect(pool)
    assert pool.sent == [[6, 8, 9], [6, 8]] and c.retried == [8, 6] and c.usable == [6, 9] and c.dropped == [8]


def test_keys_of_a_buffer_name_their_client_and_a_private_round_names_nobody():
    def dispatch(todo):  # FedBuff's keys: (client, start batch); client 4 arrives twice, and fails the second time
        for client, batch in todo:
            yield (client, batch), (Failure(client, 0, "RuntimeError: x", round=batch) if (client, batch) == (4, 2)
                                    else Result(np.zeros(2, np.float32)))

    c = Collection([(4, 1), (4, 2), (5, 2)], required=3, client=lambda key: key[0]).collect(dispatch, attempts=1)
    assert c.usable == [(4, 1), (5, 2)] and c.dropped == [(4, 2)]
    with pytest.raises(RoundFailed, match=r"^round 2: clients \[4\] failed once, leaving 2 of 3 updates"):
        c.accept(2, of=3, min_fit_fraction=1.0)
    with pytest.raises(RoundFailed) as failed:
        c.accept(2, of=3, min_fit_fraction=1.0, private=True, divergence=lambda: "never said")
    assert str(failed.value) == ("round 2: sampled clients failed once, leaving fewer updates than --min-fit-fraction 1 "
                                 "of the round's (errors: RuntimeError: x)")


def test_nobody_to_collect_dispatches_nothing():
    pool = FakePool()
    c = Collection([], required=0).collect(pool)
    assert pool.sent == [] and c.usable == [] and c.uploads == 0
    c.accept(1, of=0, min_fit_fraction=1.0)
