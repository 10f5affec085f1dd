"""A task: the model a federation trains and the data it learns from, behind one small interface.

    Task(name, model, load, prepare=..., loss=None, num_classes=None, description="")

`model` is a factory for any `torch.nn.Module` (it is called in every client host, and once per
run to make the initial weights, each time with torch seeded from the run's seed); `load(data_dir)` returns the raw arrays
(`Arrays`: x_train, y_train, x_test, y_test, integer labels 0..C-1), and `prepare` turns
examples into the model's input once, at load time (float32; nothing is transformed per
sample while training). `loss(logits, labels)` is a batch's mean loss (default: cross-entropy);
the metric is accuracy (the arg-max of the model's output against the label). Everything past
the task sees what it saw before tasks existed: one flat float32 buffer of weights and
read-only arrays in the object store.

A task is named on the command line (`--task`) and in a run's configuration by a spec, which
every process that needs it (the command, each client host) resolves the same way
(fedactors.data.registry's `load_task`, also importable from here):

    mnist-cnn, mnist-2nn, femnist-cnn,    built-in (fedactors tasks lists them, and the inputs each takes)
    digits-mlp, shakespeare-lstm, ...
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

Frozen parameters (requires_grad=False) are not in the flat buffer: each host's factory makes
them (seeded as above, so alike everywhere), and they are never sent, averaged or checkpointed.
A model whose every parameter is frozen is refused with one line.

Personal parameters (`personal`): which of the model's trained parameters and float buffers stay with each
client under the methods that keep a part of the model local (fedper, fedrep, fedbn: fedactors.algorithms),
named as frozen ones are by the model, by patterns (fnmatch) over the names `named_parameters()` and
`named_buffers()` give them, e.g. ("fc2.*",) or ("*.running_*", "bn*"). None leaves it to the method (the
last layer; every BatchNorm). Every model the task's factory builds carries them (PERSONAL_ATTRIBUTE), so the
host that trains a client reads them off the model it trains. A pattern that matches nothing, or patterns
that leave nothing trained to share, are refused with one line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedactors.data.arrays import Arrays, as_float32, as_int64  # noqa: F401 - Arrays and as_int64 are users' here too
from fedactors.errors import ConfigError, DataError, first_line
from fedactors.messages import METRIC_KEYS

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_TASK = "mnist-cnn"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DATA_KINDS = ("npz", "leaf", "hf")  # --data KIND:PATH (config.DATA_KINDS)
NPZ_OWNER_KEYS = ("client_train", "client_test")  # optional: who owns each example (--partition natural)
LABELS = ("classes", "values")
# Names every evaluated round already carries (metrics.jsonl): a task's own metrics may not shadow them.
RESERVED_METRICS = frozenset({*METRIC_KEYS, "metrics", "private", "type"})

# The module attribute a model built by a task with `personal` patterns carries them under (Task.personal).
PERSONAL_ATTRIBUTE = "fedactors_personal"
SHOWN_NAMES = 6  # a refusal of personal patterns lists this many of the model's names

# The registry's names, kept at this address for users (`from fedactors.task import load_task`) and imported only
# when asked for: the registry imports the built-in tasks, which import this module (tests/test_layout.py).
_REGISTRY = {"load_task": "load_task", "builtin_tasks": "builtin_tasks"}


def __getattr__(name: str) -> object:
    if name in _REGISTRY:
        from fedactors.data import registry

        return getattr(registry, _REGISTRY[name])
    raise AttributeError(f"module 'fedactors.task' has no attribute {name!r}")


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
    # The labels as the loader returns them (characters, strings) -> int64 class ids 0..C-1 (or float targets).
    prepare_labels: Callable[[np.ndarray], np.ndarray] | None = None
    # "classes": integer labels 0..C-1, accuracy and cross-entropy; "values": float targets (regression),
    # mean squared error as the default loss and no accuracy.
    labels: str = "classes"
    # More metrics, name -> f(outputs, labels) giving one value per example (B,): summed over the test
    # examples and divided by their count, reported by name beside accuracy and loss.
    metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None
    minimize: tuple[str, ...] = ()  # the metrics that are better smaller (an error), for --target-metric
    # What the examples must be as `load` or --data gives them (shape, type, range), in words: `fedactors tasks`
    # shows it. A built-in's `prepare` refuses, in one line, examples clearly outside it.
    inputs: str = ""
    # Which trained parameters and float buffers stay with each client under fedper, fedrep and fedbn: fnmatch
    # patterns over their names (see the module docstring). None: each method's own default.
    personal: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a Task needs a name (a non-empty string), got {self.name!r}")
        if not callable(self.model) or (hasattr(self.model, "parameters") and not isinstance(self.model, type)):
            # a module itself (a class is a factory): each host builds its own
            raise ConfigError(f"task {self.name}: model must be a function returning a torch.nn.Module "
                              "(model=lambda: MyNet(), not model=MyNet())")
        if self.labels not in LABELS:
            raise ConfigError(f"task {self.name}: labels must be one of {', '.join(LABELS)}, got {self.labels!r}")
        if self.metrics is not None:
            if not isinstance(self.metrics, dict) or not all(isinstance(k, str) and k and callable(v)
                                                             for k, v in self.metrics.items()):
                raise ConfigError(f"task {self.name}: metrics must be a dict of name -> function(outputs, labels)")
            taken = sorted(set(self.metrics) & RESERVED_METRICS)
            if taken:
                raise ConfigError(f"task {self.name}: metric names {', '.join(taken)} are fedactors' own; rename them")
        if not isinstance(self.minimize, tuple) or not set(self.minimize) <= set(self.metrics or {}):
            raise ConfigError(f"task {self.name}: minimize must be a tuple of names from its metrics")
        if not isinstance(self.inputs, str):
            raise ConfigError(f"task {self.name}: inputs must be a string (what the examples must be), "
                              f"got {type(self.inputs).__name__}")
        for what in ("load", "prepare", "loss", "local", "prepare_labels"):
            if getattr(self, what) is not None and not callable(getattr(self, what)):
                raise ConfigError(f"task {self.name}: {what} must be callable, got {type(getattr(self, what)).__name__}")
        if self.personal is not None:
            self._check_personal()
        elif isinstance(self.model, PersonalModel):  # dataclasses.replace(task, personal=None)
            object.__setattr__(self, "model", self.model.factory)
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 1):
            raise ConfigError(f"task {self.name}: num_classes must be a positive integer or None, got {self.num_classes!r}")

    def _check_personal(self) -> None:
        """`personal` as a tuple of non-empty strings (a list is taken as one), and `model` a factory whose modules
        carry it (PersonalModel), so that whoever builds the model knows which parts of it stay with each client."""
        patterns = self.personal
        if isinstance(patterns, list):
            patterns = tuple(patterns)
        if not (isinstance(patterns, tuple) and patterns and all(isinstance(p, str) and p for p in patterns)):
            raise ConfigError(f"task {self.name}: personal must be a tuple of name patterns such as (\"fc2.*\",), "
                              f"got {self.personal!r}")
        object.__setattr__(self, "personal", patterns)
        factory = self.model.factory if isinstance(self.model, PersonalModel) else self.model
        object.__setattr__(self, "model", PersonalModel(factory, patterns, self.name))


@dataclass(frozen=True)
class PersonalModel:
    """A task's model factory whose every module carries the task's personal patterns (PERSONAL_ATTRIBUTE), checked
    against it as it is built: a pattern that matches nothing, or patterns that take in every trained parameter, are a
    ConfigError wherever the model is first built (the command's own check of a user's model, before any host)."""

    factory: Callable[[], nn.Module]
    patterns: tuple[str, ...]
    task: str = ""  # the task's name, for a refusal

    def __call__(self) -> nn.Module:
        from torch import nn

        module = self.factory()
        if isinstance(module, nn.Module):  # anything else: fedactors.model refuses it in one line
            personal_names(module, self.patterns, f"task {self.task}: personal pattern")
            object.__setattr__(module, PERSONAL_ATTRIBUTE, self.patterns)  # past nn.Module's __setattr__: a plain value
        return module


def flat_layout(module: nn.Module) -> list[tuple[str, int, int]]:
    """(name, start, stop) of each trained parameter, then each float32 buffer, in the flat weights, as
    fedactors.model.FlatModel lays them out (frozen parameters and integer buffers are not in them)."""
    import torch

    out, at = [], 0
    for name, p in module.named_parameters():
        if p.requires_grad:
            out.append((name, at, at + p.numel()))
            at += p.numel()
    for name, b in module.named_buffers():
        if b.dtype == torch.float32:
            out.append((name, at, at + b.numel()))
            at += b.numel()
    return out


def personal_names(module: nn.Module, patterns: tuple[str, ...], where: str) -> list[str]:
    """The names in `module`'s flat weights (flat_layout's order) that `patterns` match (fnmatch); ConfigError naming
    `where` for a pattern that matches none, or patterns that take in every trained parameter (nothing trained would be
    shared)."""
    import fnmatch

    names = [name for name, _, _ in flat_layout(module)]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            shown = ", ".join(names[:SHOWN_NAMES]) + (f", ... ({len(names)} in all)" if len(names) > SHOWN_NAMES else "")
            raise ConfigError(f"{where} {pattern!r} matches none of the model's trained parameters and float buffers "
                              f"({shown})")
    chosen = [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if {name for name, p in module.named_parameters() if p.requires_grad} <= set(chosen):
        raise ConfigError(f"{where} {', '.join(repr(p) for p in patterns)} takes in every parameter the model trains: "
                          "its clients would share nothing they train")
    return chosen


def with_absolute_paths(settings: dict) -> dict:
    """`settings` with the files it names made absolute: a file.py:attr --task or --strategy, --data npz:PATH and
    --client-trace.

    Stored so, a run resumes from any directory, and every node of a cluster reads the same file."""
    out = dict(settings)
    for key in ("task", "strategy"):
        value = out.get(key)
        if isinstance(value, str):
            where, sep, attr = value.rpartition(":")
            if sep and where.endswith(".py"):
                out[key] = f"{Path(where).expanduser().resolve()}:{attr}"
    data = out.get("data")
    kind, sep, where = data.partition(":") if isinstance(data, str) else ("", "", "")
    if sep and kind in DATA_KINDS and where:
        out["data"] = f"{kind}:{Path(where).expanduser().resolve()}"
    if isinstance(out.get("client_trace"), str) and out["client_trace"].strip():
        out["client_trace"] = str(Path(out["client_trace"]).expanduser().resolve())
    return out


def load_npz(path: Path) -> Arrays:
    """Arrays the user has: an .npz with x_train, y_train, x_test, y_test."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"--data npz:{path} lacks {', '.join(missing)} (needs {', '.join(NPZ_KEYS)})")
            owners = {k: npz[k] for k in NPZ_OWNER_KEYS if k in npz.files}
            return Arrays(*(npz[k] for k in NPZ_KEYS), **owners)
    except FileNotFoundError:
        raise DataError(f"--data npz:{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"--data npz:{path} is not a readable .npz file: {exc}") from None


def load_arrays(task: Task, data: str | None, data_dir: Path, *, columns: dict | None = None) -> Arrays:
    """The task's data (or `--data npz:PATH` / `leaf:DIR` / `hf:DIR` in its place), prepared and checked: float32 or
    int64 examples, int64 labels (float32 targets for labels="values"), owners as client numbers. `columns`: hf's
    partition_by, input_column and label_column (fedactors.data.hf)."""
    if data is not None:
        kind, _, where = data.partition(":")
        if kind not in DATA_KINDS or not where:
            raise ConfigError(f"--data must be npz:PATH, leaf:DIR or hf:DIR, got {data!r}")
        if kind == "npz":
            raw = load_npz(Path(where).expanduser())
        elif kind == "hf":
            from fedactors.data.hf import load_hf

            raw = load_hf(Path(where).expanduser(), **(columns or {}))
        else:
            from fedactors.data.leaf import load_leaf

            raw = load_leaf(Path(where).expanduser())
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
    client_train, client_test, owners = owner_numbers(raw)
    return check_arrays(task, Arrays(
        x_train=_prepared(task, raw.x_train, "x_train"), y_train=_labels(task, raw.y_train, "y_train"),
        x_test=_prepared(task, raw.x_test, "x_test"), y_test=_labels(task, raw.y_test, "y_test"),
        client_train=client_train, client_test=client_test, owners=owners,
    ))


def owner_numbers(raw: Arrays) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(client_train, client_test, owners): each example's owner as a client number 0..K-1, the owners sorted.

    One vectorised np.unique, so a million owners cost what sorting N ids costs. A test owner
    that owns no training example is refused (it would be a client that never trains)."""
    if raw.client_train is None:
        if raw.client_test is not None:
            raise DataError("client_test is given without client_train: the owners of the training examples "
                            "decide the clients")
        return None, None, None
    ids_train = _owner_ids(raw.client_train, "client_train", len(raw.y_train))
    owners, codes = np.unique(ids_train, return_inverse=True)
    if raw.client_test is None:
        return codes.astype(np.int64), None, owners
    ids_test = _owner_ids(raw.client_test, "client_test", len(raw.y_test))
    if ids_test.dtype.kind != ids_train.dtype.kind and not {ids_test.dtype.kind, ids_train.dtype.kind} <= {"i", "u"}:
        raise DataError(f"client_train holds {ids_train.dtype} ids but client_test {ids_test.dtype}: use one kind")
    test_codes = np.searchsorted(owners, ids_test)
    unknown = (test_codes >= len(owners)) | (owners[np.minimum(test_codes, len(owners) - 1)] != ids_test)
    if unknown.any():
        raise DataError(f"client_test names owners with no training example (e.g. {ids_test[unknown][0]!r}): "
                        "every client must have training data")
    return codes.astype(np.int64), test_codes.astype(np.int64), owners


def _owner_ids(ids: object, name: str, count: int) -> np.ndarray:
    """The owner ids as a 1-D array of integers or strings, one per example; DataError otherwise."""
    try:
        out = np.asarray(ids)
    except Exception as exc:  # ragged lists and the like
        raise DataError(f"{name} cannot be read as one owner id per example: {type(exc).__name__}") from None
    if out.dtype == object:  # hashable ids of mixed or Python types: compared as their text
        out = np.array([str(v) for v in out.ravel()]).reshape(out.shape)
    if out.ndim != 1 or len(out) != count:
        raise DataError(f"{name} must hold one owner id per example ({count}), got shape {out.shape}")
    if out.dtype.kind not in "iuUS":
        raise DataError(f"{name} must hold integer or string owner ids, got {out.dtype}")
    return out


def _apply(task: Task, prepare: Callable[[np.ndarray], np.ndarray], x: np.ndarray, name: str) -> np.ndarray:
    """prepare(x) as an array; a user's prepare that raises is one DataError line naming the array."""
    try:
        return np.ascontiguousarray(prepare(np.asarray(x)))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - the task's code, named
        raise DataError(f"task {task.name} cannot prepare {name} of shape {np.shape(x)}: {type(exc).__name__}: "
                        f"{first_line(exc)}") from None


def _prepared(task: Task, x: np.ndarray, name: str) -> np.ndarray:
    out = _apply(task, task.prepare, x, name)
    if out.dtype == np.int64:  # token ids (an embedding's input): nothing can be NaN
        return out
    if out.dtype != np.float32:
        raise DataError(f"task {task.name}: prepare returned {out.dtype} for {name}; it must return float32 "
                        "(or int64 token ids)")
    if not np.isfinite(out).all():
        finite = np.isfinite(out.reshape(len(out), -1)).all(axis=1)
        raise DataError(f"{name} holds NaN or infinity (example {int(np.argmin(finite))} is the first)")
    return out


def _labels(task: Task, y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y) if task.prepare_labels is None else _apply(task, task.prepare_labels, y, name)
    if task.labels == "values":
        if not np.issubdtype(y.dtype, np.number) or y.ndim == 0:
            raise DataError(f"{name} must hold numeric targets, got {y.dtype}")
        out = np.ascontiguousarray(y, dtype=np.float32)
        if not np.isfinite(out).all():
            raise DataError(f"{name} holds NaN or infinity")
        return out
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
    if task.labels == "values":
        if a.y_train.shape[1:] != a.y_test.shape[1:]:
            raise DataError(f"y_train targets are {a.y_train.shape[1:]} but y_test's {a.y_test.shape[1:]}")
        return a
    classes = num_classes(task, a)
    for y, part in ((a.y_train, "y_train"), (a.y_test, "y_test")):
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            raise DataError(f"{part} holds labels in [{low}, {high}]; task {task.name} has {classes} classes (0..{classes - 1})")
    return a


def num_classes(task: Task, a: Arrays) -> int:
    return task.num_classes if task.num_classes is not None else int(a.y_train.max()) + 1


def digest(a: Arrays) -> str:
    """sha256 of the prepared arrays (shapes, dtypes and bytes): the data's part of a run's identity.

    The owners count only where the data has them, so a data set without owners keeps the digest it had."""
    h = hashlib.sha256()
    owned = [x for x in (a.client_train, a.client_test) if x is not None]
    for x in (a.x_train, a.y_train, a.x_test, a.y_test, *owned):
        h.update(f"{x.dtype.str}{x.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    return h.hexdigest()


def target_direction(task: Task, metric: str) -> bool:
    """Whether `metric` (--target-metric) is better smaller; ConfigError if the task does not report it."""
    known = (["accuracy"] if task.labels == "classes" else []) + ["loss", *(task.metrics or {})]
    if metric == "accuracy" and task.labels == "values":
        return False  # the default, where there is no accuracy: no round reaches a target then
    if metric not in known:
        raise ConfigError(f"--target-metric {metric}: task {task.name} reports {', '.join(known)}")
    return metric == "loss" or metric in task.minimize
