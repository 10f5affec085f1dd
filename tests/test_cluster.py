"""Clusters and faults: a real two-node Ray cluster on loopback, logical GPUs, hosts killed mid-round."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import ARGS, EXE, ROUNDS, accuracies, assert_same_as_reference, fedactors, rounds_done

pytestmark = pytest.mark.slow


def without_hosts(args):
    i = args.index("--hosts")
    return args[:i] + args[i + 2 :]


def in_private_network(script: str, tmp_path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a bash script in network and process namespaces of its own; its only network interface is loopback.

    Ray started there by `ray start` binds where a user's would (its node address), and that
    can only be 127.0.0.1: nothing the test starts is reachable from the network. HOME is a
    fresh directory, so the cluster's token is the test's own.
    """
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "PATH": f"{os.path.dirname(EXE)}:{os.environ['PATH']}"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # as a user's shell has it
    # --pid (with its own /proc): `ray stop` sees, and ends, this namespace's Ray alone, and whatever is
    # left when the script ends dies with it; --net: its only interface is loopback.
    return subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c",
                           "set -u; ip link set lo up; " + script],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_a_cluster_started_with_ray_start_as_the_readme_says_trains_on_both_nodes_with_the_single_node_weights(
        reference, tmp_path):
    """ray start --head, ray start --address on a second node, then fedactors run/sweep --address (or RAY_ADDRESS):
    with the token Ray writes (~/.ray/auth_token), without one, and with a wrong one; and a run without an address
    beside the cluster starts a Ray of its own."""
    out, empty = tmp_path / "run", tmp_path / "empty-home"
    empty.mkdir()
    args = " ".join(without_hosts(ARGS))
    script = f"""
        ray get-auth-token --generate > /dev/null
        ray start --head --port=6379 --num-cpus=1 --include-dashboard=false > {tmp_path}/head.log 2>&1
        RAY_AUTH_MODE=token ray start --address=127.0.0.1:6379 --num-cpus=1 > {tmp_path}/worker.log 2>&1
        trap 'ray stop --force > /dev/null 2>&1' EXIT
        fedactors run {args} --rounds {ROUNDS} --address 127.0.0.1:6379 --out {out} > {tmp_path}/run.log 2>&1
        echo "run: $?"
        fedactors run --task digits-mlp --clients 10 --frac 0.2 --hosts 1 --rounds 1 \
            --out {tmp_path}/local > {tmp_path}/local.log 2>&1
        echo "local: $?"
        HOME={empty} fedactors run --address 127.0.0.1:6379 --rounds 1 --out {tmp_path}/a > /dev/null \
            2> {tmp_path}/no-token.err
        echo "no token: $?"
        RAY_AUTH_TOKEN=0123456789abcdef0123456789abcdef fedactors run --address 127.0.0.1:6379 --rounds 1 \
            --out {tmp_path}/b > /dev/null 2> {tmp_path}/wrong-token.err
        echo "wrong token: $?"
        HOME={empty} RAY_ADDRESS=127.0.0.1:6379 fedactors sweep --epochs 1 --batch-sizes 50 --partitions iid \
            --rounds 1 --out {tmp_path}/sweep > /dev/null 2> {tmp_path}/sweep.err
        echo "sweep: $?"
    """
    result = in_private_network(script, tmp_path)
    assert result.stdout.split("\n")[:5] == ["run: 0", "local: 0", "no token: 2", "wrong token: 2", "sweep: 2"], (
        result.stdout + result.stderr + (tmp_path / "run.log").read_text())
    run = json.loads((out / "run.json").read_text())
    hosts = run["host_info"]
    assert len(hosts) == 2  # one CPU per node, one host per CPU
    assert len({h["node_id"] for h in hosts}) == 2, hosts  # spread: one host on each node
    assert all(h["clients_trained"] > 0 for h in hosts)
    assert "2 client hosts on 2 nodes" in (tmp_path / "run.log").read_text()
    assert_same_as_reference(out, reference)
    # Without --address, a Ray of its own (Ray alone would attach to the cluster it finds running here).
    local = json.loads((tmp_path / "local" / "run.json").read_text())["host_info"]
    assert len(local) == 1 and local[0]["node_id"] not in {h["node_id"] for h in hosts}, (local, hosts)
    token = (tmp_path / "home" / ".ray" / "auth_token").read_text().strip()
    assert token not in (out / "run.json").read_text() and token not in (tmp_path / "run.log").read_text()
    # The refusal is found before anything starts (a GCS probe in a child process). In two full
    # parallel suite runs that probe once missed it (cause not found; never in a run of this test
    # alone); then ray.init's own refusal gives the same line, after a line of Ray's log and the
    # run's directory made with no round in it. Both are held to that: one line of ours, nothing
    # trained, no traceback, no token.
    for name, sent in [("no-token", "refused a connection without one (no RAY_AUTH_TOKEN, no ~/.ray/auth_token)"),
                       ("wrong-token", "refused the token from RAY_AUTH_TOKEN"),
                       ("sweep", "refused a connection without one")]:
        lines = (tmp_path / f"{name}.err").read_text().strip().splitlines()
        assert lines[-1].startswith("fedactors: error: the Ray cluster at 127.0.0.1:6379 requires token authentication "
                                    "and ") and sent in lines[-1], lines
        assert "set RAY_AUTH_TOKEN to the cluster's token" in lines[-1]
        assert all(line.startswith("[20") for line in lines[:-1]), lines  # at most Ray's own log lines before it
        assert token not in "".join(lines)
    for refused in ("a", "b"):
        if (tmp_path / refused).exists():
            assert not json.loads((tmp_path / refused / "run.json").read_text()).get("rounds_completed")


