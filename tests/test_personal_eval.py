"""Issue 36 item 3: every client judged on its own split, the global model and each client's personalized one
(an algorithm's personalize(), --finetune-steps), with the statistics the field reports and clients.jsonl."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedactors.algorithms import Algorithm
from fedactors.config import RunConfig
from fedactors.errors import ConfigError


def _run(tmp_path, algorithm=None, **settings):
    """An in-process digits run with --client-test-fraction: (its round events, its coordinator)."""
    import torch

    from fedactors.data.partition import hold_out, partition
    from fedactors.runtime.client import ClientHost
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.task import load_arrays, load_task

    cfg = RunConfig(**{"task": "digits-mlp", "clients": 10, "frac": 0.5, "rounds": 3, "epochs": 1, "batch_size": 20,
                       "partition": "noniid", "seed": 0, "client_test_fraction": 0.2, **settings})
    data = load_arrays(load_task(cfg.task), None, tmp_path)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed)
    holdout = None
    if cfg.client_test_fraction is not None:  # as experiment._load_data
        parts, holdout = hold_out(parts, 1.0, cfg.seed, examples=cfg.client_test_fraction)
    threads = torch.get_num_threads()
    try:
        hosts = [ClientHost(cfg, host_id=i, threads=1, algorithm=algorithm) for i in range(2)]
        for host in hosts:
            host.load(data.x_train, data.y_train, parts, data.x_test, data.y_test,
                      None if holdout is None else holdout.indices)
        owners = None if holdout is None else np.repeat(np.arange(len(holdout)), holdout.sizes)
        coordinator = Coordinator(cfg, LocalPool(hosts), num_test=len(data.y_test), eval_owners=owners,
                                  held_out=holdout is not None, strategy=algorithm)
        events = [e for e in coordinator.run() if e["type"] == "round"]
    finally:
        torch.set_num_threads(threads)
    return events, holdout, data


def test_fine_tuning_judges_each_client_on_its_own_split_beside_the_global_model(tmp_path):
    """FedAvg-FT on the pathological split: every client is judged on its 20%, the statistics are those of the
    per-client lists, fine-tuning lifts the clients far above the global model (as the literature has it), and the
    global model's bytes are those of the same run without it (personalization never touches training)."""
    events, holdout, _ = _run(tmp_path, finetune_steps=20)
    plain, _, _ = _run(tmp_path)
    for e, p in zip(events, plain):
        assert e["accuracy"] == p["accuracy"] and e["client_accuracy"] == p["client_accuracy"]
        assert p["personal_accuracy"] is None and "personal" not in p["clients_table"]
        table, mine = e["clients_table"], e["personal_accuracy"]
        assert table["clients"] == list(range(10)) and table["examples"] == holdout.sizes.tolist()
        assert min(table["examples"]) > 0
        personal, global_ = np.array(table["personal"]), np.array(table["global"])
        counts = np.array(table["examples"])
        assert mine["clients"] == 10 and mine["mean"] == pytest.approx(personal.mean())
        assert mine["weighted"] == pytest.approx((personal * counts).sum() / counts.sum())
        assert (mine["p10"], mine["p50"]) == pytest.approx(tuple(np.percentile(personal, [10, 50])))
        assert mine["worst"] == personal.min() and mine["hurt"] == pytest.approx((personal < global_).mean())
        assert mine["global_mean"] == pytest.approx(e["client_accuracy"]["mean"])
        assert mine["mean"] > mine["global_mean"] + 0.3  # two digits a client: 20 steps on its own data win
    again, _, _ = _run(tmp_path, finetune_steps=20)
    assert [e["clients_table"] for e in again] == [e["clients_table"] for e in events]  # seeded: the same


class Zeroed(Algorithm):
    """Personalizes every client to the all-zero model: its logits are all equal, so it predicts class 0."""

    name = "zeroed"

    def personalize(self, client):
        assert client.state == {} and np.array_equal(client.model.get_weights(), client.global_weights)
        client.model.set_weights(np.zeros_like(client.global_weights))


