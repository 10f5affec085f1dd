"""Issue 36 item 1: each client's own state lives in the store, and a checkpoint writes only the clients whose state
changed, in the same transaction as the round (fedactors.runtime.states, RedisStore.save's `clients`)."""

from __future__ import annotations

import numpy as np
import pytest

from fedactors.algorithms import Algorithm, LocalClient, Reply
from fedactors.config import RunConfig
from fedactors.errors import CheckpointError
from fedactors.store.checkpoint import Checkpoint, RedisStore, manifest_extra, manifest_from


def _ckpt(round_: int, manifest: dict[int, int]) -> Checkpoint:
    return Checkpoint("run-s", round_, np.full(4, round_, np.float32), "fp", {}, [],
                      {"clients": manifest_extra(manifest)} if manifest else {})


def _state(client: int, round_: int) -> dict[str, np.ndarray]:
    return {"algorithm/c_i": np.full(3, client + round_ / 100, np.float32),
            "feedback/residual": np.arange(5, dtype=np.float32) * round_}


def test_the_store_keeps_exactly_the_client_blobs_its_kept_checkpoints_name(redis_server):
    """Random rounds of random clients, --keep 1..3, and a resume from an older kept round that abandons the newer
    ones: after every save, the clients' hash holds exactly the blobs some kept checkpoint names, and each kept
    checkpoint reads back every client's state as it was after that round."""
    rng = np.random.default_rng(7)
    with RedisStore(redis_server.url, retry_seconds=5) as store:
        for keep in (1, 2, 3):
            store.delete("run-s")
            manifests: dict[int, dict[int, int]] = {}  # round -> its manifest, for every checkpoint written
            manifest: dict[int, int] = {}
            round_ = 0
            for step in range(14):
                if step == 9 and keep > 1:  # resume from the oldest kept round: the newer ones are an abandoned future
                    round_ = store.info("run-s").rounds[0]
                    manifest = dict(manifests[round_])
                round_ += 1
                changed = sorted(rng.choice(12, size=int(rng.integers(0, 5)), replace=False).tolist())
                manifest.update({c: round_ for c in changed})
                manifests[round_] = dict(manifest)
                store.save(_ckpt(round_, manifest), keep, clients={c: _state(c, round_) for c in changed})
                kept = store.info("run-s").rounds
                named = {f"{c}@{r}" for k in kept for c, r in manifests[k].items()}
                held = {f.decode() for f in store._redis.hkeys(store._clients_key("run-s"))}
                assert held == named, (keep, step, kept)
                for k in kept:
                    ckpt = store.load("run-s", k)
                    assert manifest_from(ckpt.extra) == manifests[k]
                    for c, state in store.client_states("run-s", manifests[k]).items():
                        expected = _state(c, manifests[k][c])
                        assert {n: b.tolist() for n, b in state.items()} == {n: b.tolist() for n, b in expected.items()}


def test_a_checkpoint_missing_a_clients_state_is_skipped_for_the_one_before(redis_server):
    with RedisStore(redis_server.url, retry_seconds=5) as store:
        store.save(_ckpt(1, {0: 1, 1: 1}), 2, clients={0: _state(0, 1), 1: _state(1, 1)})
        store.save(_ckpt(2, {0: 2, 1: 1}), 2, clients={0: _state(0, 2)})
        store._redis.hdel(store._clients_key("run-s"), "0@2")
        ckpt, skipped = store.latest("run-s")
        assert ckpt.round == 1 and [s.round for s in skipped] == [2]
        assert "is missing the state of 1 client(s): 0@2" in skipped[0].reason
        store._redis.hset(store._clients_key("run-s"), "0@1", store._redis.hget(store._clients_key("run-s"), "1@1"))
        with pytest.raises(CheckpointError, match=r"^the state of client 0 written after round 1 of run run-s is not "
                                                  r"the one written$"):
            store.client_states("run-s", {0: 1})  # another client's blob in its place


