"""Callbacks: a run's hooks, handed the records it writes (`fedactors.run(..., callbacks=[...])`).

    from fedactors.callbacks import Callback

    class Printer(Callback):
        def on_evaluation(self, record):
            print(record["round"], record["accuracy"])

Any object with some of the HOOKS as methods is a callback (Callback is a base whose hooks do nothing). Each hook
gets a JSON-ready dict of its own (a copy: changing it changes nothing of the run):

    on_run_start(run)       {"run_id", "run_dir", "config" (run.json's), "resumed_from_round" (None: a new run)},
                            before Ray starts
    on_evaluation(record)   each evaluated round: the line metrics.jsonl gets
    on_checkpoint(record)   each checkpointed round: {"round", "checkpoint_seconds"}, once it is in the store
    on_round_end(record)    every round, after the two above: metrics.jsonl's fields (accuracy and loss None
                            where the round was not evaluated)
    on_run_end(run)         run.json's content as the run ends, "status" finished, failed or interrupted

A hook that raises stops the run: CallbackError, one line naming the callback and the hook; run.json says
failed, the rounds checkpointed so far stay, and `fedactors.resume` continues it (with the callbacks
given again). A hook's KeyboardInterrupt stops it as Ctrl-C does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from fedactors.errors import ConfigError, FedActorsError, first_line

HOOKS = ("on_run_start", "on_evaluation", "on_checkpoint", "on_round_end", "on_run_end")


class CallbackError(FedActorsError):
    """A callback's hook raised: the run stopped there, resumable from its last checkpoint."""

    exit_code = 1


class Callback:
    """A callback whose hooks do nothing: override those you need (see the module's docstring)."""

    def on_run_start(self, run: dict) -> None: ...

    def on_evaluation(self, record: dict) -> None: ...

    def on_checkpoint(self, record: dict) -> None: ...

    def on_round_end(self, record: dict) -> None: ...

    def on_run_end(self, run: dict) -> None: ...


class Hooks:
    """The callbacks of one run, called in the order given."""

    def __init__(self, callbacks: Iterable[object] | None) -> None:
        self.callbacks = list(callbacks or ())
        for i, callback in enumerate(self.callbacks):
            if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
                raise ConfigError(f"callbacks[{i}]: {_name(callback)} has none of the hooks {', '.join(HOOKS)} "
                                  "(see fedactors.callbacks.Callback)")

    def call(self, hook: str, record: dict, where: str = "") -> None:
        """Each callback's `hook` with its own copy of `record`; CallbackError naming the first that raises."""
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is None:
                continue
            try:
                method(copy.deepcopy(record))
            except Exception as exc:
                raise CallbackError(f"callback {_name(callback)}.{hook} raised {type(exc).__name__}: {first_line(exc)}"
                                    f"{where}") from exc


def _name(callback: object) -> str:
    return type(callback).__qualname__
