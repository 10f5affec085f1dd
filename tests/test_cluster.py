"""Clusters and faults: a real two-node Ray cluster on loopback, logical GPUs, hosts killed mid-round."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import ARGS, EXE, ROUNDS, accuracies, assert_same_as_reference, fedactors, rows

pytestmark = pytest.mark.slow


def without_hosts(args):
    i = args.index("--hosts")
    return args[:i] + args[i + 2 :]


@pytest.fixture
def cluster():
    """A head node and a worker node, each its own raylet with one CPU, on this machine's loopback."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def test_two_node_cluster_trains_on_both_nodes_with_the_single_node_weights(cluster, reference, tmp_path):
    out = tmp_path / "run"
    result = fedactors("run", *without_hosts(ARGS), "--rounds", str(ROUNDS), "--address", cluster.address, "--out", str(out))
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    hosts = run["host_info"]
    assert len(hosts) == 2  # one CPU per node, one host per CPU
    assert len({h["node_id"] for h in hosts}) == 2, hosts  # spread: one host on each node
    assert all(h["clients_trained"] > 0 for h in hosts)
    assert sum(h["clients_trained"] for h in hosts) == 5 * ROUNDS
    assert "2 client hosts on 2 nodes" in result.stdout
    assert_same_as_reference(out, reference)


def test_attaching_to_nothing_is_one_clear_line(tmp_path):
    result = fedactors("run", *ARGS, "--rounds", "1", "--address", "127.0.0.1:1", "--out", str(tmp_path / "o"), timeout=180)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("fedactors: error: could not start or reach the Ray cluster at 127.0.0.1:1"), result.stderr


def _start(out, *args):
    log = open(out.parent / "log.txt", "w")
    proc = subprocess.Popen([EXE, "run", *args, "--out", str(out)], stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def _kill_host_after_rows(proc, out, n_rows, host=0, delay=0.3):
    deadline = time.monotonic() + 300
    while rows(out) < n_rows:
        assert proc.poll() is None and time.monotonic() < deadline, (out.parent / "log.txt").read_text()
        time.sleep(0.02)
    time.sleep(delay)  # the next round's clients are training now
    pid = json.loads((out / "run.json").read_text())["host_info"][host]["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_host_killed_mid_round_is_replaced_and_the_weights_do_not_change(reference, tmp_path):
    out = tmp_path / "run"
    proc, log = _start(out, *ARGS, "--rounds", str(ROUNDS))
    _kill_host_after_rows(proc, out, 2)
    assert proc.wait(timeout=600) == 0, (tmp_path / "log.txt").read_text()
    log.close()
    run = json.loads((out / "run.json").read_text())
    assert run["failures"] >= 1 and run["retried"] >= 1 and run.get("dropped", 0) == 0
    text = (tmp_path / "log.txt").read_text()
    assert "failed: client" in text and "died" in text and "retried" in text
    assert_same_as_reference(out, reference)


def test_min_fit_fraction_accepts_a_round_with_fewer_updates(tmp_path):
    # Five hosts, one client each: a killed host loses exactly its one client, 4 of 5 = 0.8.
    args = ["--clients", "100", "--frac", "0.05", "--partition", "iid", "--epochs", "3", "--batch-size", "50",
            "--hosts", "5", "--cpus-per-host", "0.4", "--min-fit-fraction", "0.8", "--rounds", "3"]
    out = tmp_path / "run"
    proc, log = _start(out, *args)
    _kill_host_after_rows(proc, out, 1, host=2)
    assert proc.wait(timeout=600) == 0, (tmp_path / "log.txt").read_text()
    log.close()
    rows_ = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    short = [r for r in rows_ if r["num_updates"] < 5]
    assert len(short) == 1 and short[0]["num_updates"] == 4 and len(short[0]["dropped"]) == 1
    assert short[0]["retried"] == []  # accepted, not retrained
    run = json.loads((out / "run.json").read_text())
    assert run["dropped"] == 1 and run["failures"] == 1
    assert "dropped 1" in (tmp_path / "log.txt").read_text()


def test_round_timeout_fails_the_round_loudly(tmp_path):
    result = fedactors("run", *ARGS, "--rounds", "2", "--epochs", "5", "--round-timeout", "0.2", "--out", str(tmp_path / "o"))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "round 1: clients" in last and "failed 3 times" in last and "timed out after 0.2 s" in last, result.stderr
    assert json.loads((tmp_path / "o" / "run.json").read_text())["status"] == "failed"


@pytest.fixture
def gpu_cluster():
    """One node declaring one logical GPU (and two CPUs): placement is real, the GPU is not."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False})
    c.wait_for_nodes()
    yield c
    c.shutdown()


def test_ten_hosts_share_one_gpu_at_a_tenth_each_and_an_eleventh_is_refused(gpu_cluster, tmp_path):
    args = ["--clients", "100", "--frac", "0.1", "--partition", "iid", "--epochs", "1", "--batch-size", "100",
            "--rounds", "1", "--gpus-per-host", "0.1", "--cpus-per-host", "0.1", "--address", gpu_cluster.address]
    refused = fedactors("run", *args, "--hosts", "11", "--out", str(tmp_path / "eleven"), timeout=180)
    assert refused.returncode == 2
    assert "--hosts 11 needs 1.1 CPUs and 1.1 GPUs, but the Ray cluster has 2 CPUs and 1 GPUs (room for 10 hosts)" in refused.stderr

    out = tmp_path / "ten"
    result = fedactors("run", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    hosts = json.loads((out / "run.json").read_text())["host_info"]
    assert len(hosts) == 10
    assert all(h["gpu_ids"] == ["0"] for h in hosts), hosts  # all ten on the one GPU
    if torch.cuda.is_available():
        assert all(h["device"].startswith("cuda") and h["fallback"] is None for h in hosts)
    else:  # a logical GPU: each host says so and trains on the CPU
        assert all(h["device"] == "cpu" and "torch cannot use CUDA" in h["fallback"] for h in hosts)
        warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: host")]
        # one warning, naming every host it applies to, rather than ten copies of it
        assert len(warnings) == 1 and warnings[0].startswith(f"warning: hosts {', '.join(map(str, range(10)))}: "), warnings
        assert "torch cannot use CUDA" in warnings[0]
    assert accuracies(out)[0] > 0.5
