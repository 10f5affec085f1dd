"""A task: the model a federation trains and the data it learns from, behind one small interface.

    Task(name, model, load, prepare=..., loss=None, num_classes=None, description="")

`model` is a factory for any `torch.nn.Module` (it is called in every client host, and once per
run with the run's seed to make the initial weights); `load(data_dir)` returns the raw arrays
(`Arrays`: x_train, y_train, x_test, y_test, integer labels 0..C-1), and `prepare` turns
examples into the model's input once, at load time (float32; nothing is transformed per
sample while training). `loss(logits, labels)` is a batch's mean loss (default: cross-entropy);
the metric is accuracy (the arg-max of the model's output against the label). Everything past
the task sees what it saw before tasks existed: one flat float32 buffer of weights and
read-only arrays in the object store.

A task is named on the command line (`--task`) and in a run's configuration by a spec, which
every process that needs it (the command, each client host) resolves the same way:

    mnist-cnn, mnist-2nn, digits-mlp      built-in (fedactors tasks lists them)
    package.module:attr                   an importable module's attribute
    path/to/file.py:attr                  a file's attribute (the path must exist on every node; the
                                          file may import the modules in its directory)

The attribute is a Task, or a function returning one. `--data npz:PATH` replaces the task's
data by arrays the user has (keys x_train, y_train, x_test, y_test), prepared the same way.

Non-parameter state: float buffers (BatchNorm's running mean and variance) travel with the
weights, after the parameters in the flat buffer, and are averaged like them; BatchNorm's
integer `num_batches_tracked` stays in each host, unused (it only matters for
momentum=None). Any other integer buffer, BatchNorm with momentum=None, or a parameter that
is not float32 is refused with one line: averaging could not be right for them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedactors.errors import ConfigError, DataError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_TASK = "mnist-cnn"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Arrays:
    """A data set as arrays: examples (N, ...) and integer labels (N,), for training and for testing."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def as_float32(x: np.ndarray) -> np.ndarray:
    """The default `prepare`: the examples as float32, unchanged otherwise."""
    return np.ascontiguousarray(x, dtype=np.float32)


@dataclass(frozen=True)
class Task:
    """A model factory and its data; see the module docstring for each field's contract."""

    name: str
    model: Callable[[], nn.Module]
    load: Callable[[Path], Arrays] | None = None
    prepare: Callable[[np.ndarray], np.ndarray] = as_float32
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    num_classes: int | None = None  # None: one more than the largest training label
    description: str = ""
    local: Callable[[Path], bool] | None = None  # whether load(data_dir) reads local files only (no download)
    builtin: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a Task needs a name (a non-empty string), got {self.name!r}")
        if not callable(self.model) or (hasattr(self.model, "parameters") and not isinstance(self.model, type)):
            # a module itself (a class is a factory): each host builds its own
            raise ConfigError(f"task {self.name}: model must be a function returning a torch.nn.Module "
                              "(model=lambda: MyNet(), not model=MyNet())")
        for what in ("load", "prepare", "loss", "local"):
            if getattr(self, what) is not None and not callable(getattr(self, what)):
                raise ConfigError(f"task {self.name}: {what} must be callable, got {type(getattr(self, what)).__name__}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 1):
            raise ConfigError(f"task {self.name}: num_classes must be a positive integer or None, got {self.num_classes!r}")


def builtin_tasks() -> dict[str, Task]:
    """The tasks fedactors ships, by name (imports neither torch nor the data)."""
    from fedactors.tasks import BUILTIN

    return BUILTIN


def load_task(spec: str | Task) -> Task:
    """The Task a spec names (or the Task itself); ConfigError with one line for anything else."""
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"--task must name a task, got {spec!r}")
    builtin = builtin_tasks()
    if spec in builtin:
        return builtin[spec]
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"--task {spec}: not a built-in task ({', '.join(builtin)}), nor module:attr or file.py:attr")
    module = _import(where, spec)
    if not hasattr(module, attr):
        raise ConfigError(f"--task {spec}: {where} has no attribute {attr!r}")
    value = getattr(module, attr)
    if callable(value) and not isinstance(value, Task):
        try:
            value = value()
        except Exception as exc:  # the user's code: say whose and what
            raise ConfigError(f"--task {spec}: calling {attr}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(value, Task):
        raise ConfigError(f"--task {spec}: {attr} is a {type(value).__name__}, not a fedactors.task.Task "
                          "(or a function returning one)")
    return value


def with_absolute_paths(settings: dict) -> dict:
    """`settings` with the files it names made absolute: a file.py:attr --task or --strategy and --data npz:PATH.

    Stored so, a run resumes from any directory, and every node of a cluster reads the same file."""
    out = dict(settings)
    for key in ("task", "strategy"):
        value = out.get(key)
        if isinstance(value, str):
            where, sep, attr = value.rpartition(":")
            if sep and where.endswith(".py"):
                out[key] = f"{Path(where).expanduser().resolve()}:{attr}"
    data = out.get("data")
    if isinstance(data, str) and data.startswith("npz:") and len(data) > 4:
        out["data"] = f"npz:{Path(data[4:]).expanduser().resolve()}"
    return out


def _import(where: str, spec: str, flag: str = "--task") -> Any:
    """The module `where` names: a .py file's path, or an importable module (for --task and --strategy).

    A file's directory goes first on sys.path, as `python file.py` puts it, so the file may import
    the modules beside it; every process that resolves the spec (the command, each client host)
    comes through here, so each of them finds those modules."""
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"{flag} {spec}: no file {path}")
        _put_on_path(path.parent)
        name = "fedactors_task_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # a module that calls exit() would end the command without a word
            del sys.modules[name]
            raise ConfigError(f"{flag} {spec}: importing {path} failed: {type(exc).__name__}: {exc}") from None
        # A Task object from this file (the Python API) travels to Ray's workers by value, as a
        # notebook's would: no worker could import a module loaded from a path by this name.
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(module)
        return module
    try:
        return importlib.import_module(where)
    except ImportError as exc:
        raise ConfigError(f"{flag} {spec}: cannot import {where}: {exc}") from None
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"{flag} {spec}: importing {where} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"{flag} {spec}: importing {where} failed: {type(exc).__name__}: {exc}") from None


