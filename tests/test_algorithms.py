"""The algorithm protocol from a researcher's side (issue 35 item 1): a method of one file that changes the client
half (its local update, what it sends back) and the server half (how results are combined), run by the real round
loop in-process (ClientHost x 2 on a LocalPool, no Ray: the Ray path of the same calls is SCAFFOLD's, in
test_strategy's resume tests)."""

from __future__ import annotations

import numpy as np
import pytest

from fedactors.algorithms import Algorithm, Reply, builtin
from fedactors.errors import ConfigError, RoundFailed

# A FedNova-like method (Wang et al., NeurIPS 2020): each client reports its number of local steps tau_i, and the
# server averages the normalized updates d_i = (x - y_i) / tau_i and steps by tau_eff = sum p_i tau_i. With
# unequal clients (B = 10, sizes from --partition unbalanced) the steps differ, so the result is not FedAvg's.
NOVA = '''
import numpy as np
from fedactors.algorithms import Algorithm, Reply


class Nova(Algorithm):
    name = "nova"

    def __init__(self):
        self.seen = []  # (round, client, steps, examples) as the server half got them

    def local_update(self, client):
        loss = client.train()
        return Reply(loss, metrics={"steps": float(client.steps)})

    def aggregate(self, weights, combined, results, round_idx):
        n = np.array([u.num_examples for u in results], np.float64)
        p = n / n.sum()
        tau = np.array([u.metrics["steps"] for u in results])
        self.seen += [(round_idx, u.client_id, u.metrics["steps"], u.num_examples) for u in results]
        x = weights.astype(np.float64)
        d = sum(pi * (x - u.weights.astype(np.float64)) / ti for pi, ti, u in zip(p, tau, results))
        return (x - float(p @ tau) * d).astype(np.float32)


class Plain(Algorithm):
    """The default halves, written out: the protocol's default local update is the run's, byte for byte."""
    name = "plain"

    def local_update(self, client):
        return Reply(client.train())


class Shrink(Algorithm):
    """A client half that sends an array back: its weights' norm, which the server half keeps as state."""
    name = "shrink"

    def __init__(self):
        self.norms = {}

    def local_update(self, client):
        loss = client.train()
        return Reply(loss, send={"norm": np.array([np.linalg.norm(client.weights())], np.float32)})

    def aggregate(self, weights, combined, results, round_idx):
        self.norms.update({u.client_id: float(u.sent["norm"][0]) for u in results})
        return combined


class BadSend(Algorithm):
    name = "bad-send"

    def local_update(self, client):
        return Reply(client.train(), send={"x": np.zeros(3)})  # float64: refused
'''


def _run(strategy, tmp_path, **settings):
    """Rounds of digits-mlp in this process: (the round events, the final weights, the algorithm object)."""
    import torch

    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
    from fedactors.task import load_arrays, load_task

    cfg = RunConfig(**{"task": "digits-mlp", "clients": 12, "frac": 0.5, "rounds": 2, "epochs": 1, "batch_size": 10,
                       "partition": "unbalanced", "seed": 3, "strategy": strategy, **settings})
    data = load_arrays(load_task(cfg.task), None, tmp_path)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed, sigma=cfg.sigma)
    threads = torch.get_num_threads()
    try:
        hosts = [ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i, threads=1)
                 for i in range(2)]
        coordinator = Coordinator(cfg, LocalPool(hosts), num_test=len(data.y_test))
        events = list(coordinator.run())
    finally:
        torch.set_num_threads(threads)
    rounds = [e for e in events if e["type"] == "round"]
    _run.states = coordinator.states.everything()  # the clients' state at the end (fedactors.runtime.states)
    return rounds, events[-1]["weights"], coordinator.strategy, parts


@pytest.fixture
def nova(tmp_path):
    path = tmp_path / "nova.py"
    path.write_text(NOVA)
    return str(path)


