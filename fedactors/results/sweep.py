"""Planning a grid of runs over E, B, C and partition: which cells, where each writes, which are done.

Pure: no Ray here. Whoever runs the sweep runs each cell's RunConfig into `root / cell.name`
and skips the cells `cell_is_complete` says are finished, so an interrupted sweep continues.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

from fedactors.config import PARTITIONS, RunConfig, is_positive_int, natural_clients, parse_batch_size, read_toml, stored_experiment
from fedactors.errors import ConfigError
from fedactors.results.report import PAPER_TABLE2_FRAC, paper_table2_grid

GRID_KEYS = ("epochs", "batch_sizes", "fracs", "partitions")
# RunConfig fields each cell sets; a [run] table may not set them too.
CELL_FIELDS = ("epochs", "batch_size", "frac", "partition")


@dataclass(frozen=True)
class SweepCell:
    """One point of the grid. `batch_size=None` means B = inf (full batch). `settings`: the values of the other
    grid axes (--grid KEY=V1,V2: any run setting, e.g. lr or server_lr), in the order the axes were given."""

    epochs: int
    batch_size: int | None
    frac: float
    partition: str
    settings: tuple[tuple[str, object], ...] = ()

    @property
    def name(self) -> str:
        """The cell's run-directory name, e.g. "noniid-E5-B10-C0.1" or "noniid-E1-B10-C0.1-lr0.05-fedadam" (a number
        after its setting's name, a text alone)."""
        batch = "inf" if self.batch_size is None else self.batch_size
        extra = "".join(f"-{key}{value:g}".replace("+", "") if isinstance(value, float) else
                        f"-{re.sub(r'[^A-Za-z0-9._-]', '_', value)}" if isinstance(value, str) else f"-{key}{value}"
                        for key, value in self.settings)
        return f"{self.partition}-E{self.epochs}-B{batch}-C{self.frac:g}{extra}"

    def run_config(self, run: dict | None = None) -> RunConfig:
        """The cell's RunConfig: `run` (RunConfig keys, as in a sweep file's [run] table) plus the cell."""
        both = sorted(set(run or {}) & {key for key, _ in self.settings})
        if both:
            raise ConfigError(f"{both[0]} is a grid axis and a run setting too; give it once")
        settings = {**(run or {}), **dict(self.settings), "epochs": self.epochs, "batch_size": self.batch_size,
                    "frac": self.frac, "partition": self.partition}
        if self.partition == "natural" and "clients" in (run or {}):
            raise ConfigError("run.clients does not go with the natural partition: every owner in the data is one client")
        return RunConfig.from_dict(natural_clients(settings))


def plan_sweep(epochs: list, batch_sizes: list, fracs: list, partitions: list,
               grid: dict[str, list] | None = None) -> list[SweepCell]:
    """Every combination, partition-major then C, B, E, then the `grid` axes (each in the order given).

    B may be a positive int, None, "inf" or float("inf") (all of the last three mean full batch).
    ConfigError for an empty list, a value of the wrong type or range, or two cells that would
    share a run directory.
    """
    epochs = [_positive_int("epochs", e) for e in _nonempty("epochs", epochs)]
    batch_sizes = [parse_batch_size(b, "batch_sizes") for b in _nonempty("batch_sizes", batch_sizes)]
    fracs = [_frac(c) for c in _nonempty("fracs", fracs)]
    partitions = [_partition(p) for p in _nonempty("partitions", partitions)]
    axes = [[(key, value) for value in _nonempty(f"--grid {key}", values)] for key, values in (grid or {}).items()]
    bad = sorted(set(grid or {}) & {*CELL_FIELDS, "rounds"})
    if bad:
        raise ConfigError(f"--grid {bad[0]}: {'use --epochs, --batch-sizes, --fracs, --partitions for the cell axes' if bad[0] != 'rounds' else 'every cell runs --rounds'}")
    cells = [SweepCell(e, b, c, p, tuple(extra))
             for p, c, b, e, *extra in itertools.product(partitions, fracs, batch_sizes, epochs, *axes)]
    seen: set[str] = set()
    for cell in cells:
        if cell.name in seen:
            raise ConfigError(f"sweep lists cell {cell.name} twice (a repeated value in the grid)")
        seen.add(cell.name)
    return cells


def paper_table2_cells() -> list[SweepCell]:
    """The 18 cells of McMahan et al. 2017's Table 2 (CNN): C = 0.1, IID and non-IID."""
    return [SweepCell(e, b, PAPER_TABLE2_FRAC, p) for e, b, p in paper_table2_grid()]


def parse_grid(items: list[str] | tuple[str, ...]) -> dict[str, list]:
    """--grid KEY=V1,V2,... (repeatable) as {key: [values]}, each value of the RunConfig field's type."""
    types = {f.name: str(f.type) for f in fields(RunConfig)}
    grid: dict[str, list] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not text.strip():
            raise ConfigError(f"--grid {item}: expected KEY=V1,V2,... (e.g. lr=0.02,0.05,0.1)")
        if key not in types:
            raise ConfigError(f"--grid {item}: {key} is not a run setting (see fedactors run --help)")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice")
        grid[key] = [_typed(key, types[key], value.strip()) for value in text.split(",")]
    return grid


