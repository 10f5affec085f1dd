"""The three methods of examples/algorithms/ (issue 35 item 6), each one file that touches no framework file:
FedDyn (per-client gradient state), FedNova (normalized averaging) and FedAvg with a decaying server rate and
client momentum (its own training loop). Each is run by the real round loop in-process (ClientHost x 2 on a
LocalPool, the client half loaded from the file as `--strategy` names it), its arithmetic checked against NumPy
from what its server half saw, and resumed from its checkpoint in a real Redis to the uninterrupted run's bytes;
FedDyn also on real Ray, SIGKILLed mid-round and resumed from Redis alone. Also `fedactors strategies FILE.py:ATTR`."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from fedactors.errors import RoundFailed

EXAMPLES = REPO / "examples" / "algorithms"
SETTINGS = {"task": "digits-mlp", "clients": 12, "frac": 0.5, "epochs": 1, "batch_size": 10,
            "partition": "unbalanced", "seed": 3}


def spec(name: str) -> str:
    """The --strategy of an example: FILE.py:CLASS."""
    return {"feddyn": f"{EXAMPLES}/feddyn.py:FedDyn", "fednova": f"{EXAMPLES}/fednova.py:FedNova",
            "decay": f"{EXAMPLES}/decay_momentum.py:DecayMomentum"}[name]


def make(name: str, **settings):
    """The example's class, imported as --strategy imports it, made with `settings`."""
    from fedactors.importer import import_spec

    where, _, attr = spec(name).rpartition(":")
    return getattr(import_spec(where, spec(name), flag="--strategy"), attr)(**settings)


def record(algorithm):
    """`algorithm` with its server half watched: each round, what it was given and returned, and its state before
    and after (copies). Returns the list the rounds go into."""
    seen = []
    inner = algorithm.aggregate

    def aggregate(weights, combined, results, round_idx):
        before = {k: b.copy() for k, b in algorithm.state()[0].items()}
        x = weights.copy()
        new = inner(weights, combined, results, round_idx)
        seen.append({"round": round_idx, "x": x, "combined": np.array(combined), "new": new.copy(), "before": before,
                     "after": {k: b.copy() for k, b in algorithm.state()[0].items()},
                     "results": [{"client": u.client_id, "y": np.array(u.weights), "n": u.num_examples,
                                  "metrics": dict(u.metrics), "sent": {k: np.array(a) for k, a in u.sent.items()}}
                                 for u in results]})
        return new

    algorithm.aggregate = aggregate
    return seen


def _run(strategy: str, tmp_path, *, algorithm=None, rounds: int = 2, store=None, **settings):
    """Rounds of digits-mlp in this process: (round events, final weights, the client partition). `algorithm`: the
    server half's object (else made from `strategy`); the hosts load theirs from `strategy`, as a run's do."""
    import torch

    from fedactors.config import RunConfig
    from fedactors.data.partition import partition
    from fedactors.runtime.client import ClientHost
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.task import load_arrays, load_task

    resume = {k: settings.pop(k) for k in ("start_round", "weights", "strategy_state") if k in settings}
    cfg = RunConfig(**{**SETTINGS, "rounds": rounds, "strategy": strategy, **settings})
    data = load_arrays(load_task(cfg.task), None, tmp_path)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed, sigma=cfg.sigma)
    threads = torch.get_num_threads()
    try:
        hosts = [ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i, threads=1)
                 for i in range(2)]
        events = list(Coordinator(cfg, LocalPool(hosts), num_test=len(data.y_test), strategy=algorithm, store=store,
                                  run_id="example" if store is not None else None, **resume).run())
    finally:
        torch.set_num_threads(threads)
    return [e for e in events if e["type"] == "round"], events[-1]["weights"], parts


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64)


# ---- FedDyn ------------------------------------------------------------------------------------------------------