def test_a_users_client_half_reports_metrics_the_server_half_combines(nova, tmp_path):
    rounds, weights, algorithm, parts = _run(f"{nova}:Nova", tmp_path)
    # The server half got every accepted client's steps, E * ceil(n / B), as its client half measured them.
    assert [r["round"] for r in rounds] == [1, 2] and all(r["num_updates"] == 6 for r in rounds)
    assert len(algorithm.seen) == 12
    for _, client, steps, examples in algorithm.seen:
        assert examples == len(parts[client]) and steps == -(-examples // 10)
    assert len({steps for _, _, steps, _ in algorithm.seen}) > 1  # unequal clients: the normalization matters
    fedavg = _run("fedavg", tmp_path)[1]
    assert weights.tobytes() != fedavg.tobytes()


def test_the_default_halves_written_out_are_fedavgs_bytes(nova, tmp_path):
    """A subclass whose local_update calls client.train() and whose server half is the default: FedAvg to the byte
    (and so are the per-round records), through configure/extras and the per-client path (no host sums)."""
    rounds, weights, _, _ = _run(f"{nova}:Plain", tmp_path)
    reference, expected, _, _ = _run("fedavg", tmp_path, host_sums=False)
    assert weights.tobytes() == expected.tobytes()
    assert [(r["train_loss"], r["accuracy"]) for r in rounds] == [(r["train_loss"], r["accuracy"]) for r in reference]


def test_arrays_a_client_sends_reach_the_server_half(nova, tmp_path):
    rounds, weights, algorithm, _ = _run(f"{nova}:Shrink", tmp_path)
    clients = {c for r in rounds for c in r["clients"]}
    assert set(algorithm.norms) == clients and all(v > 0 for v in algorithm.norms.values())
    assert weights.tobytes() == _run("fedavg", tmp_path)[1].tobytes()  # the aggregate itself: FedAvg


def test_a_reply_that_cannot_travel_fails_the_round_naming_it(nova, tmp_path):
    with pytest.raises(RoundFailed, match="bad-send.local_update's Reply sends 'x' as float64"):
        _run(f"{nova}:BadSend", tmp_path)


def test_a_server_only_object_keeps_working_and_half_an_algorithm_is_refused(tmp_path):
    """The protocol before this one (a `step`) is an algorithm with the default client half; an object with
    neither `aggregate` nor `step` is one line naming what it lacks."""
    (tmp_path / "old.py").write_text(
        "class Old:\n    name = 'old'\n    def step(self, weights, aggregate, updates, num_examples, round_idx):\n"
        "        return aggregate\n    def state(self):\n        return {}, {}\n"
        "    def load_state(self, b, s):\n        pass\n    def settings(self):\n        return {}\n"
        "class Half:\n    name = 'half'\n    def state(self):\n        return {}, {}\n"
        "    def load_state(self, b, s):\n        pass\n    def settings(self):\n        return {}\n")
    weights = _run(f"{tmp_path}/old.py:Old", tmp_path)[1]
    assert weights.tobytes() == _run("fedavg", tmp_path)[1].tobytes()
    from fedactors.algorithms import load_user_algorithm

    with pytest.raises(ConfigError, match=r"Half lacks aggregate \(or step\)"):
        load_user_algorithm(f"{tmp_path}/old.py:Half")


def test_every_builtin_is_an_algorithm_with_a_spec():
    from fedactors.algorithms import BUILTINS
    from fedactors.config import RunConfig

    for name, spec in BUILTINS.items():
        algorithm = spec.make(RunConfig(strategy=name, dp_seed=1))
        assert isinstance(algorithm, Algorithm) and algorithm.name == name, name
        assert builtin(name) is spec
    assert builtin("nova.py:Nova") is None and builtin(None) is None
    assert isinstance(Reply(0.5).send, dict)


def test_scaffold_on_the_clock_counts_only_the_clients_that_finished(tmp_path):
    """Issue 35 item 2: SCAFFOLD with a deadline and over-selection runs; a client dropped by the clock did not
    participate, so its c_i stays unset and c = (1/N) sum of the finishers' c_i (from zero, one round)."""
    rounds, weights, scaffold, _ = _run("scaffold", tmp_path, rounds=1, client_speed="lognormal:1", over_select=0.5,
                                        deadline=4.0)
    (r,) = rounds
    finished = set(r["hosts"])
    assert finished and len(finished) < len(r["clients"])  # the clock dropped some of those it sampled
    controls = {c: state["algorithm/c_i"] for c, state in _run.states.items()}  # each client's kept c_i
    assert set(controls) == finished
    expected = sum(controls[c].astype(np.float64) for c in sorted(finished)) / 12
    np.testing.assert_allclose(scaffold.c, expected.astype(np.float32), rtol=0, atol=1e-7)
    assert r["virtual_seconds"] <= 4.0 + 1e-9


def _resumed(strategy, tmp_path, stop: int, redis_url: str, **settings):
    """Run to round `stop` with checkpoints, then resume from that checkpoint to settings["rounds"] in new hosts:
    the final weights."""
    import torch

    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
    from fedactors.store.checkpoint import RedisStore
    from fedactors.task import load_arrays, load_task

    full = RunConfig(**{"task": "digits-mlp", "clients": 12, "frac": 0.5, "epochs": 1, "batch_size": 10,
                        "partition": "unbalanced", "seed": 3, "strategy": strategy, **settings})
    data = load_arrays(load_task(full.task), None, tmp_path)
    parts = partition(data.y_train, full.clients, full.partition, full.seed, sigma=full.sigma)
    threads = torch.get_num_threads()

    def pool(cfg):
        return LocalPool([ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i,
                                     threads=1) for i in range(2)])

    try:
        first = RunConfig(**{**full.to_dict(), "rounds": stop, "batch_size": full.batch_size})
        with RedisStore(redis_url, retry_seconds=5) as store:
            list(Coordinator(first, pool(first), num_test=len(data.y_test), store=store, run_id="r").run())
            ckpt = store.latest("r")[0]
            events = list(Coordinator(full, pool(full), num_test=len(data.y_test), start_round=ckpt.round,
                                      weights=ckpt.weights.copy(), strategy_state=ckpt.strategy_state(),
                                      clock=ckpt.extra.get("clock"), store=store, run_id="r",
                                      clients=ckpt.extra.get("clients")).run())
    finally:
        torch.set_num_threads(threads)
    return events[-1]["weights"]


