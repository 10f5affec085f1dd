"""The task registry: a --task spec to its Task, and the importer --task and --strategy share.

    mnist-cnn, mnist-2nn, femnist-cnn, ...   built-in (fedactors.tasks; `fedactors tasks` lists them)
    package.module:attr                      an importable module's attribute
    path/to/file.py:attr                     a file's attribute (the path must exist on every node)

It lives apart from the Task contract (fedactors.task) because it imports the built-in tasks,
which are Tasks: the contract imports neither this module nor fedactors.tasks, so the two
import one way. `fedactors.task.load_task` and `builtin_tasks` still name these functions.
"""

from __future__ import annotations


from fedactors.errors import ConfigError
from fedactors.importer import import_spec  # noqa: F401 - --task's importer, here where it was
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
