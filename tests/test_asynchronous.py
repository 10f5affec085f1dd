"""FedBuff's server step and the asynchronous loop's refusals (the schedule itself: tests/test_systems.py)."""

import numpy as np
import pytest

from fedactors.asynchronous import buffered_update
from test_systems import rounds_of, run_in_process, spirals_config

TOO_LARGE = "returned values too large for FedAvg's exact sum (|share x value| >= 2^18): rejected"


def test_a_stale_update_out_of_the_exact_sums_range_is_left_out_and_the_rest_averaged():
    """Issue 34: one such update raised, failing the whole server update (and, the run being deterministic, its resume)."""
    w = np.full(8, 0.25, np.float32)
    w_start = np.zeros(8, np.float32)
    fresh = np.full(8, 0.5, np.float32)
    stale = np.full(8, 4e6, np.float32)  # z = w + 1 * (stale - w_start): share 1/2 x 4e6 >= 2^18
    new, left_out = buffered_update(w, [(fresh, 10, 3, w), (stale, 10, 1, w_start)], 3, ("constant", 0.0, 0.0), 1.0)
    assert left_out == [1]
    assert new.tobytes() == fresh.tobytes()  # the average over the one kept, rescaled to its own examples
    new, left_out = buffered_update(w, [(stale, 10, 1, w_start)], 3, ("constant", 0.0, 0.0), 1.0)
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
    if speed is None:  # every client equally fast: FedBuff is FedAvg, the same refusals and the same bytes
        fedavg = run_in_process(spirals_config(rounds=4, **attack))
        assert [r["rejected"] for r in rounds_of(fedavg)] == [r["rejected"] for r in rows]
        assert fedavg[-1]["weights"].tobytes() == fedbuff[-1]["weights"].tobytes()
    else:
        assert any(r["staleness"]["max"] >= 1 for r in refused)  # a stale arrival among those refused
