"""Issue 37 item 5: the downlink compressed. Each client is sent the global model as a quantized delta from the model
it last received (per-client state the server keeps, fedactors.runtime.states.DOWNLINK), trains from what it
decodes, and bytes_down counts the encoding; a run resumes to the same bytes."""

from __future__ import annotations

import numpy as np
import pytest

from fedactors.config import RunConfig
from fedactors.errors import ConfigError


def _digits(**settings):
    from fedactors.data.partition import partition
    from fedactors.runtime.client import ClientHost
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.task import load_arrays, load_task

    cfg = RunConfig(**{"task": "digits-mlp", "clients": 10, "frac": 0.5, "rounds": 4, "epochs": 1, "batch_size": 20,
                       "partition": "iid", "seed": 0, "compress_down": "q8", **settings})
    data = load_arrays(load_task(cfg.task), None, None)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed)
    hosts = [ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i, threads=1)
             for i in range(2)]
    return cfg, lambda **more: Coordinator(cfg, LocalPool(hosts), num_test=len(data.y_test), **more)


def test_each_client_trains_from_the_delta_it_decodes_and_bytes_down_count_the_encoding():
    """What a client trains from is the model it last received plus the decoded delta to this round's global model
    (the round-0 model the first time), close to the global model but not it; the next round's delta starts from it.
    bytes_down is the encoded size for every sampled client; q8 trains as well as float32 on digits."""
    import torch

    from fedactors.compress import parse
    from fedactors.runtime.coordinator import LocalPool
    from fedactors.seeding import Purpose
    from fedactors.traffic import per_client

    given: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # (round, client, global weights, model it trained from)
    train_jobs = LocalPool.train_jobs
    threads = torch.get_num_threads()
    cfg, make = _digits(rounds=15, eval_every=15)
    coordinator = make()

    def recording(self, jobs, timeout=None, extras=None):
        for start, round_idx, cid in jobs:
            given.append((round_idx, cid, coordinator.weights.copy(), start.copy()))
        yield from train_jobs(self, jobs, timeout, extras)

    LocalPool.train_jobs = recording
    try:
        events = [e for e in coordinator.run() if e["type"] == "round"]
        plain = [e for e in _digits(rounds=15, eval_every=15, compress_down=None)[1]().run() if e["type"] == "round"]
    finally:
        LocalPool.train_jobs = train_jobs
        torch.set_num_threads(threads)
    q8 = parse("q8")
    last: dict[int, np.ndarray] = {}
    round0 = coordinator.pool.initial_weights()
    for round_idx, cid, weights, start in given:
        reference = last.get(cid, round0)
        delta = np.subtract(weights, reference, dtype=np.float32)
        expected = reference + q8.decode(q8.encode(delta, 0, round_idx, cid, purpose=Purpose.QUANTIZE_DOWN), len(delta),
                                         0, round_idx)
        assert start.tobytes() == expected.astype(np.float32).tobytes()
        assert np.abs(start - weights).max() < 0.02
        assert np.array_equal(start, weights) == (not delta.any())  # round 1 sends the round-0 model: no delta
        last[cid] = start
    assert len({cid for _, cid, _, _ in given}) == 10 and len(given) == 15 * 5
    down, _ = per_client(cfg.strategy, len(round0), None, "q8")
    assert down == q8.encoded_bytes(len(round0)) < 4 * len(round0) / 3.5
    assert all(e["bytes_down"] == 5 * down for e in events)
    assert events[-1]["bytes_down_total"] * 3.5 < plain[-1]["bytes_down_total"]
    assert abs(events[-1]["accuracy"] - plain[-1]["accuracy"]) < 0.03
    states = coordinator.states.everything()
    assert set(states) == set(last) and all(s["downlink/received"].tobytes() == last[c].tobytes()
                                            for c, s in states.items())


def test_a_run_with_the_downlink_compressed_resumes_to_the_same_bytes(redis_server):
    """The model each client last received is state in the store, written with the checkpoints of the clients sent
    it; a run resumed from round 2 ends on the uninterrupted run's bytes (and without that state, on others)."""
    import torch

    from fedactors.store.checkpoint import RedisStore

    threads = torch.get_num_threads()
    try:
        _, make = _digits(rounds=4, compress="q4")
        straight = list(make().run())[-1]["weights"]
        with RedisStore(redis_server.url, retry_seconds=5) as store:
            list(_digits(rounds=2, compress="q4")[1](store=store, run_id="down").run())
            ckpt = store.latest("down")[0]
            rest = list(make(start_round=2, weights=ckpt.weights.copy(), store=store, run_id="down",
                             clients=ckpt.extra["clients"]).run())[-1]["weights"]
        forgot = list(make(start_round=2, weights=ckpt.weights.copy()).run())[-1]["weights"]
    finally:
        torch.set_num_threads(threads)
    assert rest.tobytes() == straight.tobytes() and forgot.tobytes() != straight.tobytes()


def test_what_the_downlink_does_not_go_with_is_one_line():
    from fedactors.runtime.coordinator import uses_host_sums

    with pytest.raises(ConfigError, match=r"^--compress-down topk:0.1: the model a client is sent is quantized"):
        RunConfig(compress_down="topk:0.1")
    with pytest.raises(ConfigError, match=r"^--compress-down does not go with --strategy fedbuff"):
        RunConfig(compress_down="q8", strategy="fedbuff")
    with pytest.raises(ConfigError, match="q3"):
        RunConfig(compress_down="q3")
    assert uses_host_sums(RunConfig()) and not uses_host_sums(RunConfig(compress_down="q8"))
