"""Secure aggregation in the round loop (fedactors.secagg.stage): a run's result is plain FedAvg's to the byte, with
clients dropped before and after masking, on 1 host in process and on 3 through Ray, killed between masking and
unmasking and resumed; what it composes with and what it refuses; what --dry-run says it costs.

The dropouts come from the virtual clock, as a run meets them: a trace (written per test from the round's sampled
clients) makes round 1 over-select 9 clients for m = 6, the slowest two late and one offline before it finishes
(dropped before masking: their pairwise masks come off with their neighbours' key shares), and one whose online
window closes after it sent its masked update but before the round closes (dropped after masking: its self mask
comes off with its neighbours' seed shares).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import EXE, fedactors, run_main
from test_resume import kill_tree
from fedactors.config import RunConfig
from fedactors.errors import RoundFailed
from fedactors.secagg.costs import client_bytes

SEED = 4
ARGS = ["--task", "digits-mlp", "--clients", "20", "--frac", "0.3", "--partition", "iid", "--epochs", "1",
        "--batch-size", "20", "--seed", str(SEED), "--over-select", "0.5"]  # m = 6, 9 sampled a round
SECAGG = ["--secure-aggregation", "secagg+", "--secagg-neighbours", "6", "--secagg-threshold", "2"]


def config_of(*args: str, rounds: int = 3) -> RunConfig:
    """What `fedactors run ARGS` resolves to, as a run would start it."""
    from click.testing import CliRunner

    from fedactors.cli import cli

    plan = CliRunner().invoke(cli, ["run", *args, "--rounds", str(rounds), "--dry-run", "--json"])
    assert plan.exit_code == 0, plan.output
    return RunConfig.from_dict(json.loads(plan.output)["config"])


def write_trace(path: Path, config: RunConfig) -> dict[str, int]:
    """Round 1's 9 sampled clients finish at virtual seconds 1..9 (bandwidth so wide its bytes take ~1e-7 s); the one
    at 3 goes offline at 2.5 (before it finishes), the one at 2 at 4 (after it sent, before the round closes at 7:
    the first 6 of those finishing), 8 and 9 are late. Returns who is which."""
    from fedactors.data.partition import partition
    from fedactors.data.registry import load_task
    from fedactors.runtime.systems import sample_available
    from fedactors.task import load_arrays

    data = load_arrays(load_task(config.task), None, path.parent)
    sizes = [len(p) for p in partition(data.y_train, config.clients, config.partition, config.seed)]
    sampled = sample_available(config.seed, 1, np.arange(config.clients), 9).tolist()
    rng = np.random.default_rng(0)
    order = [sampled[i] for i in rng.permutation(9)]  # order[i] finishes at i + 1 virtual seconds
    speed = {c: 0.05 for c in range(config.clients)} | {c: (i + 1) / (config.epochs * sizes[c])
                                                         for i, c in enumerate(order)}
    rows = ["client,speed,up_mbps,down_mbps", *(f"{c},{s!r},1e9,1e9" for c, s in speed.items()),
            "client,online_from,online_until", f"{order[2]},0,2.5", f"{order[1]},0,4"]
    path.write_text("\n".join(rows) + "\n")
    return {"offline": order[2], "silent": order[1], "late": sorted(order[7:])}


def in_process(config: RunConfig, trace_path: Path | None, hosts: int = 1):
    """The run's Coordinator without Ray: its own loader and partition, `hosts` ClientHosts (LocalPool)."""
    from fedactors.data.mnist import resolve_data_dir
    from fedactors.runtime.client import ClientHost
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.runtime.experiment import _load_data
    from fedactors.runtime.systems import read_trace
    from fedactors.task import load_task

    if trace_path is not None:
        config = dataclasses.replace(config, client_trace=str(trace_path))
    data, parts, _, _, _ = _load_data(config, load_task(config.task), resolve_data_dir(config.data_dir))
    pool = LocalPool([ClientHost(config, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i,
                                 threads=1) for i in range(hosts)])
    return Coordinator(config, pool, num_test=len(data.y_test),
                       trace=read_trace(trace_path, config.clients) if trace_path is not None else None)


