"""Robust aggregation end to end: real MNIST, real Ray, 2 of 10 sampled clients sign-flipping."""

import json

import pytest

from conftest import accuracies, fedactors

pytestmark = pytest.mark.slow

# K = 10 and C = 1: every round samples all ten, so exactly the two faulty clients attack in each.
ATTACKED = ["--clients", "10", "--frac", "1.0", "--partition", "iid", "--epochs", "1", "--batch-size", "50",
            "--rounds", "2", "--seed", "1", "--byzantine", "2", "--attack", "sign-flip", "--attack-scale", "10"]
AGGREGATORS = {"fedavg": [], "median": ["--aggregator", "median"],
               "trimmed-mean": ["--aggregator", "trimmed-mean", "--trim-fraction", "0.2"]}


@pytest.fixture(scope="module")
def attacked_runs(tmp_path_factory, mnist_dir):
    base = tmp_path_factory.mktemp("byzantine")
    for name, flags in AGGREGATORS.items():
        result = fedactors("run", *ATTACKED, *flags, "--out", str(base / name))
        assert result.returncode == 0, result.stderr
    return base


def test_sign_flipping_collapses_fedavg_while_median_and_trimmed_mean_learn(attacked_runs):
    final = {name: accuracies(attacked_runs / name)[-1] for name in AGGREGATORS}
    assert final["fedavg"] < 0.3, final
    assert final["median"] > 0.9 and final["trimmed-mean"] > 0.9, final
    assert min(final["median"], final["trimmed-mean"]) - final["fedavg"] > 0.6, final


def test_the_attackers_and_aggregator_are_recorded(attacked_runs):
    for name in AGGREGATORS:
        rows = [json.loads(line) for line in (attacked_runs / name / "metrics.jsonl").read_text().splitlines()]
        assert all(len(r["byzantine"]) == 2 and r["num_updates"] == 10 and r["rejected"] == [] for r in rows)
        assert rows[0]["byzantine"] == rows[1]["byzantine"]  # fixed for the run
        config = json.loads((attacked_runs / name / "run.json").read_text())["config"]
        assert (config["aggregator"], config["byzantine"], config["attack"]) == (name, 2, "sign-flip")