class Personal(Algorithm):
    """Each client keeps a personal copy of its last trained weights and how often it trained; it trains from the mean
    of the global and its personal weights (Ditto-like, enough to make every byte depend on its state)."""

    name = "personal"

    def local_update(self, client: LocalClient) -> Reply:
        personal = client.state.get("model")
        if personal is not None:
            client.model.set_weights((client.global_weights + personal) * np.float32(0.5))
        loss = client.train()
        times = client.state.get("times", np.zeros(1, np.float32)) + np.float32(1)
        return Reply(loss, keep={"model": client.weights(), "times": times})


def _personal_run(tmp_path, rounds: int, **more):
    from fedactors.data.partition import partition
    from fedactors.runtime.client import ClientHost
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.task import load_arrays, load_task

    cfg = RunConfig(task="digits-mlp", clients=12, frac=0.5, rounds=rounds, epochs=1, batch_size=20, partition="iid",
                    seed=1, strategy="python:personal", checkpoint_every=more.pop("checkpoint_every", 1), keep=3)
    data = load_arrays(load_task(cfg.task), None, tmp_path)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed)
    algorithm = Personal()
    hosts = [ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i, threads=1,
                        algorithm=algorithm) for i in range(2)]
    return Coordinator(cfg, LocalPool(hosts), num_test=500, strategy=algorithm, **more)


def test_a_checkpoint_writes_only_the_rounds_clients_and_a_resume_gives_the_same_bytes(tmp_path, redis_server):
    """A user algorithm's per-client state (Reply.keep): each checkpoint writes the clients trained since the one
    before, no others, and the coordinator holds none of it afterwards; a run resumed from round 2 reads the clients'
    state back from the store and ends on the uninterrupted run's bytes; forgetting the state changes them."""
    import torch

    threads = torch.get_num_threads()
    try:
        straight = _personal_run(tmp_path, 5)
        expected = list(straight.run())[-1]["weights"]
        everything = straight.states.everything()  # no store: all of it here
        with RedisStore(redis_server.url, retry_seconds=5) as store:
            written: list[tuple[int, list[int], int]] = []  # (round, clients written, clients held afterwards)
            save = store.save

            def recording(ckpt, keep, clients=None):
                warning = save(ckpt, keep, clients=clients)
                written.append((ckpt.round, sorted(clients or {}), None))
                return warning

            store.save = recording
            first = _personal_run(tmp_path, 5, store=store, run_id="p", checkpoint_every=2)
            trained: dict[int, set[int]] = {}
            for event in first.run():
                if event["type"] == "round":
                    trained[event["round"]] = set(event["hosts"])
                    assert not first.states.changed or event["round"] % 2  # let go once written
            assert [r for r, _, _ in written] == [2, 4, 5]
            assert [set(w) for _, w, _ in written] == [trained[1] | trained[2], trained[3] | trained[4], trained[5]]
            assert all(len(w) < 12 for _, w, _ in written[1:])  # not every client: only those that changed
            times = {c: float(s["algorithm/times"][0]) for c, s in first.states.everything().items()}
            assert times == {c: float(sum(c in t for t in trained.values())) for c in set().union(*trained.values())}
            assert {c: s["algorithm/model"].tobytes() for c, s in first.states.everything().items()} == \
                {c: s["algorithm/model"].tobytes() for c, s in everything.items()}
            ckpt = store.load("p", 2)
            rest = _personal_run(tmp_path, 5, start_round=2, weights=ckpt.weights.copy(), store=store, run_id="p",
                                 clients=ckpt.extra["clients"])
            assert list(rest.run())[-1]["weights"].tobytes() == expected.tobytes()
        forgot = _personal_run(tmp_path, 5, start_round=2, weights=ckpt.weights.copy())
        assert list(forgot.run())[-1]["weights"].tobytes() != expected.tobytes()
    finally:
        torch.set_num_threads(threads)


def test_state_that_is_not_float32_fails_the_round_naming_the_algorithm(tmp_path):
    from fedactors.errors import RoundFailed

    class Bad(Personal):
        def local_update(self, client):
            return Reply(client.train(), keep={"model": client.weights().astype(np.float64)})

    coordinator = _personal_run(tmp_path, 1)
    for host in coordinator.pool.hosts:
        host._algorithm = Bad()
    with pytest.raises(RoundFailed, match=r"personal.local_update's Reply keeps 'model' as float64 \(\d+,\), not a "
                                          r"1-D float32 array"):
        list(coordinator.run())