DP = dict(dp_seed=5, clip=0.5, noise_multiplier=0.3, lr=0.1, frac=0.4)


def test_the_dp_stage_on_fedavg_and_a_server_optimizer_is_dp_fedavgs_bytes(tmp_path):
    """Issue 35 item 2: --dp gaussian is a stage around a method. Around FedAvg it is --strategy dp-fedavg, around
    FedAdam it is dp-fedavg --server-optimizer fedadam: the same weights and epsilons, to the byte."""
    for method, alias in (({"strategy": "fedavg"}, {"strategy": "dp-fedavg"}),
                          ({"strategy": "fedadam", "server_lr": 0.05},
                           {"strategy": "dp-fedavg", "server_optimizer": "fedadam", "server_lr": 0.05})):
        staged = _run(method.pop("strategy"), tmp_path, dp="gaussian", **DP, **method)
        plain = _run(alias.pop("strategy"), tmp_path, **DP, **alias)
        assert staged[1].tobytes() == plain[1].tobytes(), method
        assert [r["epsilon"] for r in staged[0]] == [r["epsilon"] for r in plain[0]]
        assert all(r["private"] and r["epsilon"] > 0 for r in staged[0])
        assert [r["clients"] for r in staged[0]] == [r["clients"] for r in plain[0]]  # Poisson-sampled alike


def test_the_dp_stage_keeps_fedprox_clients_and_resumes_to_the_same_bytes(tmp_path, redis_server):
    """Around FedProx the clients train as FedProx's (mu = 0 is FedAvg's local update: DP-FedAvg's bytes; mu > 0
    is not), and a stopped and resumed run (the stage's secret, clip and rounds in its checkpoint) is the
    uninterrupted one, adaptive clip and all."""
    fedprox = _run("fedprox", tmp_path, dp="gaussian", mu=0.5, **DP)[1]
    assert fedprox.tobytes() != _run("dp-fedavg", tmp_path, **DP)[1].tobytes()
    assert _run("fedprox", tmp_path, dp="gaussian", mu=0.0, **DP)[1].tobytes() == _run("dp-fedavg", tmp_path,
                                                                                          **DP)[1].tobytes()
    settings = {**DP, "clip": "adaptive", "rounds": 4}
    straight = _run("fedprox", tmp_path, dp="gaussian", mu=0.5, **settings)[1]
    assert _resumed("fedprox", tmp_path, 2, redis_server.url, dp="gaussian", mu=0.5, **settings).tobytes() == straight.tobytes()


