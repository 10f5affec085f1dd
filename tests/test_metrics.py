"""Any output: regression on float targets, a task's own metrics by name, and --target-metric."""

import json

import numpy as np
import pytest

from conftest import fedactors

REGRESSION = '''
import numpy as np
from fedactors.task import Arrays, Task

def load(d):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=400)
    return Arrays(x[:300], y[:300], x[300:], y[300:])

def model():
    from torch import nn
    return nn.Linear(3, 1)

def mae(out, y):
    return (out.reshape(y.shape) - y).abs()

task = Task("regression", model, load, labels="values", metrics={"mae": mae}, minimize=("mae",))
raises = Task("raises", model, load, labels="values", metrics={"mae": lambda out, y: 1 / 0})
scalar = Task("scalar", model, load, labels="values", metrics={"mae": lambda out, y: (out.flatten() - y).abs().mean()})
'''


@pytest.fixture
def regression(tmp_path):
    path = tmp_path / "regression.py"
    path.write_text(REGRESSION)
    return str(path)


def test_a_task_metric_is_summed_per_example_and_divided_by_the_count():
    import torch

    from fedactors.model import FlatModel

    model = FlatModel(lambda: torch.nn.Linear(2, 3))
    x, y = torch.randn(23, 2), torch.randint(0, 3, (23,))
    wrong = {"error": lambda out, labels: (out.argmax(1) != labels).float()}
    result = model.evaluate_all(x, y, batch_size=5, metrics=wrong, hits=True)
    assert result.sums["error"] == 23 - result.correct
    assert result.hits.tolist() == (model.module(x).argmax(1) == y).tolist()
    assert model.evaluate(x, y, batch_size=5) == (result.loss_sum, result.correct)


def test_regression_trains_on_float_targets_and_reaches_a_target_on_its_own_metric(regression, tmp_path):
    out = tmp_path / "run"
    result = fedactors("run", "--task", f"{regression}:task", "--clients", "5", "--partition", "iid", "--frac", "0.4",
                       "--rounds", "4", "--epochs", "1", "--target", "0.3", "--target-metric", "mae", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["accuracy"] is None and r["mae"] >= 0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["mae"] < 0.3  # y = x.w: a linear model learns it
    run = json.loads((out / "run.json").read_text())
    first = next(r["round"] for r in rows if r["mae"] <= 0.3)
    assert run["rounds_to_target"] == first and run["target_lower"] is True
    assert run["best_value"] == min(r["mae"] for r in rows)
    assert f"target mae <= 0.3: reached at round {first}" in result.stdout


@pytest.mark.parametrize(("spec", "extra", "message"), [
    ("raises", [], "the task's metric 'mae' failed: ZeroDivisionError"),
    ("scalar", [], r"the task's metric 'mae' must return one value per example \(2,\), got \(\)"),
    ("task", ["--target-metric", "accuracy2"], "--target-metric accuracy2: task regression reports loss, mae"),
])
def test_bad_metrics_are_one_line_and_exit_2(regression, tmp_path, spec, extra, message):
    result = fedactors("run", "--task", f"{regression}:{spec}", "--clients", "5", "--rounds", "1", *extra,
                       "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr or __import__("re").search(message, result.stderr)


def test_a_metric_named_like_fedactors_own_is_refused():
    from fedactors.errors import ConfigError
    from fedactors.task import Task

    with pytest.raises(ConfigError, match="metric names loss are fedactors' own"):
        Task("t", lambda: None, metrics={"loss": lambda o, y: o})
    with pytest.raises(ConfigError, match="minimize must be a tuple of names from its metrics"):
        Task("t", lambda: None, metrics={"mae": lambda o, y: o}, minimize=("mse",))


def test_summaries_of_another_target_metric():
    from fedactors.results.report import summarise

    history = [{"round": 1, "accuracy": 0.5, "loss": 2.0}, {"round": 2, "accuracy": 0.7, "loss": 1.2},
               {"round": 3, "accuracy": 0.6, "loss": 0.9}]
    assert summarise(history, 0.65)["rounds_to_target"] == 2
    by_loss = summarise(history, 1.0, "loss", lower=True)
    assert by_loss["rounds_to_target"] == 3 and by_loss["best_value"] == 0.9 and by_loss["best_accuracy"] == 0.7
    assert np.isclose(summarise(history, 0.6, "accuracy")["final_accuracy"], 0.6)