def test_an_algorithms_personalize_makes_the_model_each_client_is_judged_by(tmp_path):
    events, holdout, data = _run(tmp_path, Zeroed(), strategy="python:zeroed")
    labels = data.y_train[holdout.indices]
    share_of_zero = [float((labels[holdout.offsets[c]:holdout.offsets[c + 1]] == 0).mean()) for c in range(10)]
    for e in events:
        assert e["clients_table"]["personal"] == pytest.approx(share_of_zero)


def test_personalization_without_a_split_of_each_clients_own_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^--finetune-steps 5, but no client has a test split of its own to judge "
                                          r"them on: add --client-test-fraction F"):
        _run(tmp_path, finetune_steps=5, client_test_fraction=None)
    with pytest.raises(ConfigError, match=r"^--strategy python:zeroed personalizes its clients' models, but no client"):
        _run(tmp_path, Zeroed(), strategy="python:zeroed", client_test_fraction=None)
    with pytest.raises(ConfigError, match=r"^--client-test-fraction must be a fraction in \(0, 1\), got 1"):
        RunConfig(client_test_fraction=1)
    with pytest.raises(ConfigError, match="--client-test-fraction and --eval-clients both hold examples out"):
        RunConfig(client_test_fraction=0.2, eval_clients=0.5)
    with pytest.raises(ConfigError, match=r"^--finetune-steps must be an integer >= 0, got -1"):
        RunConfig(finetune_steps=-1)


def test_a_resumed_run_keeps_only_the_checkpoints_rounds_in_clients_jsonl(tmp_path):
    from fedactors.results.outputs import RunDirectory

    run = RunDirectory(tmp_path)
    for r in (2, 4, 6):
        run.append_clients({"round": r, "clients": [0, 3], "examples": [5, 6], "global": [0.2, 0.5]}, ["a", "b", "c", "d"])
    rows = [json.loads(line) for line in run.clients_path.read_text().splitlines()]
    assert rows[0] == {"round": 2, "clients": {"a": {"examples": 5, "global": 0.2}, "d": {"examples": 6, "global": 0.5}}}
    run.reopen([{"round": 2, "accuracy": 0.1, "loss": 1.0}, {"round": 4, "accuracy": 0.2, "loss": 0.9}])
    assert [json.loads(line)["round"] for line in run.clients_path.read_text().splitlines()] == [2, 4]