@pytest.mark.parametrize(("settings", "message"), [
    ({"strategy": "scaffold", "dp": "gaussian"}, "--dp gaussian does not go with --strategy scaffold: its clients "
                                                 "send their control variates"),
    ({"strategy": "fedbuff", "dp": "gaussian"}, "--dp gaussian does not go with --strategy fedbuff"),
    ({"strategy": "dp-fedavg", "dp": "gaussian"}, "--dp gaussian does not go with --strategy dp-fedavg: it is DP-FedAvg"),
    ({"strategy": "x.py:Mine", "dp": "gaussian"}, "--dp gaussian composes with the built-in methods"),
    ({"dp": "laplace"}, "--dp must be one of gaussian, got 'laplace'"),
    ({"dp": "gaussian", "aggregator": "median"}, "--dp gaussian clips and sums the updates itself: it needs "
                                                 "--aggregator fedavg, not median"),
    ({"dp": "gaussian", "strategy": "dp-fedavg", "server_optimizer": "fedadam"}, "--dp gaussian does not go"),
    ({"dp": "gaussian", "server_optimizer": "fedadam"}, "--server-optimizer does not go with --dp: name the optimizer "
                                                        "as the method, e.g. --strategy fedadam --dp gaussian"),
    ({"dp": "gaussian", "deadline": 5.0}, "--dp gaussian does not run on the virtual clock"),
])
def test_what_the_dp_stage_does_not_compose_with_says_why(settings, message):
    from fedactors.config import RunConfig

    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(task="digits-mlp", clients=12, **settings)


def test_dp_settings_are_the_stages_on_any_method_and_refused_without_it():
    from fedactors.config import refuse_idle_settings

    values = {"strategy": "fedprox", "dp": "gaussian", "aggregator": "fedavg", "byzantine": 0,
              "partition": "iid", "host_sums": True}
    refuse_idle_settings({"clip", "noise_multiplier", "target_epsilon", "mu"}, values)  # no error
    with pytest.raises(ConfigError, match=r"--clip applies to --strategy dp-fedavg \(or --dp gaussian on another "
                                          r"method\) only, not fedprox"):
        refuse_idle_settings({"clip"}, {**values, "dp": None})
    with pytest.raises(ConfigError, match="--host-sums does not go with --dp gaussian"):
        refuse_idle_settings({"host_sums"}, values)


def test_top_k_error_feedback_composes_with_fedbuff(tmp_path, redis_server):
    """Issue 35 item 2: --compress topk with FedBuff runs. A client that arrives twice in one buffer started its
    second job after its first arrived, so the second trains from the residual the first left (checked on what the
    pool was handed); the residuals kept are the last arrivals'; a resumed run is the uninterrupted one."""
    from fedactors.runtime.coordinator import LocalPool
    from fedactors.runtime.states import RESIDUAL

    handed: list[tuple[int, int, bytes, bytes]] = []  # (client, start batch, residual given, residual returned)
    train_jobs = LocalPool.train_jobs
    nothing = b""  # a client's first job: no residual yet (the host starts from zeros)

    def residual_in(extra) -> bytes:
        names, *arrays = extra
        return dict(zip(names, arrays)).get(("state", RESIDUAL), np.zeros(0, np.float32)).tobytes() or nothing

    def recording(self, jobs, timeout=None, extras=None):
        given = {(cid, batch): residual_in(extra) if extras else nothing
                 for i, (_, batch, cid) in enumerate(jobs) for extra in [extras[i] if extras else None]}
        for result in train_jobs(self, jobs, timeout, extras):  # in the hosts' order, not the jobs'
            key = (result.client_id, result.round)
            handed.append((*key, given[key], result.kept[RESIDUAL].tobytes()))
            yield result

    settings = dict(compress="topk:0.1", concurrency=6, buffer=4, client_speed="lognormal:1.5", rounds=4, frac=0.5)
    LocalPool.train_jobs = recording
    try:
        rounds, weights, _, _ = _run("fedbuff", tmp_path, **settings)
    finally:
        LocalPool.train_jobs = train_jobs
    twice = [r for r in rounds if len(set(r["clients"])) < len(r["clients"])]
    assert twice, "no client arrived twice in a buffer: the chain is not exercised"
    by_client: dict[int, list] = {}
    for cid, batch, given, returned in handed:
        by_client.setdefault(cid, []).append((batch, given, returned))
    chained = 0
    for jobs in by_client.values():
        jobs.sort()
        for (b1, _, returned), (b2, given, _) in zip(jobs, jobs[1:]):
            assert given == returned, "a client's next job did not start from the residual its last one left"
            chained += 1
    assert chained > 0
    assert _resumed("fedbuff", tmp_path, 2, redis_server.url, **settings).tobytes() == weights.tobytes()