def test_attaching_to_nothing_is_one_clear_line(tmp_path):
    result = fedactors("run", *ARGS, "--rounds", "1", "--address", "127.0.0.1:1", "--out", str(tmp_path / "o"), timeout=180)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("fedactors: error: could not start or reach the Ray cluster at 127.0.0.1:1"), result.stderr


def _start(out, *args):
    log = open(out.parent / "log.txt", "w")
    proc = subprocess.Popen([EXE, "run", *args, "--out", str(out)], stdout=log, stderr=subprocess.STDOUT)
    return proc, log


def _kill_host_after_rounds(proc, out, n_rounds, host=0, delay=0.3, log=None):
    """SIGKILL client host `host` `delay` s after `n_rounds` rounds are done; `log`: the run's output (_start's)."""
    deadline = time.monotonic() + 300
    while rounds_done(out) < n_rounds:
        assert proc.poll() is None and time.monotonic() < deadline, (log or out.parent / "log.txt").read_text()
        time.sleep(0.02)
    time.sleep(delay)  # the next round's clients are training now
    pid = json.loads((out / "run.json").read_text())["host_info"][host]["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


# A host killed mid-round, replaced, the weights unchanged: tests/test_resume.py's
# test_a_host_killed_then_everything_sigkilled_resumes_from_redis_alone_bit_exact, in the run it SIGKILLs after.


def test_min_fit_fraction_accepts_a_round_with_fewer_updates(tmp_path):
    # Five hosts, one client each: a killed host loses exactly its one client, 4 of 5 = 0.8. Killed in round 2,
    # the last and only evaluated round (its row is the one to read; evaluating every round cost seconds each).
    args = ["--clients", "100", "--frac", "0.05", "--partition", "iid", "--epochs", "3", "--batch-size", "50",
            "--hosts", "5", "--cpus-per-host", "0.4", "--min-fit-fraction", "0.8", "--rounds", "2", "--eval-every", "2"]
    out = tmp_path / "run"
    proc, log = _start(out, *args)
    _kill_host_after_rounds(proc, out, 1, host=2)
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
    # The paper's 2NN: where hosts go is the test, not the model (the CNN's round and evaluation took seconds).
    args = ["--task", "mnist-2nn", "--clients", "100", "--frac", "0.1", "--partition", "iid", "--epochs", "1",
            "--batch-size", "10", "--rounds", "1", "--gpus-per-host", "0.1", "--cpus-per-host", "0.1",
            "--address", gpu_cluster.address]
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
