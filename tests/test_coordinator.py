import time

import numpy as np
import pytest

from fedactors.runtime.client import ClientHost
from fedactors.config import RunConfig
from fedactors.runtime.coordinator import Coordinator, LocalPool, balance, eval_slices
from fedactors.data.partition import partition
from fedactors.errors import RoundFailed


def test_balance_spreads_equal_clients_evenly_and_is_deterministic():
    plan = balance([3, 1, 4, 9, 5], [600] * 10, [0, 1])
    assert sorted(len(v) for v in plan.values()) == [2, 3]
    assert sorted(c for v in plan.values() for c in v) == [1, 3, 4, 5, 9]
    assert plan == balance([3, 1, 4, 9, 5], [600] * 10, [0, 1])


def test_balance_puts_big_clients_apart():
    sizes = [1000, 1000, 10, 10, 10, 10]
    plan = balance(range(6), sizes, [0, 1])
    loads = [sum(sizes[c] for c in plan[h]) for h in (0, 1)]
    assert loads == [1020, 1020]


def test_eval_slices_cover_the_test_set():
    for parts in (1, 2, 3, 7):
        s = eval_slices(10_000, parts)
        assert s[0][0] == 0 and s[-1][1] == 10_000 and len(s) == parts
        assert all(a[1] == b[0] for a, b in zip(s, s[1:]))


def _pool(mnist, cfg, hosts, cls=ClientHost):
    parts = partition(mnist.train_labels, cfg.clients, cfg.partition, cfg.seed)
    args = (mnist.train_images, mnist.train_labels, parts, mnist.test_images, mnist.test_labels)
    return LocalPool([cls(cfg, *args, host_id=i) for i in range(hosts)])


CFG = RunConfig(clients=100, frac=0.03, rounds=2, epochs=1, batch_size=50, partition="iid", seed=1, eval_every=2)


def _run(coordinator):
    events = list(coordinator.run())
    return [e for e in events if e["type"] == "round"], events[-1]


def test_rounds_learn_and_do_not_depend_on_host_count(mnist):
    rounds1, done1 = _run(Coordinator(CFG, _pool(mnist, CFG, 1), num_test=2000))
    rounds3, done3 = _run(Coordinator(CFG, _pool(mnist, CFG, 3), num_test=2000))
    assert done1["type"] == "done" and done1["round"] == 2
    np.testing.assert_array_equal(done1["weights"], done3["weights"])
    assert [r["clients"] for r in rounds1] == [r["clients"] for r in rounds3]
    assert len(rounds1[0]["clients"]) == 3
    # eval_every=2: round 1 is not evaluated, round 2 (and the last) is.
    assert rounds1[0]["accuracy"] is None and rounds1[1]["accuracy"] > 0.5
    assert rounds1[1]["accuracy"] == rounds3[1]["accuracy"]
    assert all(r["num_updates"] == 3 and r["round_seconds"] >= r["train_seconds"] > 0 for r in rounds1)


@pytest.mark.parametrize("host_sums", [True, False])
def test_fedavg_is_the_exact_sum_of_the_updates_whatever_the_hosts_and_their_grouping(mnist, host_sums):
    # Five clients on 1, 2 and 3 hosts: summed per client as they arrive (in balance() order, not the
    # sampled one) or per host: the exact sum of the same updates, to the byte, every time.
    from fedactors.aggregate import exact_fedavg_reference, fedavg

    cfg = RunConfig(**{**CFG.to_dict(), "frac": 0.05, "rounds": 1, "host_sums": host_sums})
    results = {}
    for hosts in (1, 2, 3):
        pool = _pool(mnist, cfg, hosts)
        rounds, done = _run(Coordinator(cfg, pool, num_test=500))
        results[hosts] = done["weights"].tobytes()
        assert sorted(rounds[0]["hosts"]) == sorted(rounds[0]["clients"]) and len(set(rounds[0]["hosts"].values())) == hosts
    sampled = rounds[0]["clients"]
    arrival = [c for cids in balance(sampled, pool.num_examples(), range(3)).values() for c in cids]
    assert arrival != sampled
    w0 = pool.initial_weights()
    updates = [pool.hosts[0].train(w0, c, 1) for c in sampled]
    expected = exact_fedavg_reference([u.weights for u in updates], [u.num_examples for u in updates])
    assert results[1] == results[2] == results[3] == expected.tobytes()
    # What it replaced, the float32 sum in client order, rounds after every client: other bytes, same values.
    floated = fedavg([u.weights for u in updates], [u.num_examples for u in updates])
    assert floated.tobytes() != expected.tobytes()
    np.testing.assert_allclose(floated, expected, rtol=1e-6, atol=1e-7)


class FlakyHost(ClientHost):
    """Fails the first training call it gets, then behaves."""

    failed = False

    def _fit(self, global_weights, client_id, round_idx, *controls):
        if not FlakyHost.failed:
            FlakyHost.failed = True
            raise RuntimeError("injected fault")
        return super()._fit(global_weights, client_id, round_idx, *controls)