def test_the_dp_flag_on_the_command_line(monkeypatch, capsys, tmp_path):
    """`--dp gaussian` reaches the run's settings (and its epsilon preview); what it does not compose with is one
    line, exit 2, nothing written."""
    import json

    from conftest import run_main

    status, out, err = run_main(monkeypatch, capsys, "run", "--task", "digits-mlp", "--clients", "20", "--strategy",
                                "fedadam", "--dp", "gaussian", "--clip", "adaptive", "--clip-count-noise", "1", "--rounds", "3", "--out",
                                str(tmp_path / "a"), "--dry-run", "--json")
    assert status == 0, err
    plan = json.loads(out)
    assert plan["config"]["dp"] == "gaussian" and plan["config"]["strategy"] == "fedadam" and plan["epsilon"] > 0
    status, out, err = run_main(monkeypatch, capsys, "run", "--task", "digits-mlp", "--clients", "20", "--strategy",
                                "scaffold", "--dp", "gaussian", "--out", str(tmp_path / "b"))
    assert status == 2 and err.strip().splitlines() == [
        "fedactors: error: --dp gaussian does not go with --strategy scaffold: its clients send their control "
        "variates to the server unclipped and without noise (the DP stage privatizes the model's updates only)"]
    assert not (tmp_path / "b").exists()


def test_a_server_half_returning_what_cannot_be_the_model_names_the_algorithm_and_its_method(nova, tmp_path):
    """Issue 35, bad input: the round fails in one line naming the algorithm and the method that returned it."""
    (tmp_path / "bad.py").write_text(
        "import numpy as np\nfrom fedactors.algorithms import Algorithm\n"
        "class Short(Algorithm):\n    name = 'short'\n"
        "    def aggregate(self, weights, combined, results, round_idx):\n        return combined[:-1]\n")
    with pytest.raises(RoundFailed, match=r"^round 1: strategy short returned float32 \(\d+,\), expected float32 "
                                          r"\(\d+,\), from its aggregate\(\)$"):
        _run(f"{tmp_path}/bad.py:Short", tmp_path)


BOUND = '''
import numpy as np

from fedactors.algorithms import Algorithm, Reply


class Bound(Algorithm):
    """Reads the run's settings in bind(): its clients scale each step by 1 / K, its server half counts the epochs."""

    name = "bound"
    config = None

    def bind(self, config):
        if config.epochs > 3:
            raise ValueError("at most 3 epochs")
        self.config = config

    def local_update(self, client):
        return Reply(client.train(), metrics={"clients": float(self.config.clients)})

    def aggregate(self, weights, combined, results, round_idx):
        assert all(u.metrics["clients"] == self.config.clients for u in results)
        self.seen = self.config.epochs
        return combined
'''


def test_an_algorithm_reads_the_runs_settings_in_bind(tmp_path):
    """Algorithm.bind(config): the coordinator's copy and each host's get the run's settings before use (here each
    host's made from the file), and a bind that fails is one line naming the algorithm."""
    (tmp_path / "bound.py").write_text(BOUND)
    rounds, _, algorithm, _ = _run(f"{tmp_path}/bound.py:Bound", tmp_path, epochs=2)
    assert algorithm.config.clients == 12 and algorithm.seen == 2 and len(rounds) == 2
    with pytest.raises(ConfigError, match=r"^bound\.bind\(config\) failed: ValueError: at most 3 epochs$"):
        _run(f"{tmp_path}/bound.py:Bound", tmp_path, epochs=4)
