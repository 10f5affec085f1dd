"""Real rounds on real MNIST through a real local Ray cluster, driven as a user drives it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ISSUE_COMMAND = ["--clients", "10", "--frac", "1.0", "--rounds", "2", "--partition", "iid", "--epochs", "1", "--batch-size", "50"]


def _run(out, *extra):
    exe = os.path.join(os.path.dirname(sys.executable), "fedactors")
    result = subprocess.run([exe, "run", *ISSUE_COMMAND, *extra, "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def issue_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "a"
    return out, _run(out)


def test_two_rounds_reach_93_percent_and_write_the_output_contract(issue_run, mnist_dir):
    out, result = issue_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert {"round", "accuracy", "loss", "round_seconds"} <= set(r)
        assert r["num_updates"] == 10 and sorted(r["clients"]) == list(range(10))
    assert rows[1]["accuracy"] >= 0.93
    weights = np.load(out / "weights.npy")
    assert weights.dtype == np.float32 and weights.shape == (1_663_370,)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["rounds_completed"] == 2
    assert run["config"]["clients"] == 10 and run["config"]["batch_size"] == 50
    assert run["best_accuracy"] == max(r["accuracy"] for r in rows)
    reached = [r["round"] for r in rows if r["accuracy"] >= run["config"]["target"]]
    assert run["rounds_to_target"] == (reached[0] if reached else None)
    assert run["hosts"] >= 1 and run["failures"] == 0 and run["hosts_lost"] == {}
    assert run["config"]["data_dir"] == str(mnist_dir)  # the directory actually read, not null
    assert run["total_wall_seconds"] == run["wall_seconds"] > run["startup_seconds"] > 0
    # Progress: a line per round with its accuracy, and the closing summary.
    assert "round 1/2  acc" in result.stdout and "round 2/2  acc" in result.stdout
    assert "best accuracy" in result.stdout
