"""The `fedactors` command: click commands over the library. Only this package imports click and rich.

Flags become a RunConfig; every FedActorsError becomes one line on stderr and its exit status.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click

from fedactors import __version__
from fedactors.errors import FedActorsError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fedactors")
def cli() -> None:
    """Federated learning on Ray: FedAvg on MNIST as in McMahan et al. 2017."""




@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """A run stopped by Ctrl-C, SIGTERM or SIGHUP (already marked interrupted, its resume command shown)
    exits 128 + the signal, before click could turn the KeyboardInterrupt into "Aborted!"."""
    from fedactors.runtime.interrupts import Interrupted

    try:
        yield
    except Interrupted as exc:
        raise SystemExit(128 + exc.signum) from None


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit status 2 (3 for a store outage).

    `kill -USR1 PID` prints every thread's Python stack to stderr (faulthandler): where a run
    that seems stuck is waiting, without stopping it."""
    import faulthandler
    import signal

    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, ValueError, OSError):  # no SIGUSR1 (Windows), or a stderr without a file descriptor
        pass
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("fedactors: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"fedactors: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except FedActorsError as exc:
        click.echo(f"fedactors: error: {exc}", err=True)
        sys.exit(exc.exit_code)


# Importing the command modules registers their commands on `cli`.
from fedactors.cli import results, run, runs, strategies, tasks  # noqa: E402

__all__ = ["cli", "exit_on_interrupt", "main", "results", "run", "runs", "strategies", "tasks"]

if __name__ == "__main__":
    main()