def _typed(key: str, annotation: str, text: str) -> object:
    """A --grid value as the field's type: int, float, bool or str (the first that its annotation allows)."""
    for name, convert in (("int", int), ("float", float)):
        if name in annotation:
            try:
                return convert(text)
            except ValueError:
                if "str" not in annotation and not (name == "int" and "float" in annotation):
                    raise ConfigError(f"--grid {key}: {text!r} is not a number") from None
    if "bool" in annotation:
        if text.lower() not in ("true", "false"):
            raise ConfigError(f"--grid {key}: {text!r} is not true or false")
        return text.lower() == "true"
    return text


def load_sweep_toml(path: str | Path) -> dict:
    """Read and validate a sweep file; returns {"epochs", "batch_sizes", "fracs", "partitions", "run"}.

    The file holds the four grid lists and an optional [run] table of RunConfig keys shared by all
    cells (clients, rounds, lr, seed, target, ...), e.g.

        epochs = [1, 5, 20]
        batch_sizes = [10, 50, "inf"]
        fracs = [0.1]
        partitions = ["iid", "noniid"]
        [run]
        rounds = 500
        lr = 0.1

    In the result B = inf is None. ConfigError naming the file and the bad key; every cell's
    RunConfig is built once, so a value RunConfig refuses is reported here, before any run starts.
    """
    path = Path(path)
    doc = read_toml(path, f"sweep file {path}")
    unknown = sorted(set(doc) - {*GRID_KEYS, "run", "grid"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (expected {', '.join(GRID_KEYS)}, a [run] table and "
                          "a [grid] table)")
    grid = doc.get("grid", {})
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise ConfigError(f"{path}: 'grid' must be a table of lists ([grid] lr = [0.05, 0.1])")
    missing = [k for k in GRID_KEYS if k not in doc]
    if missing:
        raise ConfigError(f"{path}: missing key {missing[0]!r} (a list)")
    run = doc.get("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: 'run' must be a table ([run]), got {type(run).__name__}")
    _check_run_table(path, run)
    try:
        cells = plan_sweep(doc["epochs"], doc["batch_sizes"], doc["fracs"], doc["partitions"], grid)
        for cell in cells:
            cell.run_config(run)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return {
        "epochs": list(dict.fromkeys(c.epochs for c in cells)),
        "batch_sizes": list(dict.fromkeys(c.batch_size for c in cells)),
        "fracs": list(dict.fromkeys(c.frac for c in cells)),
        "partitions": list(dict.fromkeys(c.partition for c in cells)),
        "grid": dict(grid),
        "run": dict(run),
    }


def cell_is_complete(run_dir: str | Path, expected: RunConfig | None = None) -> bool:
    """True if `run_dir` holds a finished run: run.json with status "finished", and weights.npy.

    With `expected`, a finished run of another experiment or round count there is a ConfigError
    (skipping it would report the wrong run under this cell's name).
    """
    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(info, dict) or info.get("status") != "finished" or not (run_dir / "weights.npy").is_file():
        return False
    if expected is not None:
        config = info.get("config") if isinstance(info.get("config"), dict) else {}
        stored = stored_experiment(config)
        if expected.clients is None:  # natural: the data counted the clients, and the run recorded how many
            stored["clients"] = None
        if stored != expected.experiment() or config.get("rounds") != expected.rounds:
            raise ConfigError(
                f"{run_dir} holds a finished run of another configuration; move it away or choose another sweep directory"
            )
    return True


def _check_run_table(path: Path, run: dict) -> None:
    """Keys must be RunConfig fields not set per cell; values of the field's type."""
    types = {f.name: f.type for f in fields(RunConfig)}
    for key, value in run.items():
        if key in CELL_FIELDS:
            raise ConfigError(f"{path}: run.{key} is set by each cell; use the grid list {_grid_key(key)!r} instead")
        if key not in types:
            raise ConfigError(f"{path}: unknown key run.{key!r}")
        accepted = _accepted_types(str(types[key]))
        if accepted and (isinstance(value, bool) != (bool in accepted) or not isinstance(value, accepted)):
            names = " or ".join(t.__name__ for t in accepted if t is not int or float not in accepted)
            raise ConfigError(f"{path}: run.{key} must be {names}, got {value!r}")


def _accepted_types(annotation: str) -> tuple[type, ...]:
    """Python types a TOML value may have for a RunConfig annotation like "int | None"; () = unchecked."""
    by_name = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
    accepted: tuple[type, ...] = ()
    for part in annotation.split("|"):
        part = part.strip()
        if part == "None":
            continue  # TOML has no null; leaving the key out gives RunConfig's default
        if part not in by_name:
            return ()
        accepted += by_name[part]
    return accepted


def _grid_key(field: str) -> str:
    return dict(zip(CELL_FIELDS, ("epochs", "batch_sizes", "fracs", "partitions")))[field]


def _nonempty(key: str, values: object) -> list:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{key} must be a non-empty list, got {values!r}")
    return values


def _positive_int(key: str, value: object) -> int:
    if not is_positive_int(value):
        raise ConfigError(f"{key} must hold positive integers, got {value!r}")
    return value


def _frac(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < value <= 1.0):
        raise ConfigError(f"fracs must hold numbers in (0, 1], got {value!r}")
    return float(value)


def _partition(value: object) -> str:
    if value not in PARTITIONS:
        raise ConfigError(f"partitions must hold {', '.join(PARTITIONS[:-1])} or {PARTITIONS[-1]}, got {value!r}")
    return value
