"""A run's directory: metrics.jsonl (one object per evaluated round), run.json, weights.npy.

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
from fedactors.messages import METRIC_KEYS


class RunDirectory:
    """Owns one run's output directory; refuses to write over another run's results."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metrics_path = path / "metrics.jsonl"
        self.run_path = path / "run.json"
        self.weights_path = path / "weights.npy"

    def check_fresh(self) -> None:
        """An existing run in the directory is an error: it is never overwritten."""
        if any(p.exists() for p in (self.metrics_path, self.run_path, self.weights_path)):
            raise ConfigError(f"--out {self.path} already holds a run; choose another directory, or --resume it")

    def create(self) -> None:
        """Make the directory for a new run (after check_fresh)."""
        self.check_fresh()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.metrics_path.touch()
        except OSError as exc:
            raise ConfigError(f"--out {self.path} cannot be written: {exc.strerror}") from None

    def reopen(self, history: list[dict]) -> None:
        """For a resumed run: metrics.jsonl becomes exactly the checkpoint's history."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {self.path} cannot be written: {exc.strerror}") from None
        rows = ({k: row[k] for k in METRIC_KEYS if k in row} for row in history)
        _atomic_write_text(self.metrics_path, "".join(json.dumps(row) + "\n" for row in rows))

    def append_metrics(self, event: dict) -> None:
        """Append one evaluated round (the keys of METRIC_KEYS present in `event`)."""
        line = json.dumps({k: event[k] for k in METRIC_KEYS if k in event})
        with self.metrics_path.open("a") as f:
            f.write(line + "\n")
            f.flush()

    def write_run(self, config: RunConfig, summary: dict) -> None:
        _atomic_write_text(
            self.run_path,
            json.dumps({"config": config.to_dict(), "fingerprint": config.fingerprint(), **summary}, indent=2) + "\n",
        )

    def write_weights(self, weights: np.ndarray) -> None:
        tmp = self.weights_path.with_name(".weights.npy.tmp")
        with tmp.open("wb") as f:
            np.save(f, np.ascontiguousarray(weights, dtype=np.float32))
        os.replace(tmp, self.weights_path)


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    with (path / "metrics.jsonl").open() as f:
        return [json.loads(line) for line in f if line.strip()]


def summarise(history: list[dict], target: float) -> dict:
    """Best accuracy and the first round reaching `target` (None if never)."""
    evaluated = [row for row in history if row.get("accuracy") is not None]
    if not evaluated:
        return {"best_accuracy": None, "best_round": None, "rounds_to_target": None}
    best = max(evaluated, key=lambda row: (row["accuracy"], -row["round"]))
    reached = next((row["round"] for row in evaluated if row["accuracy"] >= target), None)
    return {
        "best_accuracy": best["accuracy"],
        "best_round": best["round"],
        "final_accuracy": evaluated[-1]["accuracy"],
        "rounds_to_target": reached,
    }


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