def rounds(coordinator, seen: list | None = None) -> tuple[list[dict], np.ndarray]:
    """Run it: (its round events, its final weights); `seen` collects each round's SecureRound."""
    import torch

    threads = torch.get_num_threads()
    try:
        events = []
        for event in coordinator.run():
            if event["type"] == "round":
                events.append(event)
                if seen is not None:
                    seen.append(coordinator.secure)
        return events, event["weights"]
    finally:
        torch.set_num_threads(threads)


PLAN_KEYS = ("clients", "num_updates", "late", "offline", "dropped", "rejected", "accuracy", "loss", "train_loss")


@pytest.mark.parametrize("mode", ["secagg", "secagg+"])
def test_dropouts_before_and_after_masking_leave_fedavgs_bytes_on_one_host(tmp_path, mode) -> None:
    """secagg (k = 8, t = 3) and secagg+ (k = 6, t = 2) on one in-process host: each round's result is plain
    FedAvg's over the same clients, byte for byte, with round 1's two late and one offline client dropped before
    masking and one dropped after; the round's bytes are the protocol's messages, the masked vectors in place of the
    float32 updates. Under 0.2 s each once torch and the data are loaded (3 s)."""
    # Prepare
    flags = ["--secure-aggregation", mode, "--secagg-threshold", "3"] if mode == "secagg" else SECAGG
    config = config_of(*ARGS, *flags)
    who = write_trace(tmp_path / "trace.csv", config)
    # Execute
    seen: list = []
    secure, weights = rounds(in_process(config, tmp_path / "trace.csv"), seen)
    plain, plain_weights = rounds(in_process(dataclasses.replace(config, secure_aggregation=None, secagg_neighbours=None,
                                                                 secagg_threshold=None), tmp_path / "trace.csv"))
    # Assert: the same plans, the same clients kept, the same bytes
    assert [{k: e[k] for k in PLAN_KEYS} for e in secure] == [{k: e[k] for k in PLAN_KEYS} for e in plain]
    assert secure[0]["late"] == who["late"] and secure[0]["offline"] == [who["offline"]]
    assert weights.tobytes() == plain_weights.tobytes()
    first = seen[0]
    assert first.spec.neighbours == (8 if mode == "secagg" else 6) and len(first.spec.clients) == 9
    assert first.dropped == {who["offline"], *who["late"]}  # shared keys, sent no masked vector
    assert first.silent == {who["silent"]} and who["silent"] in first.survivors  # sent one, then went offline
    assert all(r.dropped == set(r.spec.clients) - r.survivors and not r.silent for r in seen[1:])
    # The round's metrics say as much: k, t, who dropped before and after masking, the seconds spent.
    report = secure[0]["secure"]
    assert (report["neighbours"], report["threshold"]) == (first.spec.neighbours, first.spec.threshold)
    assert report["dropped_before_masking"] == sorted(first.dropped) and report["dropped_after_masking"] == [who["silent"]]
    assert report["survivors"] == len(first.survivors) and report["server_seconds"] > 0 < report["client_seconds"]
    assert all(e["secure"] is None for e in plain)
    for event, plain_event, r in zip(secure, plain, seen, strict=True):
        down, up = 0, 0
        for c in r.spec.clients:
            counted = client_bytes(r.spec.neighbours, r.spec.length,
                                   dropped_neighbours=len(r.dropped & set(r.spec.graph[c])), masked=c in r.survivors,
                                   unmasks=c in r.survivors - r.silent)
            down, up = down + counted.down, up + counted.up
        assert event["bytes_up"] == up and event["bytes_down"] == plain_event["bytes_down"] + down
        assert up > 2 * plain_event["bytes_up"]  # 8 bytes a masked value against 4 a float