def test_feddyn_is_algorithm_1_of_the_paper(tmp_path):
    """Over 3 rounds (12 clients, 6 a round: clients come back with a gradient state): each client's new g_k, the
    server's h over K = 12 and the new model, recomputed from what the server half saw."""
    alpha, k = 0.01, 12
    server = make("feddyn", num_clients=k)
    seen = record(server)
    _, weights, _ = _run(spec("feddyn"), tmp_path, algorithm=server, rounds=3)
    returning = 0
    for r in seen:
        x = _f64(r["x"])
        drift = sum(_f64(c["y"]) - x for c in r["results"])
        for c in r["results"]:
            old = r["before"].get(f"g{c['client']}")
            returning += old is not None
            g = (0.0 if old is None else _f64(old)) - alpha * (_f64(c["y"]) - x)
            np.testing.assert_array_equal(c["sent"]["grad"], g.astype(np.float32))
            np.testing.assert_array_equal(r["after"][f"g{c['client']}"], c["sent"]["grad"])
        h = _f64(r["before"].get("h", np.zeros_like(x))) - alpha / k * drift
        np.testing.assert_array_equal(r["after"]["h"], h.astype(np.float32))
        mean = sum(_f64(c["y"]) for c in r["results"]) / len(r["results"])
        np.testing.assert_array_equal(r["new"], (mean - h / alpha).astype(np.float32))
    assert [r["round"] for r in seen] == [1, 2, 3] and returning >= 2  # the -<g_k, w> term was exercised
    assert weights.tobytes() == seen[-1]["new"].tobytes()
    assert weights.tobytes() != _run("fedavg", tmp_path, rounds=3)[1].tobytes()


def test_feddyns_first_local_update_is_fedproxs_and_its_gradient_state_shifts_each_step(tmp_path):
    """Before a client has a state (g_k = 0) its objective is FedProx's with mu = alpha: the same client models to
    the byte. With a state, a single full-batch step from x is plain SGD's plus lr g_k."""
    import torch

    from fedactors.algorithms import FedProx, LocalClient
    from fedactors.algorithms.local import LocalSettings
    from fedactors.model import FlatModel
    from fedactors.task import load_arrays, load_task

    dyn, prox = make("feddyn", num_clients=12), FedProx(mu=0.01)
    dyn_seen, prox_seen = record(dyn), record(prox)
    _run(spec("feddyn"), tmp_path, algorithm=dyn, rounds=1)
    _run("fedprox", tmp_path, algorithm=prox, rounds=1, mu=0.01, host_sums=False)
    ys = [[(c["client"], c["y"].tobytes()) for c in seen[0]["results"]] for seen in (dyn_seen, prox_seen)]
    assert ys[0] == ys[1] and len(ys[0]) == 6

    task = load_task("digits-mlp")
    data = load_arrays(task, None, tmp_path)
    model = FlatModel(task.model, init_seed=0)
    x = model.get_weights()
    g = np.random.default_rng(0).normal(0, 0.1, model.params.numel()).astype(np.float32)
    images, labels = torch.from_numpy(data.x_train[:20]), torch.from_numpy(data.y_train[:20])
    moved = {}
    for name, received in (("plain", {}), ("state", {"grad": g})):
        model.set_weights(x)
        client = LocalClient(model, images, labels, 0, 1, x, received, LocalSettings(lr=0.1, rounds=1), 1, None, 0)
        reply = dyn.local_update(client)
        moved[name] = model.get_weights()
        expected = (0 if name == "plain" else _f64(g)) - 0.01 * (_f64(moved[name]) - x)
        np.testing.assert_array_equal(reply.send["grad"], expected.astype(np.float32))
    np.testing.assert_allclose(moved["state"] - moved["plain"], 0.1 * g, atol=1e-6)


def test_feddyn_needs_its_num_clients_to_be_the_runs(tmp_path):
    with pytest.raises(RoundFailed, match=r"FedDyn\(num_clients=4\) was asked for client \d+: its num_clients must be "
                                        "the run's --clients"):
        _run(spec("feddyn"), tmp_path, algorithm=make("feddyn", num_clients=4), rounds=1)
    with pytest.raises(ValueError, match="alpha must be a positive number, got 0"):
        make("feddyn", alpha=0)


# ---- FedNova -----------------------------------------------------------------------------------------------------

