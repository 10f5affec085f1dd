"""Kill a run at any moment, resume it, get the same bytes: proved with SIGKILL of the whole tree.

Each run here is real: MNIST, a local Ray cluster, Redis (embedded or a server of the test's).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

from conftest import ARGS, EXE, ROUNDS, accuracies, assert_same_as_reference, fedactors, rounds_done


def start_and_kill_mid_round(out, *extra, after_rounds=2, args=ARGS, rounds=ROUNDS, meanwhile=None):
    """Start a run, wait until `after_rounds` rounds are done, SIGKILL every process of its tree mid-round.

    `meanwhile(proc)`, if given, is called once the run has started, before the wait: another fault to survive
    first (tests/test_strategy.py kills a client host with it)."""
    log = open(out.parent / f"{out.name}.log", "w")
    proc = subprocess.Popen([EXE, "run", *args, "--rounds", str(rounds), "--out", str(out), *extra],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if meanwhile is not None:
        meanwhile(proc)
    deadline = time.monotonic() + 300
    first = None  # when the first round was done: the rounds after it give the time a round takes
    while (done := rounds_done(out)) < after_rounds:
        assert proc.poll() is None, (out.parent / f"{out.name}.log").read_text()
        assert time.monotonic() < deadline, "the run did not get going"
        if done >= 1 and first is None:
            first = (time.monotonic(), done)
        time.sleep(0.02)
    # Into the next round, its clients training now: half a round, at most a second (small tasks run many
    # rounds a second, and a fixed pause let one finish before it was killed).
    per_round = (time.monotonic() - first[0]) / max(1, done - first[1]) if first else 1.0
    time.sleep(min(1.0, per_round / 2))
    killed = kill_tree(proc)
    log.close()
    assert rounds_done(out) < rounds, "the run finished before it was killed; the test proves nothing"
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not (out / "weights.npy").exists()
    return killed


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL `proc` and every process below it at once (a power cut, an OOM kill of the group), wait until none is
    left (failing if one survives); returns how many there were."""
    tree = [proc, *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    _, alive = psutil.wait_procs([p for p in tree[1:] if isinstance(p, psutil.Process)], timeout=10)
    assert not alive, f"processes survived SIGKILL: {alive}"
    return len(tree)


def stop_with_signal(out, signum, run_id):
    """Start a run of ARGS, send it `signum` after round 2: it stops cleanly and says how to resume (status
    interrupted, the resume command printed, exit 128 + the signal, no traceback)."""
    proc = subprocess.Popen([EXE, "run", *ARGS, "--rounds", str(ROUNDS), "--out", str(out), "--run-id", run_id],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while rounds_done(out) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    finished_before = proc.poll()
    signalled_at = rounds_done(out)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (
        f"exit {proc.returncode} (already exited before the signal: {finished_before}; signalled after round "
        f"{signalled_at}, {rounds_done(out)} at the end)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    )
    assert f"continue with: fedactors run --resume {run_id} --out {out}" in stdout
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    stop_with_signal(tmp_path / "run", signal.SIGINT, "c")


def test_sigterm_then_sigkill_mid_round_then_resume_is_bit_exact_embedded_store(reference, tmp_path):
    """Stopped by SIGTERM (as kill, Slurm, Kubernetes, systemd and timeout send it), resumed with the command it
    printed, that run SIGKILLed mid-round with its whole tree (Ray, its workers, the embedded redis-server), resumed
    again: the reference's bytes. One run through both (each Ray start-up costs seconds; each was a test's own)."""
    out = tmp_path / "run"
    stop_with_signal(out, signal.SIGTERM, "victim")
    killed = start_and_kill_mid_round(out, args=["--resume", "victim"], after_rounds=3)
    assert killed > 5  # the CLI, Ray's processes, its workers and the embedded redis-server
    result = fedactors("run", "--resume", "victim", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "resuming run victim after round" in result.stdout
    assert_same_as_reference(out, reference)
    run = json.loads((out / "run.json").read_text())
    assert run["total_wall_seconds"] > run["wall_seconds"] + 5  # the stopped and killed parts' rounds count too


def test_a_host_killed_then_everything_sigkilled_resumes_from_redis_alone_bit_exact(reference, tmp_path,
                                                                                    make_redis_server):
    """Two faults in one run (each Ray start-up costs seconds). Client host 0 is SIGKILLed mid-round 2: its clients
    are retried, Ray restarts it, the weights do not change (this was tests/test_cluster.py's own run). Then mid-round
    4 the whole tree is SIGKILLed and the output directory lost: with --redis the store has everything, and the
    resumed run ends on the reference's bytes, so rounds 2 and 3 after the host's death were the undisturbed ones."""
    from test_cluster import _kill_host_after_rounds

    server = make_redis_server()
    out = tmp_path / "run"
    start_and_kill_mid_round(out, "--run-id", "victim", "--redis", server.url, after_rounds=3,
                             meanwhile=lambda proc: _kill_host_after_rounds(proc, out, 1, log=tmp_path / "run.log"))
    killed = json.loads((out / "run.json").read_text())
    assert killed["failures"] >= 1 and killed["retried"] >= 1 and killed.get("dropped", 0) == 0, killed
    text = (tmp_path / "run.log").read_text()
    assert "failed: client" in text and "died" in text and "retried" in text
    # The output directory can even be lost: with --redis the store has everything.
    for f in out.iterdir():
        f.unlink()
    result = fedactors("run", "--resume", "victim", "--redis", server.url, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert_same_as_reference(out, reference)


def test_resume_of_a_finished_run_does_no_work(reference):
    before = (reference / "weights.npy").read_bytes()
    info = json.loads((reference / "run.json").read_text())
    result = fedactors("run", "--resume", "ref", "--out", str(reference))
    assert result.returncode == 0
    assert "already finished: 5 of 5 rounds are done" in result.stdout
    assert "client hosts" not in result.stdout  # no Ray, no training
    assert (reference / "weights.npy").read_bytes() == before
    # run.json still says all it said of the run (identity, partition, hosts); only this call's wall time is new.
    after = json.loads((reference / "run.json").read_text())
    assert {"identity", "partition", "host_info"} <= info.keys()
    assert {k: v for k, v in after.items() if k != "wall_seconds"} == {k: v for k, v in info.items() if k != "wall_seconds"}
    assert after["wall_seconds"] == 0.0


@pytest.mark.parametrize(("flag", "value"), [("--lr", "0.2"), ("--seed", "3"), ("--batch-size", "inf"), ("--partition", "noniid")])
def test_resume_refuses_flags_that_change_the_experiment(reference, flag, value):
    result = fedactors("run", "--resume", "ref", "--out", str(reference), flag, value)
    assert result.returncode == 2
    assert f"{flag} {value} differs from run ref's" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_redis_down_mid_run_stops_with_exit_3_and_the_safe_round_intact(reference, tmp_path, make_redis_server):
    server = make_redis_server()
    out = tmp_path / "run"
    proc = subprocess.Popen([EXE, "run", *ARGS, "--rounds", str(ROUNDS), "--out", str(out), "--run-id", "r",
                             "--redis", server.url, "--store-retry-seconds", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while rounds_done(out) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3, stderr
    lines = stderr.strip().splitlines()
    assert "unreachable" in lines[-1] and "is the last checkpoint safely stored" in lines[-1], stderr
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    # Back up: the last good checkpoint is there, and the run finishes exactly as if nothing happened.
    server.start()
    result = fedactors("run", "--resume", "r", "--redis", server.url, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert_same_as_reference(out, reference)


def test_wrong_password_and_unreachable_store_fail_at_start(tmp_path, make_redis_server):
    server = make_redis_server("--requirepass", "s3cret")
    url = f"redis://:wrong@127.0.0.1:{server.port}/0"
    result = fedactors("run", *ARGS, "--rounds", "1", "--redis", url, "--out", str(tmp_path / "a"), timeout=60)
    assert result.returncode == 2
    assert "refused the password" in result.stderr and "wrong" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    server.kill()
    result = fedactors("run", *ARGS, "--rounds", "1", "--redis", server.url, "--out", str(tmp_path / "b"), timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_runs_list_show_rm(reference, tmp_path):
    runs_dir = str(reference.parent)
    listed = fedactors("runs", "list", "--runs-dir", runs_dir)
    assert listed.returncode == 0 and "ref" in listed.stdout and "finished" in listed.stdout
    shown = fedactors("runs", "show", "ref", "--runs-dir", runs_dir)
    info = json.loads(shown.stdout)
    assert info["latest_round"] == ROUNDS and info["rounds_kept"] == [ROUNDS - 1, ROUNDS]  # --keep 2
    assert info["best_accuracy"] == max(accuracies(reference))
    refused = subprocess.run([EXE, "runs", "rm", "ref", "--runs-dir", runs_dir], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    missing = fedactors("runs", "show", "nope", "--runs-dir", runs_dir)
    assert missing.returncode == 2 and "no run nope" in missing.stderr


def test_a_redis_without_persistence_that_restarts_mid_run_is_noticed_and_the_run_stays_whole(
        reference, tmp_path, make_redis_server):
    server = make_redis_server("--appendonly", "no", "--save", "")
    out = tmp_path / "run"
    proc = subprocess.Popen([EXE, "run", *ARGS, "--rounds", str(ROUNDS), "--out", str(out), "--run-id", "f",
                             "--redis", server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while rounds_done(out) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    server.stop()  # comes back empty: nothing was on disk
    server.start()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "warning: Redis at redis://127.0.0.1" in stdout and "keeps nothing on disk" in stdout  # said at the start
    lost = [line for line in stdout.splitlines() if "lost every checkpoint of run f" in line]
    assert len(lost) == 1 and "is stored again" in lost[0], stdout
    assert_same_as_reference(out, reference)
    # The store is whole again: the finished run is there to be resumed (which does nothing).
    again = fedactors("run", "--resume", "f", "--redis", server.url, "--out", str(out))
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr


def test_a_redis_password_from_the_environment_stays_out_of_command_lines_logs_and_outputs(tmp_path, make_redis_server):
    password = "pw-7f3a9c0e5d"
    server = make_redis_server("--requirepass", password)
    out = tmp_path / "run"
    env = {**os.environ, "FEDACTORS_REDIS_URL": f"redis://:{password}@127.0.0.1:{server.port}/0"}
    started = time.time()
    proc = subprocess.Popen([EXE, "run", *ARGS, "--rounds", "2", "--eval-every", "2", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    seen = set()
    while proc.poll() is None and time.monotonic() < deadline:
        for p in psutil.process_iter():
            try:
                seen.add(p.pid)
                assert password not in " ".join(p.cmdline()), p.cmdline()
                if p.pid != proc.pid:  # the CLI read it from its environment; nothing it starts inherits it
                    assert password not in "".join(p.environ().values()), p.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert len(seen) > 5  # the tree was looked at while it ran
    assert password not in stdout + stderr
    assert all(password not in f.read_text(errors="replace") for f in out.rglob("*.json*"))
    # Ray's logs of every session since the run began (another test's run may be "session_latest").
    sessions = [d for d in Path("/tmp/ray").glob("session_2*") if d.stat().st_mtime >= started - 1]
    assert sessions
    assert all(password.encode() not in f.read_bytes() for d in sessions for f in d.rglob("*") if f.is_file())


def test_a_resume_refused_before_it_runs_leaves_the_directory_as_it_was(reference):
    before = {name: (reference / name).read_bytes() for name in ("run.json", "metrics.jsonl", "weights.npy")}
    result = fedactors("run", "--resume", "ref", "--out", str(reference), "--rounds", "8", "--address", "127.0.0.1:1")
    assert result.returncode == 2 and "could not start or reach the Ray cluster at 127.0.0.1:1" in result.stderr
    assert {name: (reference / name).read_bytes() for name in before} == before  # not "failed", not 8 rounds


def test_a_resume_into_another_runs_directory_is_refused(reference, tmp_path, make_redis_server):
    """With a shared store, --resume A --out B would have rewritten B's results with A's."""
    import torch

    from fedactors.store.checkpoint import RedisStore
    from test_strategy import in_process_run

    server = make_redis_server()
    b = tmp_path / "b"
    tiny = ["--task", "digits-mlp", "--clients", "10", "--frac", "0.2", "--epochs", "1", "--hosts", "1"]
    assert fedactors("run", *tiny, "--rounds", "1", "--redis", server.url, "--run-id", "run-b",
                     "--out", str(b)).returncode == 0
    # Run A in the same store, checkpointed by a coordinator in this process (a second Ray start-up adds nothing).
    threads = torch.get_num_threads()
    try:
        with RedisStore(server.url, retry_seconds=5) as store:
            list(in_process_run(tiny, 1, store=store, run_id="run-a")[1].run())
            assert store.latest("run-a")[0].round == 1
    finally:
        torch.set_num_threads(threads)  # the hosts set this process's
    before = {f.name: f.read_bytes() for f in b.iterdir() if f.is_file()}
    result = fedactors("run", "--resume", "run-a", "--out", str(b), "--rounds", "2", "--redis", server.url)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"fedactors: error: --out {b} holds run run-b, not run-a: resume a run into its "
                                     "own directory (or a new one)")
    assert {f.name: f.read_bytes() for f in b.iterdir() if f.is_file()} == before
