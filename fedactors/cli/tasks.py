"""`fedactors tasks`: the built-in tasks, one line each."""

from __future__ import annotations

import click

from fedactors.cli import cli


@cli.command()
def tasks() -> None:
    """List the built-in tasks (for --task); a task of your own is module:attr or file.py:attr."""
    from fedactors.task import builtin_tasks

    found = builtin_tasks()
    width = max(len(name) for name in found)
    for name, task in found.items():
        click.echo(f"{name:<{width}}  {task.description}")