def test_fednova_steps_by_the_normalized_updates(tmp_path):
    """Unequal clients (sizes from --partition unbalanced, B = 10): tau_i = E ceil(n_i / B) differ, so FedNova is
    not FedAvg; its model is x - tau_eff sum p_i (x - y_i) / tau_i, recomputed here from the sizes."""
    server = make("fednova")
    seen = record(server)
    _, weights, parts = _run(spec("fednova"), tmp_path, algorithm=server)
    taus = set()
    for r in seen:
        x = _f64(r["x"])
        n = np.array([len(parts[c["client"]]) for c in r["results"]], np.float64)
        tau = np.ceil(n / 10)
        assert [c["metrics"]["steps"] for c in r["results"]] == tau.tolist()
        p = n / n.sum()
        step = sum(p_i * (x - _f64(c["y"])) / t for p_i, t, c in zip(p, tau, r["results"]))
        np.testing.assert_array_equal(r["new"], (x - (p @ tau) * step).astype(np.float32))
        taus |= set(tau)
    assert len(taus) > 1
    assert weights.tobytes() != _run("fedavg", tmp_path)[1].tobytes()


def test_fednova_refuses_a_client_optimizer_it_cannot_count_steps_of(tmp_path):
    with pytest.raises(RoundFailed, match="fednova normalizes by the number of plain SGD steps"):
        _run(spec("fednova"), tmp_path, rounds=1, client_optimizer="momentum", lr=0.01)


# ---- FedAvg with server-side decay and client momentum -----------------------------------------------------------

def test_decay_momentum_decays_the_server_step_and_its_own_loop_is_the_runs_momentum(tmp_path):
    """The server step x + eta0 gamma^(t-1) (aggregate - x) from what it saw; with eta0 = gamma = 1 its own training
    loop (torch SGD with momentum, the run's minibatches) gives FedAvg with --client-optimizer momentum's bytes."""
    server = make("decay", eta0=0.8, gamma=0.5)
    seen = record(server)
    _, weights, _ = _run(spec("decay"), tmp_path, algorithm=server, rounds=3, lr=0.02)
    for r, eta in zip(seen, (0.8, 0.4, 0.2), strict=True):
        x = _f64(r["x"])
        np.testing.assert_array_equal(r["new"], (x + eta * (_f64(r["combined"]) - x)).astype(np.float32))
    fedavg_momentum = _run("fedavg", tmp_path, rounds=3, lr=0.02, client_optimizer="momentum", client_momentum=0.9,
                           host_sums=False)
    undecayed = _run(spec("decay"), tmp_path, algorithm=make("decay", eta0=1.0, gamma=1.0), rounds=3, lr=0.02)
    assert undecayed[1].tobytes() == fedavg_momentum[1].tobytes()
    assert [e["train_loss"] for e in undecayed[0]] == [e["train_loss"] for e in fedavg_momentum[0]]
    assert weights.tobytes() != undecayed[1].tobytes()
    assert undecayed[1].tobytes() != _run("fedavg", tmp_path, rounds=3, lr=0.02)[1].tobytes()


# ---- Resume: bit-exact from a checkpoint -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["feddyn", "fednova", "decay"])
def test_each_resumes_from_its_checkpoint_to_the_uninterrupted_runs_bytes(name, tmp_path, redis_server):
    """2 rounds checkpointed into a real Redis, a fresh object resumed from what the store gives back to 4 rounds:
    the bytes (and round records) of 4 rounds run straight."""
    from fedactors.store.checkpoint import RedisStore

    settings = {"feddyn": {"num_clients": 12}, "fednova": {}, "decay": {"gamma": 0.7}}[name]
    lr = {"decay": 0.02}.get(name, 0.1)
    straight, expected, _ = _run(spec(name), tmp_path, algorithm=make(name, **settings), rounds=4, lr=lr)
    with RedisStore(redis_server.url, retry_seconds=5) as store:
        first, _, _ = _run(spec(name), tmp_path, algorithm=make(name, **settings), rounds=2, store=store, lr=lr)
        ckpt, _ = store.latest("example")
    assert ckpt.round == 2
    if name == "feddyn":  # h and the g_k of every client seen so far
        assert sorted(ckpt.state) == sorted(["algorithm/h", *(f"algorithm/g{c}" for c in {c for e in first
                                                                                          for c in e["clients"]})])
    rest, resumed, _ = _run(spec(name), tmp_path, algorithm=make(name, **settings), rounds=4, lr=lr, start_round=2,
                            weights=ckpt.weights.copy(), strategy_state=ckpt.strategy_state())
    assert resumed.tobytes() == expected.tobytes()
    keys = ("round", "clients", "train_loss", "accuracy")
    assert [{k: e[k] for k in keys} for e in first + rest] == [{k: e[k] for k in keys} for e in straight]


