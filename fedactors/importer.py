"""The importer --task and --strategy share: `module:attr` and `file.py:attr` specs to their module.

A leaf (it imports nothing of fedactors but its errors), so the task registry and the algorithms both use it
without importing each other.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from fedactors.errors import ConfigError


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


def _put_on_path(directory: Path) -> None:
    """`directory` at the front of sys.path, once (a resolved path: the same file always adds the same entry)."""
    entry = str(directory)
    if entry not in sys.path:
        sys.path.insert(0, entry)
