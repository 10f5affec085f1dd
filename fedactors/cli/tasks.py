"""`fedactors tasks`: the built-in tasks, each with what it takes."""

from __future__ import annotations

import click

from fedactors.cli import cli


@cli.command()
def tasks() -> None:
    """List the built-in tasks (for --task) and the inputs each takes; a task of your own is module:attr or
    file.py:attr."""
    from fedactors.data.registry import builtin_tasks

    found = builtin_tasks()
    width = max(len(name) for name in found)
    for name, task in found.items():
        click.echo(f"{name:<{width}}  {task.description}")
        click.echo(f"{'':<{width}}  inputs: {task.inputs}")