# ---- FedDyn on Ray: SIGKILL, a real Redis, resume ---------------------------------------------------------------

@pytest.mark.slow
def test_feddyn_on_ray_resumes_bit_exactly_after_sigkill_from_a_real_redis(tmp_path, make_redis_server):
    """The whole tree SIGKILLed mid-round after 6 rounds, the directory lost, resumed from Redis alone: the bytes of
    the same run made in-process. K = 100 (FedDyn's num_clients default), digits-mlp."""
    from conftest import fedactors
    from test_resume import start_and_kill_mid_round
    from test_strategy import in_process_weights

    rounds = 40  # digits-mlp rounds take ~0.1 s: headroom so the kill lands mid-run on a loaded machine too
    args = ["--task", "digits-mlp", "--clients", "100", "--frac", "0.1", "--partition", "iid", "--epochs", "1",
            "--batch-size", "10", "--seed", "5", "--hosts", "2", "--eval-every", str(rounds), "--checkpoint-every", "2",
            "--strategy", spec("feddyn")]
    server = make_redis_server()
    out = tmp_path / "run"
    start_and_kill_mid_round(out, "--run-id", "dyn", "--redis", server.url, args=args, rounds=rounds, after_rounds=6)
    for f in out.iterdir():
        f.unlink()
    result = fedactors("run", "--resume", "dyn", "--redis", server.url, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "resuming run dyn after round" in result.stdout
    assert np.load(out / "weights.npy").tobytes() == in_process_weights(args, rounds).tobytes()


# ---- `fedactors strategies FILE.py:ATTR` -------------------------------------------------------------------------

def test_strategies_describes_a_users_algorithm_named_by_path(monkeypatch, capsys, tmp_path):
    from conftest import run_main

    code, out, err = run_main(monkeypatch, capsys, "strategies", spec("feddyn"))
    assert (code, err) == (0, "")
    first = ("feddyn  FedDyn (Acar et al., ICLR 2021): each client's loss gets -<g_k, w> + (alpha/2)||w - x||^2; "
             "the server steps past the mean by h / alpha.")
    assert out.splitlines() == [first, "        alpha=0.01  num_clients=100"]
    for name, settings in (("fednova", None), ("decay", "eta0=1.0  gamma=0.99  momentum=0.9")):
        code, out, _ = run_main(monkeypatch, capsys, "strategies", spec(name))
        assert code == 0 and out.split()[0] == make(name).name
        assert (out.splitlines()[1].strip() if settings else len(out.splitlines())) == (settings or 1)
    # Without a docstring of its own (Algorithm's would call it FedAvg), its module's; without one, that it has none.
    (tmp_path / "mine.py").write_text('"""My method.\n\nMore."""\nfrom fedactors.algorithms import Algorithm\n\n\n'
                                      "class Mine(Algorithm):\n    name = 'mine'\n")
    (tmp_path / "bare.py").write_text("from fedactors.algorithms import Algorithm\n\n\n"
                                      "class Bare(Algorithm):\n    name = 'bare'\n")
    assert run_main(monkeypatch, capsys, "strategies", f"{tmp_path}/mine.py:Mine")[1] == "mine  My method.\n"
    assert run_main(monkeypatch, capsys, "strategies", f"{tmp_path}/bare.py:Bare")[1] == "bare  (no docstring)\n"
    code, out, _ = run_main(monkeypatch, capsys, "strategies", "fedprox")  # a built-in by name: its own lines
    assert code == 0 and out.startswith("fedprox  ") and "--mu 0.01" in out


@pytest.mark.parametrize(("argument", "message"), [
    ("nowhere.py:FedDyn", "no file"),
    (f"{EXAMPLES}/feddyn.py:Nope", "has no attribute 'Nope'"),
    ("not-a-strategy", "not one of fedavg"),
])
def test_strategies_given_a_bad_path_is_one_line_exit_2(monkeypatch, capsys, argument, message):
    from conftest import run_main

    code, out, err = run_main(monkeypatch, capsys, "strategies", argument)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err