def _put_on_path(directory: Path) -> None:
    """`directory` at the front of sys.path, once (a resolved path: the same file always adds the same entry)."""
    entry = str(directory)
    if entry not in sys.path:
        sys.path.insert(0, entry)


def load_npz(path: Path) -> Arrays:
    """Arrays the user has: an .npz with x_train, y_train, x_test, y_test."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"--data npz:{path} lacks {', '.join(missing)} (needs {', '.join(NPZ_KEYS)})")
            return Arrays(*(npz[k] for k in NPZ_KEYS))
    except FileNotFoundError:
        raise DataError(f"--data npz:{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"--data npz:{path} is not a readable .npz file: {exc}") from None


def load_arrays(task: Task, data: str | None, data_dir: Path) -> Arrays:
    """The task's data (or `--data npz:PATH` in its place), prepared and checked: float32 examples, int64 labels."""
    if data is not None:
        kind, _, where = data.partition(":")
        if kind != "npz" or not where:
            raise ConfigError(f"--data must be npz:PATH, got {data!r}")
        raw = load_npz(Path(where).expanduser())
    elif task.load is None:
        raise ConfigError(f"task {task.name} brings no data of its own; pass --data npz:PATH")
    else:
        try:
            raw = task.load(data_dir)
        except (ConfigError, DataError):
            raise
        except Exception as exc:  # noqa: BLE001 - any error of a user's loader, named in one line
            raise DataError(f"task {task.name}'s loader failed: {type(exc).__name__}: {first_line(exc)}") from None
        if not isinstance(raw, Arrays):
            raise DataError(f"task {task.name}'s loader returned a {type(raw).__name__}, not fedactors.task.Arrays")
    return check_arrays(task, Arrays(
        x_train=_prepared(task, raw.x_train, "x_train"), y_train=_labels(raw.y_train, "y_train"),
        x_test=_prepared(task, raw.x_test, "x_test"), y_test=_labels(raw.y_test, "y_test"),
    ))


def _prepared(task: Task, x: np.ndarray, name: str) -> np.ndarray:
    try:
        out = task.prepare(np.asarray(x))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"task {task.name} cannot prepare {name} of shape {np.shape(x)}: {type(exc).__name__}: {exc}") from None
    out = np.ascontiguousarray(out)
    if out.dtype != np.float32:
        raise DataError(f"task {task.name}: prepare returned {out.dtype} for {name}; it must return float32")
    if not np.isfinite(out).all():
        finite = np.isfinite(out.reshape(len(out), -1)).all(axis=1)
        raise DataError(f"{name} holds NaN or infinity (example {int(np.argmin(finite))} is the first)")
    return out


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{name} must be one integer label per example, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise DataError(f"{name} must hold integer labels, got {y.dtype}")
    if len(y) and not (-(2**31) < y.min() and y.max() < 2**31):  # before the cast: a float or uint64 label that big wraps
        raise DataError(f"{name} holds labels in [{y.min()}, {y.max()}]; labels are 0..C-1")
    return np.ascontiguousarray(y, dtype=np.int64)


def check_arrays(task: Task, a: Arrays) -> Arrays:
    """Shapes agree, labels are 0..C-1; DataError naming what does not."""
    for x, y, part in ((a.x_train, a.y_train, "train"), (a.x_test, a.y_test, "test")):
        if len(x) != len(y):
            raise DataError(f"x_{part} has {len(x)} examples but y_{part} {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"x_{part} has no examples")
    if a.x_train.shape[1:] != a.x_test.shape[1:]:
        raise DataError(f"x_train examples are {a.x_train.shape[1:]} but x_test's {a.x_test.shape[1:]}")
    classes = num_classes(task, a)
    for y, part in ((a.y_train, "y_train"), (a.y_test, "y_test")):
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            raise DataError(f"{part} holds labels in [{low}, {high}]; task {task.name} has {classes} classes (0..{classes - 1})")
    return a


def num_classes(task: Task, a: Arrays) -> int:
    return task.num_classes if task.num_classes is not None else int(a.y_train.max()) + 1


def digest(a: Arrays) -> str:
    """sha256 of the prepared arrays (shapes, dtypes and bytes): the data's part of a run's identity."""
    h = hashlib.sha256()
    for x in (a.x_train, a.y_train, a.x_test, a.y_test):
        h.update(f"{x.dtype.str}{x.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    return h.hexdigest()