class BrokenHost(ClientHost):
    def _fit(self, global_weights, client_id, round_idx, *controls):
        raise RuntimeError("always broken")


@pytest.mark.parametrize("host_sums", [True, False])
def test_a_failed_client_is_retried_and_the_round_is_unchanged(mnist, host_sums):
    cfg = RunConfig(**{**CFG.to_dict(), "rounds": 1, "batch_size": 50, "host_sums": host_sums})
    _, clean = _run(Coordinator(cfg, _pool(mnist, cfg, 2), num_test=500))
    FlakyHost.failed = False
    rounds, flaky = _run(Coordinator(cfg, _pool(mnist, cfg, 2, FlakyHost), num_test=500))
    np.testing.assert_array_equal(clean["weights"], flaky["weights"])
    assert len(rounds[0]["retried"]) == 1 and "injected fault" in rounds[0]["failures"][0]


def test_a_client_that_keeps_failing_fails_the_round_loudly(mnist):
    coordinator = Coordinator(CFG, _pool(mnist, CFG, 1, BrokenHost), num_test=500)
    with pytest.raises(RoundFailed, match=r"round 1: clients \[.*\] failed 3 times, leaving 0 of 3 updates where 3 are required .*always broken"):
        list(coordinator.run())


def test_a_dp_rounds_failure_names_neither_its_clients_nor_how_many(mnist):
    """README: a DP run leaves out who was sampled and how many; its failure message listed the sampled ids."""
    cfg = RunConfig(**{**CFG.to_dict(), "strategy": "dp-fedavg", "frac": 0.1, "dp_seed": 3})
    coordinator = Coordinator(cfg, _pool(mnist, cfg, 1, BrokenHost), num_test=500)
    assert coordinator.strategy.sample(1)  # somebody was sampled, and failed
    with pytest.raises(RoundFailed) as failed:
        list(coordinator.run())
    assert str(failed.value) == ("round 1: sampled clients failed 3 times, leaving fewer updates than "
                                 "--min-fit-fraction 1 of the round's (errors: RuntimeError: always broken)")


def test_min_fit_fraction_accepts_fewer_updates_without_retrying(mnist):
    cfg = RunConfig(**{**CFG.to_dict(), "rounds": 1, "batch_size": 50, "min_fit_fraction": 0.5})
    parts = partition(mnist.train_labels, cfg.clients, cfg.partition, cfg.seed)
    args = (mnist.train_images, mnist.train_labels, parts, mnist.test_images, mnist.test_labels)
    pool = LocalPool([ClientHost(cfg, *args, host_id=0), BrokenHost(cfg, *args, host_id=1)])
    rounds, done = _run(Coordinator(cfg, pool, num_test=500))
    r = rounds[0]
    assert r["num_updates"] == 2 and len(r["dropped"]) == 1 and r["retried"] == []
    assert set(r["hosts"].values()) == {0}
    # The average is over the two clients that returned, nothing else: their exact sum, rescaled.
    from fedactors.aggregate import exact_fedavg_reference

    w0 = pool.initial_weights()
    kept = [c for c in r["clients"] if c not in r["dropped"]]
    expected = exact_fedavg_reference([pool.hosts[0].train(w0, c, 1).weights for c in kept], [600, 600], total=1800)
    assert done["weights"].tobytes() == expected.tobytes()


def _nan_cfg(**kw):
    # Which clients are faulty is fixed by the seed; pick a seed where one of round 1's 3 is.
    from fedactors.attacks import byzantine_clients
    from fedactors.seeding import sample_clients

    base = {**CFG.to_dict(), "rounds": 1, "byzantine": 10, "attack": "nan", **kw}
    for seed in range(50):
        cfg = RunConfig.from_dict({**base, "seed": seed})
        faulty = byzantine_clients(seed, cfg.clients, cfg.byzantine) & set(sample_clients(seed, 1, cfg.clients, 3).tolist())
        if len(faulty) == 1:
            return cfg, next(iter(faulty))
    raise AssertionError("no seed puts exactly one faulty client in round 1")


@pytest.mark.parametrize("host_sums", [True, False])
def test_a_nan_update_fails_the_round_loudly_and_is_never_averaged(mnist, host_sums):
    cfg, bad = _nan_cfg(host_sums=host_sums)
    coordinator = Coordinator(cfg, _pool(mnist, cfg, 2), num_test=500)
    before = coordinator.weights.copy()
    with pytest.raises(RoundFailed, match=rf"round 1: clients \[{bad}\] returned NaN or infinite weights, which are never "
                                          r"aggregated, leaving 2 of 3 updates where 3 are required; --min-fit-fraction"):
        list(coordinator.run())
    np.testing.assert_array_equal(coordinator.weights, before)


