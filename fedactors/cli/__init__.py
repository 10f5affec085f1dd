"""The `fedactors` command: click commands over the library. Only this package imports click and rich.

Flags become a RunConfig; every FedActorsError becomes one line on stderr and its exit status.
"""

from __future__ import annotations

import sys

import click

from fedactors import __version__
from fedactors.errors import FedActorsError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fedactors")
def cli() -> None:
    """Federated learning on Ray: FedAvg on MNIST as in McMahan et al. 2017."""


# Importing the command modules registers their commands on `cli`.
from fedactors.cli import results, run, runs  # noqa: E402

__all__ = ["cli", "main", "results", "run", "runs"]


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit status 2 (3 for a store outage)."""
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


if __name__ == "__main__":
    main()
