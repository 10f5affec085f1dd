"""Ctrl-C, SIGTERM and SIGHUP stop a run cleanly: each is remembered until the run stops.

SIGTERM is what `kill`, Slurm, Kubernetes, systemd and `timeout` send to stop a job, and
SIGHUP what a closed terminal sends: both are treated like Ctrl-C (status "interrupted", the
resume command printed, exit 128 + the signal's number from the command line). The handler
raises Interrupted (a KeyboardInterrupt) as Python's SIGINT handler does, and remembers the
signal, which `check` turns back into Interrupted at the next event from the coordinator, so
a swallowed exception cannot let the run finish. A signal ignored when the run starts
(`nohup`, `... &` without job control) stays ignored, and nothing is installed outside the
main thread (Python allows signal handlers there only). experiment._start_ray puts these
handlers back after ray.init, which replaces the SIGTERM handler with one that exits at once.

A closed stdout (`fedactors run ... | head`) stops a run the same way, as SIGPIPE (exit 141):
Python ignores that signal and fails the write instead, so whoever writes (progress.Renderer)
notices, and `stop` latches it like a signal.
"""

from __future__ import annotations

import signal
import threading


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by `signum` (SIGINT, SIGTERM or SIGHUP; SIGPIPE for a closed stdout)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupts:
    """A context in which SIGINT, SIGTERM and SIGHUP raise Interrupted and are remembered in `signum`."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self.SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        raise Interrupted(signum)

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def stop(self, signum: int) -> None:
        """Stop as if `signum` had arrived (SIGPIPE: stdout was closed): remembered, and Interrupted raised."""
        if self.signum is None:
            self.signum = signum
        self.check()

    def stopped_by(self) -> int:
        """The signal that stopped the run (SIGINT if the KeyboardInterrupt came from elsewhere)."""
        return self.signum or signal.SIGINT
