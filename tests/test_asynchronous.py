"""FedBuff's server step and the asynchronous loop's refusals (the schedule itself: tests/test_systems.py)."""

import numpy as np
import pytest

from fedactors.runtime.asynchronous import buffered_update
from fedactors.runtime.client import ClientHost
from fedactors.errors import RoundFailed
from test_systems import rounds_of, run_in_process, spirals_config

TOO_LARGE = "returned values too large for FedAvg's exact sum (|share x value| >= 2^18): rejected"


def test_a_stale_update_out_of_the_exact_sums_range_is_left_out_and_the_rest_averaged():
    """Issue 34: one such update raised, failing the whole server update (and, the run being deterministic, its resume)."""
    w = np.full(8, 0.25, np.float32)
    w_start = np.zeros(8, np.float32)
    fresh = np.full(8, 0.5, np.float32)
    stale = np.full(8, 4e6, np.float32)  # z = w + 1 * (stale - w_start): share 1/2 x 4e6 >= 2^18
    new, left_out = buffered_update(w, [(fresh, 10, 0, w), (stale, 10, 2, w_start)], ("constant", 0.0, 0.0), 1.0)
    assert left_out == [1]
    assert new.tobytes() == fresh.tobytes()  # the average over the one kept, rescaled to its own examples
    new, left_out = buffered_update(w, [(stale, 10, 2, w_start)], ("constant", 0.0, 0.0), 1.0)
    assert (new, left_out) == (None, [0])


@pytest.mark.parametrize("speed", [None, "lognormal:1"])
def test_fedbuff_rejects_an_update_too_large_for_the_exact_sum_as_a_synchronous_round_does(speed):
    """Byzantine clients sending 1e9 times their update reversed: rejected by name, the rest averaged, the run goes on."""
    attack = dict(byzantine=2, attack="sign-flip", attack_scale=1e9, min_fit_fraction=0.2)
    fedbuff = run_in_process(spirals_config(rounds=4, strategy="fedbuff", concurrency=5, buffer=5, client_speed=speed,
                                            staleness="constant", **attack))
    rows = rounds_of(fedbuff)
    assert len(rows) == 4 and np.isfinite(fedbuff[-1]["weights"]).all()
    refused = [r for r in rows if r["rejected"]]
    assert refused, "no attacker arrived: the test shows nothing"
    for r in refused:
        assert r["rejected"] == r["byzantine"] and r["num_updates"] == 5 - len(r["rejected"])
        assert all(TOO_LARGE in f for f in r["failures"]) and r["retried"] == []
        assert r["dropped"] == r["rejected"]  # left out of the buffer, as a synchronous round counts a refused client
    if speed is None:  # every client equally fast: FedBuff is FedAvg, the same refusals and the same bytes
        fedavg = run_in_process(spirals_config(rounds=4, **attack))
        assert [r["rejected"] for r in rounds_of(fedavg)] == [r["rejected"] for r in rows]
        assert fedavg[-1]["weights"].tobytes() == fedbuff[-1]["weights"].tobytes()
    else:
        assert any(r["staleness"]["max"] >= 1 for r in refused)  # a stale arrival among those refused


def _run_on(host_cls, cfg):
    """`cfg` run in this process on two hosts of `host_cls` (test_systems.run_in_process's, with another host)."""
    import torch

    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
    from fedactors.task import load_arrays, load_task

    threads = torch.get_num_threads()
    try:
        data = load_arrays(load_task(cfg.task), cfg.data, None)
        parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed)
        pool = LocalPool([host_cls(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i,
                                   threads=1) for i in range(2)])
        return list(Coordinator(cfg, pool, num_test=len(data.y_test)).run())
    finally:
        torch.set_num_threads(threads)


class FailsOnce(ClientHost):
    """The first training of the run raises; every other is honest."""

    failed = False

    def _fit(self, *args, **kwargs):
        if not FailsOnce.failed:
            FailsOnce.failed = True
            raise RuntimeError("injected fault")
        return super()._fit(*args, **kwargs)


class Broken(ClientHost):
    def _fit(self, *args, **kwargs):
        raise RuntimeError("always broken")


FEDBUFF = dict(rounds=2, strategy="fedbuff", concurrency=5, buffer=5, staleness="constant")


def test_fedbuff_retries_a_failure_to_the_same_bytes_but_not_once_min_fit_fraction_is_met():
    """README: once ceil(F x buffer) arrivals returned, a failed one is dropped instead of retrained. The synchronous
    loop stopped there; FedBuff retried it all the same (issue 35: the two loops had drifted)."""
    clean = run_in_process(spirals_config(**FEDBUFF))
    FailsOnce.failed = False
    retried = _run_on(FailsOnce, spirals_config(**FEDBUFF))
    r = rounds_of(retried)[0]
    assert len(r["retried"]) == 1 and r["num_updates"] == 5 and r["dropped"] == []
    assert retried[-1]["weights"].tobytes() == clean[-1]["weights"].tobytes()
    FailsOnce.failed = False
    accepted = _run_on(FailsOnce, spirals_config(**FEDBUFF, min_fit_fraction=0.8))
    r = rounds_of(accepted)[0]
    assert r["retried"] == [] and r["num_updates"] == 4 and len(r["dropped"]) == 1
    assert "injected fault" in r["failures"][0]
    assert accepted[-1]["weights"].tobytes() != clean[-1]["weights"].tobytes()


def test_a_buffer_that_keeps_failing_fails_as_a_synchronous_round_does():
    """The same message as run_round's: who failed how many times, how many are left of how many required."""
    with pytest.raises(RoundFailed, match=r"^round 1: clients \[\d+(, \d+){4}\] failed 3 times, leaving 0 of 5 updates "
                                          r"where 5 are required \(errors: RuntimeError: always broken\)$"):
        _run_on(Broken, spirals_config(**FEDBUFF))
