"""Robust aggregation end to end: real MNIST, real Ray, 2 of 10 sampled clients sign-flipping."""

import json

import pytest

from conftest import accuracies, fedactors

pytestmark = pytest.mark.slow

# K = 50, C = 0.2 and 10 faulty clients: with seed 0 both rounds sample exactly two of them among their ten
# (test_the_attackers_and_aggregator_are_recorded checks the evaluated round's record). The paper's 2NN on
# 1,200 images per client keeps a round to a second (the CNN's took 20 to 30 s, and evaluating it 3 s more): the
# aggregators see flat updates whatever the model. B = 10 lets Krum's one chosen update (a single client's 120
# steps) reach 0.89, clear of the 0.8 bar. Only round 2 is evaluated: what is compared is where the model got to.
ATTACKED = ["--task", "mnist-2nn", "--clients", "50", "--frac", "0.2", "--partition", "iid", "--epochs", "1",
            "--batch-size", "10", "--rounds", "2", "--eval-every", "2", "--seed", "0", "--byzantine", "10",
            "--attack", "sign-flip", "--attack-scale", "10"]
# The trimmed mean is the median's sibling (the same native sort): its kernel is tested against NumPy, not run here.
AGGREGATORS = {"fedavg": [], "median": ["--aggregator", "median"], "krum": ["--aggregator", "krum", "--krum-f", "2"],
               "multi-krum": ["--aggregator", "multi-krum", "--krum-f", "2"]}


@pytest.fixture(scope="module")
def attacked_runs(tmp_path_factory, mnist_dir):
    base = tmp_path_factory.mktemp("byzantine")
    for name, flags in AGGREGATORS.items():
        result = fedactors("run", *ATTACKED, *flags, "--out", str(base / name))
        assert result.returncode == 0, result.stderr
    return base


def test_sign_flipping_collapses_fedavg_while_median_and_krum_learn(attacked_runs):
    final = {name: accuracies(attacked_runs / name)[-1] for name in AGGREGATORS}
    robust = [name for name in AGGREGATORS if name != "fedavg"]
    assert final["fedavg"] < 0.3, final
    assert all(final[name] > 0.8 for name in robust), final
    assert min(final[name] for name in robust) - final["fedavg"] > 0.5, final


def test_the_attackers_and_aggregator_are_recorded(attacked_runs):
    from fedactors.attacks import byzantine_clients

    faulty = byzantine_clients(0, 50, 10)
    for name in AGGREGATORS:
        rows = [json.loads(line) for line in (attacked_runs / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [2]
        assert all(len(r["byzantine"]) == 2 and r["num_updates"] == 10 and r["rejected"] == [] for r in rows)
        assert set(rows[0]["byzantine"]) <= faulty  # fixed for the run
        config = json.loads((attacked_runs / name / "run.json").read_text())["config"]
        assert (config["aggregator"], config["byzantine"], config["attack"]) == (name, 10, "sign-flip")