@pytest.mark.parametrize(("attack", "scale", "says"), [("nan", "10", "NaN or infinite"), ("sign-flip", "1e7", "too large")])
def test_an_update_the_exact_sum_refuses_is_declined_and_counted_as_fedavg_counts_it(tmp_path, attack, scale,
                                                                                      says) -> None:
    """A faulty client whose update holds NaN, or values past the exact sum's range, sends no masked vector, only that
    it declined and why: the round counts it rejected (and fails or goes on) as plain FedAvg does, on the same bytes."""
    args = ["--task", "digits-mlp", "--clients", "20", "--frac", "0.3", "--partition", "iid", "--epochs", "1",
            "--seed", "1", "--byzantine", "3", "--attack", attack, "--attack-scale", scale, "--min-fit-fraction", "0.3"]
    runs = []
    for flags in (["--secure-aggregation", "secagg", "--secagg-threshold", "2"], []):
        coordinator = in_process(config_of(*args, *flags, rounds=3), None)
        runs.append(rounds(coordinator))
    (secure, weights), (plain, plain_weights) = runs
    assert [e["rejected"] for e in secure] == [e["rejected"] for e in plain] and any(e["rejected"] for e in secure)
    assert [e["failures"] for e in secure] == [e["failures"] for e in plain]
    assert any(says in f for e in secure for f in e["failures"])
    assert weights.tobytes() == plain_weights.tobytes()


def test_too_few_surviving_neighbours_fail_the_round_naming_it_and_the_client(tmp_path) -> None:
    """secagg+ with k = 2, t = 2 on round 1's dropouts: a client whose secret has fewer than t shares among the
    neighbours that answer fails the round with that reason (exit 1), not a wrong sum."""
    config = config_of(*ARGS, "--secure-aggregation", "secagg+", "--secagg-neighbours", "2", "--secagg-threshold", "2")
    write_trace(tmp_path / "trace.csv", config)
    with pytest.raises(RoundFailed, match=r"^round 1: client \d+'s .* has [01] shares from surviving neighbours, fewer "
                                          r"than the threshold t = 2: too many clients dropped out$") as caught:
        rounds(in_process(config, tmp_path / "trace.csv"))
    assert caught.value.exit_code == 1


@pytest.mark.parametrize(("flags", "says"), [
    (["--aggregator", "krum"], "does not go with --aggregator krum: a robust aggregator compares the clients' updates"),
    (["--strategy", "scaffold"], "does not go with --strategy scaffold: its clients send more than their weights"),
    (["--dp", "gaussian"], "does not go with --dp gaussian: central DP clips each update on the server"),
    (["--strategy", "dp-fedavg"], "distributed DP would need each client to clip its own update"),
    (["--strategy", "fedbuff"], "does not go with --strategy fedbuff: it is asynchronous"),
    (["--compress", "q8"], "does not go with --compress q8: a masked update is 8 bytes a value"),
    (["--host-sums"], "--host-sums does not go with --secure-aggregation secagg+"),
    (["--secagg-neighbours", "12"], "neighbours k = 12 must be in [1, 9]"),
    (["--secagg-neighbours", "4", "--secagg-threshold", "5"], "threshold t = 5 must be in [1, k = 4]"),
    (["--frac", "0.01"], "secure aggregation needs at least 2 clients a round, got 1"),
])
def test_a_refused_composition_or_bad_k_t_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path,
                                                                                  flags, says) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = run_main(monkeypatch, capsys, "run", "--partition", "iid", "--secure-aggregation",
                                    "secagg+", *flags, "--out", str(out))
    assert code == 2 and says in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


@pytest.mark.parametrize(("flags", "says"), [
    (["--secure-aggregation", "secagg", "--secagg-neighbours", "4"], "--secagg-neighbours is for --secure-aggregation "
                                                                     "secagg+"),
    (["--secagg-threshold", "3"], "--secagg-threshold needs --secure-aggregation"),
    (["--secure-aggregation", "secagg++"], "Invalid value for '--secure-aggregation'"),
])
def test_secagg_flags_out_of_place_are_one_line_exit_2(monkeypatch, capsys, tmp_path, flags, says) -> None:
    code, _, stderr = run_main(monkeypatch, capsys, "run", *flags, "--out", str(tmp_path / "run"))
    assert code == 2 and says in stderr, stderr
    assert "Traceback" not in stderr