@pytest.mark.slow
def test_through_ray_clients_jsonl_names_each_owner_and_the_progress_line_says_who_was_hurt(tmp_path):
    """char-lm-tiny's roles judged on their owners' own test lines (no --client-test-fraction needed), fine-tuned:
    clients.jsonl is keyed by the roles' names, metrics.jsonl holds the statistics, and the progress line shows them."""
    from conftest import fedactors

    out = tmp_path / "run"
    result = fedactors("run", "--task", "char-lm-tiny", "--partition", "natural", "--frac", "0.3", "--rounds", "2",
                       "--epochs", "1", "--finetune-steps", "3", "--hosts", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "personalized mean" in result.stdout and "hurt" in result.stdout
    rows = [json.loads(line) for line in (out / "clients.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] or [r["round"] for r in rows] == [2]
    names = set(rows[-1]["clients"])
    assert "HAMLET" in names and not any(n.isdigit() for n in names)  # owner ids, not client numbers
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Every role with test lines of its own (16 of the 17), as the global model's per-client spread counts them.
    assert metrics[-1]["personal_accuracy"]["clients"] == metrics[-1]["client_accuracy"]["clients"] == len(names) >= 16
    # report --clients names the worst roles as clients.jsonl has them; plot --clients draws their distributions.
    worst = sorted(rows[-1]["clients"].items(), key=lambda item: (item[1]["personal"], item[0]))[:3]
    report = fedactors("report", str(out), "--clients", "3")
    assert report.returncode == 0, report.stderr
    assert all(line.startswith(name + " ") for line, (name, _) in zip(report.stdout.splitlines()[-3:], worst, strict=True))
    plotted = fedactors("plot", str(out), "--clients", "-o", str(tmp_path / "acc.png"))
    assert plotted.returncode == 0, plotted.stderr
    assert plotted.stdout.split() == [str(tmp_path / "acc.png"), str(tmp_path / "acc-clients.png")]
    from PIL import Image

    with Image.open(tmp_path / "acc-clients.png") as image:
        assert image.size[0] > 800 and image.size[1] >= 500


def test_report_names_the_k_worst_clients_by_their_own_model(tmp_path):
    """`report --clients K`: the K clients whose personalized model did worst on their own split at the last
    evaluated round, global beside, marked where personalization hurt; by the global model where none was made."""
    from fedactors.errors import DataError
    from fedactors.results.outputs import RunDirectory
    from fedactors.results.report import format_worst_clients

    run = RunDirectory(tmp_path)
    run.append_clients({"round": 2, "clients": [0, 1, 2], "examples": [5, 6, 7], "global": [0.0, 0.0, 0.0],
                        "personal": [0.0, 0.0, 0.0]}, ["x", "y", "z"])
    run.append_clients({"round": 4, "clients": [0, 1, 2, 3], "examples": [5, 6, 7, 8], "global": [0.5, 0.9, 0.2, 0.7],
                        "personal": [0.6, 0.8, 0.9, 0.4]}, ["amy", "bob", "cy", "di"])
    text = format_worst_clients(tmp_path, 2, label="mine")
    lines = text.splitlines()
    assert lines[0] == ("mine: the 2 worst of 4 clients at round 4, by their personalized model's accuracy on their "
                        "own split")
    assert [line.split()[:4] for line in lines[3:]] == [["di", "8", "0.7000", "0.4000"], ["amy", "5", "0.5000", "0.6000"]]
    assert lines[3].endswith("yes") and not lines[4].endswith("yes")  # di's fell below the global model
    (tmp_path / "g").mkdir()
    RunDirectory(tmp_path / "g").append_clients({"round": 1, "clients": [0, 1], "examples": [3, 3], "global": [0.9, 0.1]})
    assert format_worst_clients(tmp_path / "g", 5).splitlines()[3].split() == ["1", "3", "0.1000"]
    with pytest.raises(DataError, match="no clients.jsonl: the run judged no client on its own split"):
        format_worst_clients(tmp_path / "none", 3)


def test_held_out_clients_never_train_and_are_judged_beside_those_that_did(tmp_path):
    """--holdout-clients: a seeded share of the clients is never sampled; each evaluation judges them on their own
    splits after fine-tuning from the global model, reported apart (personal_accuracy["unseen"]) so the
    participation gap can be read; clients.jsonl marks them."""
    from fedactors.seeding import holdout_clients

    events, _, _ = _run(tmp_path, finetune_steps=20, holdout_clients=0.2, rounds=4)
    unseen = holdout_clients(0, 10, 0.2).tolist()
    assert len(unseen) == 2
    assert all(not set(e["clients"]) & set(unseen) for e in events)
    assert set().union(*(e["clients"] for e in events)) <= set(range(10)) - set(unseen)
    for e in events:
        table, stats = e["clients_table"], e["personal_accuracy"]
        assert table["unseen"] == unseen
        where = [table["clients"].index(c) for c in unseen]
        assert stats["unseen"]["clients"] == 2 and stats["clients"] == 8
        assert stats["unseen"]["mean"] == pytest.approx(np.mean([table["personal"][i] for i in where]))
        assert stats["unseen"]["global_mean"] == pytest.approx(np.mean([table["global"][i] for i in where]))
    with pytest.raises(ConfigError, match=r"^--holdout-clients keeps clients out of the paper's uniform sampling; "
                                          r"the virtual clock"):
        RunConfig(holdout_clients=0.2, client_speed="lognormal:1")
    with pytest.raises(ConfigError, match=r"^--holdout-clients keeps clients out of the paper's uniform sampling; "
                                          r"--strategy dp-fedavg samples by Poisson"):
        RunConfig(holdout_clients=0.2, strategy="dp-fedavg", dp_seed=1)
    with pytest.raises(ConfigError, match=r"^--holdout-clients 0.95 leaves 5 of 100 clients to train, fewer than a "
                                          r"round's 10"):
        RunConfig(holdout_clients=0.95)
    with pytest.raises(ConfigError, match=r"--holdout-clients 0.2 keeps clients out of training to judge them on "
                                          r"their own splits, and no client has one: add --client-test-fraction F"):
        _run(tmp_path, holdout_clients=0.2, client_test_fraction=None)
