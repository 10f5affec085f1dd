"""The personalized methods' tables (issue 36, Measure: docs/results-personalization.md) against the committed runs
they name: every number read back from the run's run.json and metrics.jsonl and recomputed from its clients.jsonl,
each run's settings its table's, and the figure's command drawing exactly the table's runs. Files only, no Ray."""

from __future__ import annotations

import json
import re

import numpy as np
from conftest import REPO

RUNS = REPO / "docs" / "runs"
PAGE = REPO / "docs" / "results-personalization.md"
# What a table's runs share (the method's own settings apart), by the heading of its section.
CHARLM = {"task": "char-lm-tiny", "partition": "natural", "frac": 0.3, "rounds": 100, "epochs": 1, "batch_size": 10,
          "lr": 1.0, "seed": 0, "hosts": 2, "eval_every": 10, "client_test_fraction": None, "holdout_clients": None}
NONIID = {"partition": "noniid", "clients": 100, "frac": 0.1, "rounds": 20, "epochs": 1, "batch_size": 10, "lr": 0.1,
          "seed": 0, "hosts": 2, "eval_every": 10, "client_test_fraction": 0.2, "holdout_clients": None}
DIRICHLET = {**NONIID, "partition": "dirichlet", "alpha": 0.1}
TABLES = {"## char-lm-tiny's 17 natural roles": CHARLM, "## The paper's pathological non-IID MNIST": NONIID,
          "## Dirichlet alpha = 0.1 MNIST": DIRICHLET}
HEADER = "| method | global mean | mean | p10 | worst | hurt | wall | run |"


def table_rows(heading: str) -> list[list[str]]:
    section = PAGE.read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    table = next(block for block in section.split("\n\n") if block.startswith(HEADER))
    return [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()[2:]]


def load(name: str) -> tuple[dict, dict, dict]:
    """A committed run's run.json, its metrics.jsonl rows by round, and its clients.jsonl rows by round."""
    info = json.loads((RUNS / name / "run.json").read_text())
    metrics = {row["round"]: row for row in map(json.loads, (RUNS / name / "metrics.jsonl").read_text().splitlines())}
    clients = {row["round"]: row["clients"]
               for row in map(json.loads, (RUNS / name / "clients.jsonl").read_text().splitlines())}
    return info, metrics, clients


def method_of(config: dict, lr: float) -> str:
    """The table's name for a run's method, from its settings (the global model's row is named apart), saying its
    client learning rate where it is not the table's `lr`."""
    strategy = config["strategy"]
    if strategy == "fedavg":
        name = f"FedAvg-FT ({config['finetune_steps']} steps)" if config["finetune_steps"] else "FedAvg"
    else:
        name = {"fedper": "FedPer", "fedrep": f"FedRep (head-epochs {config['head_epochs']})", "fedbn": "FedBN",
                "ditto": f"Ditto (lambda {config['ditto_lambda']:g})"}[strategy]
    return name if config["lr"] == lr else f"{name}, lr {config['lr']:g}"


def spread(accuracy: list[float]) -> tuple[float, float, float]:
    p10 = np.percentile(accuracy, 10)
    return float(np.mean(accuracy)), float(p10), float(min(accuracy))


def test_every_number_in_the_tables_is_what_its_committed_run_says():
    for heading, shared in TABLES.items():
        rows = table_rows(heading)
        assert len(rows) >= 5, heading
        for method, global_mean, mean, p10, worst, hurt, wall, name in rows:
            info, metrics, clients = load(name)
            config = info["config"]
            assert {k: config.get(k) for k in shared if k != "lr"} == {k: v for k, v in shared.items() if k != "lr"}, name
            assert info["status"] == "finished" and info["rounds_completed"] == shared["rounds"], name
            assert config["task"] == ("mnist-cnn-bn" if config["strategy"] == "fedbn" else
                                      shared.get("task", "mnist-cnn")), name
            last = metrics[shared["rounds"]]  # the same round for every method: the last, evaluated
            mine = clients[shared["rounds"]]
            globals_ = [c["global"] for c in mine.values()]
            assert global_mean == f"{last['client_accuracy']['mean']:.3f}" == f"{np.mean(globals_):.3f}", name
            if method == "FedAvg, global model":  # the global model judged on each client's own split
                judged = last["client_accuracy"]
                assert config["strategy"] == "fedavg" and config["lr"] == shared["lr"] and hurt == "-", name
            else:
                assert method == method_of(config, shared["lr"]), name
                judged = last["personal_accuracy"]
                personal = [c["personal"] for c in mine.values()]
                assert np.allclose(spread(personal), (judged["mean"], judged["p10"], judged["worst"])), name
                share = np.mean([c["personal"] < c["global"] for c in mine.values()])
                assert hurt == f"{judged['hurt']:.0%}" == f"{share:.0%}", name
                assert judged["global_mean"] == last["client_accuracy"]["mean"], name
            assert np.allclose(spread(globals_), [last["client_accuracy"][k] for k in ("mean", "p10", "worst")]), name
            assert [mean, p10, worst] == [f"{judged[k]:.3f}" for k in ("mean", "p10", "worst")], name
            assert wall == f"{info['wall_seconds'] / 60:.1f} min", name


def test_the_global_model_is_fedavgs_in_every_run_that_shares_it():
    # The page reads FedAvg's global model off the fine-tuned run and says Ditto's is FedAvg's: personalizing
    # never changes training, and Ditto's w is FedAvg's to the byte.
    for heading in TABLES:
        names = {row[0]: row[-1] for row in table_rows(heading)}
        same = [name for method, name in names.items() if method.startswith(("FedAvg", "Ditto"))]
        assert len(same) >= 3, heading
        curves = [{r: m["accuracy"] for r, m in load(name)[1].items() if "accuracy" in m} for name in same]
        assert all(curve == curves[0] for curve in curves), same


def test_the_figures_command_draws_exactly_the_tables_runs():
    text = PAGE.read_text()
    for heading in TABLES:
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        command = re.search(r"^fedactors plot (.*) --clients -o (docs/\S+\.png)", section, re.MULTILINE)
        runs = {path.removeprefix("docs/runs/") for path in command.group(1).split()}
        assert runs == {row[-1] for row in table_rows(heading)}, heading
        figure = REPO / command.group(2).replace(".png", "-clients.png")
        assert figure.is_file() and f"({figure.name})" in section, figure
