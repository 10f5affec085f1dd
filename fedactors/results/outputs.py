"""A run's directory: metrics.jsonl (one object per evaluated round), run.json, weights.npy, error.log.

Written by `fedactors run`, read by whatever reports on runs. Every file is replaced
atomically (write to a temporary name, then rename), so a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
from pathlib import Path

import numpy as np

from fedactors.config import RunConfig
from fedactors.errors import ConfigError
from fedactors.messages import metrics_fields


def _round_of(line: str) -> int | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row.get("round") if isinstance(row, dict) else None


class RunDirectory:
    """Owns one run's output directory; refuses to write over another run's results."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metrics_path = path / "metrics.jsonl"
        self.run_path = path / "run.json"
        self.weights_path = path / "weights.npy"
        self.error_path = path / "error.log"
        self.clients_path = path / "clients.jsonl"  # each evaluated client's accuracy, by evaluated round
        self._lock_fd: int | None = None  # the directory, held (flock) while this process writes the run

    def check_fresh(self) -> None:
        """A run with results in the directory is an error: it is never overwritten.

        A directory left by a run of ours that stopped before its first round (missing data, a
        refused cluster, a killed process) holds no result and may be used again, unless that run
        is still going: a live run holds the directory (`lock`). `check_no_checkpoints` covers the
        rounds only the store knows of.
        """
        if not (self.weights_path.exists() or self.has_rows() or self.run_path.exists()):
            return
        status = self.info().get("status")
        alive = self.in_use() if self._lock_fd is None else False
        if alive:
            raise ConfigError(f"--out {self.path} is in use: a run is being written there right now")
        if status == "running" and alive is None:  # the file system cannot say whether that run is alive
            raise ConfigError(f"--out {self.path} already holds a run (status running: if it is not running any more, "
                              "remove the directory); choose another directory")
        if self.weights_path.exists() or self.has_rows() or status not in ("failed", "interrupted", "running"):
            run_id = self.run_id()
            resume = f", or resume it: {resume_command(run_id, self.path)}" if run_id else ""
            raise ConfigError(f"--out {self.path} already holds a run; choose another directory{resume}")

    def has_rows(self) -> bool:
        """Whether metrics.jsonl holds an evaluated round (a result, never overwritten)."""
        return self.metrics_path.exists() and self.metrics_path.stat().st_size > 0

    def lock(self) -> None:
        """Hold the directory (made if need be) for this process until `release`: ConfigError if a live run holds it.

        An flock on the directory itself, not on a file in it: the kernel lets it go when the process ends,
        however it ends (SIGKILL, out of memory), so a run.json left `running` by a dead run is told from a
        live one (`in_use`). A file system without flock (some network ones) holds nothing; the run goes on."""
        if self._lock_fd is not None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise ConfigError(f"--out {self.path} cannot be written: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"--out {self.path} is in use: a run is being written there right now") from None
        except OSError:
            os.close(fd)
            return
        self._lock_fd = fd

    def release(self) -> None:
        """Let the directory go (after `lock`): another run may use or resume it."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def in_use(self) -> bool | None:
        """Whether another live process holds the directory (`lock`); None when the file system cannot say."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False if not self.path.exists() else None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        finally:
            os.close(fd)  # closing lets go of the probe's own shared lock
        return False

    def check_no_checkpoints(self, store, *, embedded: bool) -> None:
        """Refuse a directory whose run (or, for its embedded store, any run) has checkpoints in `store`."""
        previous = self.run_id()
        holding = [previous] if previous and store.info(previous) is not None else []
        if embedded:
            holding += [info.run_id for info in store.runs() if info.run_id not in holding]
        if holding:
            raise ConfigError(f"--out {self.path} already holds run {holding[0]}, checkpointed in {store.url}; "
                              f"choose another directory, or resume it: {resume_command(holding[0], self.path)}")

    def run_id(self) -> str | None:
        """The run id its run.json names, if it has a readable one."""
        run_id = self.info().get("run_id")
        return run_id if isinstance(run_id, str) else None

    def info(self) -> dict:
        """run.json as a dict ({} if absent or not ours)."""
        try:
            info = json.loads(self.run_path.read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def create(self) -> None:
        """Make the directory for a new run and hold it (`lock`; the caller `release`s it); metrics.jsonl starts
        empty. check_fresh under the lock: a run that started in it since the caller's own check is not overwritten."""
        self.lock()
        try:
            self.check_fresh()
            _atomic_write_text(self.metrics_path, "")
            self.clear_error()
        except OSError as exc:
            self.release()
            raise ConfigError(f"--out {self.path} cannot be written: {exc.strerror}") from None
        except ConfigError:
            self.release()
            raise

    def rounds_completed(self) -> int | None:
        """run.json's rounds_completed, if it has one."""
        done = self.info().get("rounds_completed")
        return done if isinstance(done, int) else None

    def snapshot(self) -> dict[Path, str]:
        """run.json's, metrics.jsonl's and error.log's text as they are (those that exist), for restore."""
        return {p: p.read_text() for p in (self.run_path, self.metrics_path, self.error_path, self.clients_path)
                if p.is_file()}

    def restore(self, snapshot: dict[Path, str]) -> None:
        """Put back what snapshot() saw: a resume that never got to run leaves the directory as it found it,
        but for an error.log written since (the newer failure's traceback, which its message points to)."""
        for path, text in snapshot.items():
            if path == self.error_path and path.exists():
                continue
            _atomic_write_text(path, text)

    def reopen(self, history: list[dict]) -> None:
        """For a resumed run: metrics.jsonl becomes exactly the checkpoint's history, and an earlier failure's
        error.log goes (the run is past it; a new failure writes its own)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {self.path} cannot be written: {exc.strerror}") from None
        rows = (metrics_fields(row) for row in history)
        _atomic_write_text(self.metrics_path, "".join(json.dumps(row) + "\n" for row in rows))
        if self.clients_path.is_file():  # the rounds the checkpoint evaluated, not those run after it
            kept = {row.get("round") for row in history}
            lines = [line for line in self.clients_path.read_text().splitlines(keepends=True)
                     if _round_of(line) in kept]
            _atomic_write_text(self.clients_path, "".join(lines))
        self.clear_error()

    def append_clients(self, table: dict, owners: list | None = None) -> None:
        """One evaluated round's per-client accuracies as a line of clients.jsonl: {"round", "clients": {owner:
        {"examples", "global"[, "personal"]}}}, keyed by the owner's id (client numbers without owners)."""
        names = [str(owners[c]) if owners is not None else str(c) for c in table["clients"]]
        unseen = set(table.get("unseen", ()))
        clients = {}
        for i, name in enumerate(names):
            row = {"examples": table["examples"][i], "global": table["global"][i]}
            if "personal" in table:
                row["personal"] = table["personal"][i]
            if table["clients"][i] in unseen:
                row["unseen"] = True  # --holdout-clients: it never trained
            clients[name] = row
        with self.clients_path.open("a") as f:
            f.write(json.dumps({"round": table["round"], "clients": clients}) + "\n")
            f.flush()

    def append_metrics(self, event: dict) -> None:
        """Append one evaluated round (messages.metrics_fields of `event`)."""
        line = json.dumps(metrics_fields(event))
        with self.metrics_path.open("a") as f:
            f.write(line + "\n")
            f.flush()

    def write_run(self, config: RunConfig, info: dict) -> None:
        """run.json: the configuration, then `info` (its fingerprint once the run knows it: experiment.run)."""
        _atomic_write_text(self.run_path, json.dumps({"config": config.to_dict(), **info}, indent=2) + "\n")

    def clear_error(self) -> None:
        """Remove error.log: it belongs to a run that failed, and this one goes on (or starts again)."""
        self.error_path.unlink(missing_ok=True)

    def write_error(self, text: str) -> Path:
        """Keep an unexpected error's traceback (error.log) for the report; returns its path."""
        _atomic_write_text(self.error_path, text)
        return self.error_path

    def write_weights(self, weights: np.ndarray) -> None:
        tmp = self.weights_path.with_name(".weights.npy.tmp")
        with tmp.open("wb") as f:
            np.save(f, np.ascontiguousarray(weights, dtype=np.float32))
        os.replace(tmp, self.weights_path)


def resume_command(run_id: str, out: Path) -> str:
    """The command that resumes `run_id` into `out`, quoted for a POSIX shell so that it can be pasted whole."""
    return shlex.join(["fedactors", "run", "--resume", run_id, "--out", str(out)])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