def test_dry_run_counts_the_bytes_and_estimates_the_seconds(monkeypatch, capsys) -> None:
    """--dry-run: k and t for the round's 9 clients, a client's bytes exactly (client_bytes), seconds estimated by
    the calibrated cost model; the virtual clock's preview counts the masked update's bytes."""
    code, stdout, _ = run_main(monkeypatch, capsys, "run", *ARGS, *SECAGG, "--dry-run", "--json")
    assert code == 0
    plan = json.loads(stdout)
    p = plan["secure_aggregation"]
    counted = client_bytes(6, 4810)  # digits-mlp's weights
    assert (p["clients"], p["neighbours"], p["threshold"]) == (9, 6, 2)
    assert (p["bytes_up"], p["bytes_down"], p["update_bytes"]) == (counted.up, counted.down, 4 * 4810)
    assert 0 < p["client_seconds"] < 5 and 0 < p["server_seconds"] <= p["server_seconds_dropped"] < 5
    code, plain, _ = run_main(monkeypatch, capsys, "run", *ARGS, "--dry-run", "--json")
    assert json.loads(plain)["clock"]["client_seconds"]["max"] < plan["clock"]["client_seconds"]["max"]
    code, text, _ = run_main(monkeypatch, capsys, "run", *ARGS, *SECAGG, "--dry-run")
    assert code == 0 and "secure aggregation secagg+: 9 clients a round, each masking with 6 neighbours, t = 2" in text
    assert "(2.04x its float32 update)" in text and "estimated on this machine: a client's masking" in text


# A post-import hook every Python process of the run loads (PYTHONPATH): once fedactors.secagg.protocol is imported,
# SecAggServer.unmask of round PAUSE_ROUND marks PAUSE_MARK and waits there to be killed, every masked update in.
PAUSE = '''
import importlib.abc, importlib.machinery, os, sys, time
from pathlib import Path


class _Pause(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "fedactors.secagg.protocol":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            unmask = module.SecAggServer.unmask

            def paused(server, *args, **kwargs):
                if server.spec.round == int(os.environ["PAUSE_ROUND"]):
                    Path(os.environ["PAUSE_MARK"]).touch()
                    time.sleep(600)
                return unmask(server, *args, **kwargs)

            module.SecAggServer.unmask = paused

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("PAUSE_MARK"):
    sys.meta_path.insert(0, _Pause())
'''


@pytest.mark.slow
def test_three_hosts_sigkilled_between_masking_and_unmasking_resume_to_fedavgs_bytes(tmp_path) -> None:
    """Through Ray on 3 hosts, secagg+ with round 1's dropouts before and after masking: the whole tree SIGKILLed in
    round 3 once every masked update is in and before the server unmasks; --resume runs round 3 again from round 2's
    checkpoint (nothing of a round is stored: the same keys come from the seed) and ends on the bytes and metrics of
    plain FedAvg over the same clients, computed in process. 17-28 s on the 2-core Xeon, most of it two Ray
    start-ups."""
    # Prepare
    args = [*ARGS, "--hosts", "3", "--cpus-per-host", "0.5", "--rounds", "5"]  # 3 hosts on the 2 CPUs
    config = config_of(*ARGS, *SECAGG, rounds=5)
    who = write_trace(tmp_path / "trace.csv", config)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PAUSE)
    out, mark = tmp_path / "run", tmp_path / "paused"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
           "PAUSE_ROUND": "3", "PAUSE_MARK": str(mark)}
    # Execute: start, wait for round 3's unmasking, kill everything
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen([EXE, "run", *args, *SECAGG, "--client-trace", str(tmp_path / "trace.csv"), "--run-id",
                                 "sa", "--out", str(out)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        deadline = time.monotonic() + 200
        while not mark.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.05)
        kill_tree(proc)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "running" and run["rounds_completed"] == 2
    resumed = fedactors("run", "--resume", "sa", "--out", str(out))
    plain, plain_weights = rounds(in_process(dataclasses.replace(config, secure_aggregation=None, secagg_neighbours=None,
                                                                 secagg_threshold=None), tmp_path / "trace.csv",
                                             hosts=3))  # 3 evaluation slices, as the run's: the same loss sums
    # Assert
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert np.load(out / "weights.npy").tobytes() == plain_weights.tobytes()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in PLAN_KEYS} for r in rows] == [{k: e[k] for k in PLAN_KEYS} for e in plain]
    assert rows[0]["late"] == who["late"] and rows[0]["offline"] == [who["offline"]]
    assert all(r["bytes_up"] > 2 * e["bytes_up"] for r, e in zip(rows, plain))
