"""The task registry: a --task spec to its Task, and the importer --task and --strategy share.

    mnist-cnn, mnist-2nn, femnist-cnn, ...   built-in (fedactors.tasks; `fedactors tasks` lists them)
    package.module:attr                      an importable module's attribute
    path/to/file.py:attr                     a file's attribute (the path must exist on every node)

It lives apart from the Task contract (fedactors.task) because it imports the built-in tasks,
which are Tasks: the contract imports neither this module nor fedactors.tasks, so the two
import one way. `fedactors.task.load_task` and `builtin_tasks` still name these functions.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from fedactors.errors import ConfigError
from fedactors.task import Task


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
    module = import_spec(where, spec)
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


def import_spec(where: str, spec: str, flag: str = "--task") -> Any:
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