@pytest.mark.parametrize("aggregator, host_sums", [("fedavg", True), ("fedavg", False), ("median", False)])
def test_under_min_fit_fraction_a_nan_update_is_rejected_and_the_rest_averaged(mnist, aggregator, host_sums):
    cfg, bad = _nan_cfg(min_fit_fraction=0.6, aggregator=aggregator, host_sums=host_sums)
    pool = _pool(mnist, cfg, 2)
    rounds, done = _run(Coordinator(cfg, pool, num_test=500))
    r = rounds[0]
    assert r["rejected"] == [bad] and r["dropped"] == [bad] and r["byzantine"] == [bad] and r["retried"] == []
    assert r["num_updates"] == 2 and "returned NaN or infinite weights: rejected" in r["failures"][0]
    assert np.isfinite(done["weights"]).all() and r["accuracy"] > 0.3
    from fedactors.aggregate import exact_fedavg_reference, median_reference

    w0 = pool.initial_weights()
    kept = [pool.hosts[0].train(w0, c, 1).weights for c in r["clients"] if c != bad]
    expected = (exact_fedavg_reference(kept, [600, 600], total=1800) if aggregator == "fedavg"
                else median_reference(kept))
    assert done["weights"].tobytes() == expected.tobytes()


# ---- RayPool over real Ray actors (light stand-ins for ClientHost: no torch, no data) ----------

class StandInHost:
    """What RayPool calls on a ClientHost, answering at once."""

    def __init__(self, host_id: int) -> None:
        self.host_id = host_id

    def load(self, *data) -> bool:
        return True

    def num_examples(self) -> list[int]:
        return [600] * 100

    def initial_weights(self) -> np.ndarray:
        return np.zeros(8, np.float32)

    def train(self, weights: np.ndarray, client_id: int, round_idx: int):
        from fedactors.messages import Update

        return Update(client_id, round_idx, weights + 1, 600, 0.5, 0.01, host=self.host_id)

    def evaluate(self, weights: np.ndarray, start: int, stop: int, hits: bool = False, held_out: bool = False):
        from fedactors.messages import EvalPart

        return EvalPart(loss_sum=0.0, correct=stop - start, count=stop - start, seconds=0.0)


@pytest.fixture(scope="module")
def ray_pool_factory(local_ray):
    import ray

    actors = []

    def make(n: int, restarts: int = 0):
        made = [ray.remote(StandInHost).options(num_cpus=0, max_restarts=restarts).remote(i) for i in range(n)]
        actors.extend(made)
        from fedactors.runtime.coordinator import RayPool

        pool = RayPool(made, [])
        pool.REVIVE_WAIT_SECONDS = 5.0
        return pool, made

    yield make
    for actor in actors:
        ray.kill(actor)


def test_the_global_weights_go_into_the_object_store_once_for_evaluation_training_and_retries(ray_pool_factory, monkeypatch):
    import ray

    pool, _ = ray_pool_factory(2)
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda value: puts.append(value) or real_put(value))
    weights = np.ones(8, np.float32)
    pool.evaluate(weights, 100)  # a round's result is evaluated ...
    list(pool.train(weights, 2, [1, 2, 3]))  # ... and the next round trains from it ...
    list(pool.train(weights, 2, [3]))  # ... as does a retry
    assert len(puts) == 1
    list(pool.train(weights + 1, 3, [1]))  # a new array is a new put
    assert len(puts) == 2


def test_a_host_lost_for_good_is_reported_once_and_the_round_goes_on_without_it(ray_pool_factory):
    import ray

    pool, actors = ray_pool_factory(2)
    ray.kill(actors[1], no_restart=True)
    results = list(pool.train(np.ones(8, np.float32), 1, [0, 1, 2, 3]))
    failed = [r for r in results if not hasattr(r, "weights")]
    assert failed and all(f.host == 1 for f in failed)
    retried = list(pool.train(np.ones(8, np.float32), 1, [f.client_id for f in failed]))  # the coordinator's retry
    assert all(hasattr(r, "weights") and r.host == 0 for r in retried)
    deadline = time.monotonic() + 30
    lost = {}
    while not lost and time.monotonic() < deadline:  # Ray's verdict on the restart comes asynchronously
        pool._revive(wait_seconds=1.0)
        lost = pool.newly_lost()
    assert list(lost) == [1] and "Ray gave up restarting it" in lost[1]
    assert pool.newly_lost() == {}  # once


def test_with_every_host_lost_for_good_training_and_evaluation_fail_naming_them(ray_pool_factory):
    import ray

    pool, actors = ray_pool_factory(2)
    for actor in actors:
        ray.kill(actor, no_restart=True)
    with pytest.raises(RoundFailed, match=r"evaluation: .*(host 0: Ray gave up|no client host came back)"):
        pool.evaluate(np.ones(8, np.float32), 100)
    failures = list(pool.train(np.ones(8, np.float32), 1, [5, 6]))
    assert [f.client_id for f in failures] == [5, 6]
    assert "every client host is lost for good (host 0: Ray gave up restarting it" in failures[0].error
    assert "host 1: Ray gave up restarting it" in failures[0].error
