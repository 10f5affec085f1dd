"""The table of DP-FedAvg, DP-FedAvgM and DP-FedAdam with adaptive clipping (issue 35, Measure) against the
committed runs it names: every number read back from their run.json and metrics.jsonl, the runs one setting apart
(the server optimizer), and the figure's script drawing exactly those runs. Files only, no Ray."""

from __future__ import annotations

import importlib.util
import json

from conftest import REPO

RUNS = REPO / "docs" / "runs"
PAGE = REPO / "docs" / "results-privacy.md"  # the results page of the DP guide (docs/privacy.md)
HEADING = "## DP with a server optimizer: DP-FedAvg, DP-FedAvgM and DP-FedAdam, adaptive clipping"
# What the four runs share: the adaptive 2NN command of "Where DP works" (the same page).
SHARED = {"task": "mnist-2nn", "clients": 1000, "frac": 0.1, "rounds": 200, "epochs": 1, "batch_size": 10, "lr": 0.1,
          "partition": "iid", "seed": 0, "eval_every": 5, "strategy": "dp-fedavg", "clip": "adaptive",
          "noise_multiplier": 1.0, "delta": 1e-5, "dp_seed": 0, "accountant": "pld"}


def table_rows() -> list[list[str]]:
    section = PAGE.read_text().split(HEADING, 1)[1]
    table = next(block for block in section.split("\n\n") if block.startswith("| method, adaptive clip"))
    return [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:]]


def test_the_readmes_server_optimizer_table_is_what_its_committed_runs_say():
    rows = table_rows()
    assert len(rows) == 4
    for method, server_lr, rounds, final, best, wall, name in rows:
        info = json.loads((RUNS / name / "run.json").read_text())
        config = info["config"]
        metrics = {row["round"]: row for row in map(json.loads, (RUNS / name / "metrics.jsonl").read_text().splitlines())}
        assert {k: config[k] for k in SHARED} == SHARED, name
        optimizer = config.get("server_optimizer")
        assert method.startswith({None: "DP-FedAvg", "fedavgm": "DP-FedAvgM", "fedadam": "DP-FedAdam"}[optimizer]), name
        assert server_lr == ("none" if optimizer is None else f"{config['server_lr']:g}"), name
        if optimizer == "fedavgm":
            assert method.endswith(f"momentum {config['server_momentum']:g}"), name
        done = info["rounds_completed"]
        assert rounds == (str(done) if info["status"] == "finished" else f"{done}, NaN in round {done + 1}"), name
        last = metrics[done]
        assert final == f"{info['final_accuracy']:.4f} ({last['epsilon']:.2f})" and last["accuracy"] == info[
            "final_accuracy"], name
        top = metrics[info["best_round"]]
        assert best == f"{info['best_accuracy']:.4f} ({info['best_round']}, {top['epsilon']:.2f})", name
        assert top["accuracy"] == max(row["accuracy"] for row in metrics.values()), name
        assert wall == f"{info['wall_seconds'] / 60:.1f} min", name


def test_the_server_figure_draws_exactly_the_tables_runs():
    spec = importlib.util.spec_from_file_location("dp_epsilon_figure", RUNS / "dp_epsilon_figure.py")
    figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure)
    assert sorted(run.name for run in RUNS.glob(figure.SERVER_RUNS)) == sorted(row[-1] for row in table_rows())
