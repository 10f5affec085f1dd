"""A run's directory: metrics.jsonl (one object per evaluated round), run.json, weights.npy, error.log.

Written by `fedactors run`, read by whatever reports on runs. Every file is replaced
atomically (write to a temporary name, then rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fedactors.config import RunConfig
from fedactors.errors import ConfigError
from fedactors.messages import metrics_fields


class RunDirectory:
    """Owns one run's output directory; refuses to write over another run's results."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metrics_path = path / "metrics.jsonl"
        self.run_path = path / "run.json"
        self.weights_path = path / "weights.npy"
        self.error_path = path / "error.log"

    def check_fresh(self) -> None:
        """A run with results in the directory is an error: it is never overwritten.

        Only a directory left by a run of ours that failed or was interrupted before its first
        round (missing data, a refused cluster) may be used again: it holds no result.
        `check_no_checkpoints` covers the rounds only the store knows of.
        """
        has_rows = self.metrics_path.exists() and self.metrics_path.stat().st_size > 0
        if not (self.weights_path.exists() or has_rows or self.run_path.exists()):
            return
        status = self.info().get("status")
        if self.weights_path.exists() or has_rows or status not in ("failed", "interrupted"):
            running = " (status running: if it is not running any more, remove the directory)" if status == "running" else ""
            raise ConfigError(f"--out {self.path} already holds a run{running}; choose another directory, or --resume it")
    def check_no_checkpoints(self, store, *, embedded: bool) -> None:
        """Refuse a directory whose run (or, for its embedded store, any run) has checkpoints in `store`."""
        previous = self.run_id()
        holding = [previous] if previous and store.info(previous) is not None else []
        if embedded:
            holding += [info.run_id for info in store.runs() if info.run_id not in holding]
        if holding:
            raise ConfigError(f"--out {self.path} already holds run {holding[0]}, checkpointed in {store.url}; "
                              f"choose another directory, or --resume {holding[0]}")

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
        """Make the directory for a new run (after check_fresh); metrics.jsonl starts empty."""
        self.check_fresh()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(self.metrics_path, "")
        except OSError as exc:
            raise ConfigError(f"--out {self.path} cannot be written: {exc.strerror}") from None
        self.clear_error()

    def rounds_completed(self) -> int | None:
        """run.json's rounds_completed, if it has one."""
        done = self.info().get("rounds_completed")
        return done if isinstance(done, int) else None

    def snapshot(self) -> dict[Path, str]:
        """run.json's, metrics.jsonl's and error.log's text as they are (those that exist), for restore."""
        return {p: p.read_text() for p in (self.run_path, self.metrics_path, self.error_path) if p.is_file()}

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
        self.clear_error()

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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
