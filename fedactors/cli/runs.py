"""`fedactors runs list|show|rm`: the runs a checkpoint store knows."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from fedactors.cli import cli
from fedactors.algorithms import builtin
from fedactors.api import STORE_DIR, open_store
from fedactors.cli.run import forget_redis_variable, redis_option
from fedactors.errors import ConfigError
from fedactors.results.outputs import RunDirectory


@cli.group()
def runs() -> None:
    """List, show and remove checkpointed runs."""


runs_redis_option = redis_option("the embedded store of each run directory under --runs-dir.")
runs_dir_option = click.option(
    "--runs-dir", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
    show_default=True, help="Where run directories are (for the embedded store, used when --redis is not given).",
)


def _stores(redis_url: str | None, runs_dir: Path, run_id: str | None = None) -> Iterator[tuple]:
    """(store, where) for --redis, or for the embedded store of each run directory under runs_dir (`where` is
    that directory)."""
    forget_redis_variable()
    if redis_url:
        with open_store(redis_url, runs_dir, 30.0) as (store, _):
            yield store, store.url
        return
    # A run's directory is runs/RUN_ID unless it was given --out: look there first, then everywhere.
    dirs = sorted(p.parent for p in runs_dir.glob(f"*/{STORE_DIR}"))
    if run_id and runs_dir / run_id in dirs:
        dirs.remove(runs_dir / run_id)
        dirs.insert(0, runs_dir / run_id)
    for d in dirs:
        with open_store(None, d, 30.0) as (store, _):
            yield store, str(d)


@runs.command("list")
@runs_redis_option
@runs_dir_option
def runs_list(redis_url: str | None, runs_dir: Path) -> None:
    """One line per run: id, status, newest round, task, data, configuration."""
    from fedactors.results.report import data_names

    rows = [(info, _status(info, redis_url, runs_dir, where))
            for store, where in _stores(redis_url, runs_dir) for info in store.runs()]
    if not rows:
        click.echo("no runs")
        return
    tasks = [_task(info.config) for info, _ in rows]
    names = data_names([info.config.get("data") for info, _ in rows])
    data = [names.get(info.config.get("data"), OWN_DATA) for info, _ in rows]
    width = max(len("task"), *(len(t) for t in tasks))
    data_width = max(len("data"), *(len(d) for d in data))
    click.echo(f"{'run id':<28} {'status':<11} {'round':>6}  {'task':<{width}}  {'data':<{data_width}}  configuration")
    for (info, status), task, source in zip(rows, tasks, data, strict=True):
        c = info.config
        click.echo(
            f"{info.run_id:<28} {status:<11} {str(info.latest_round):>6}  {task:<{width}}  {source:<{data_width}}  "
            f"{c.get('partition')} K={c.get('clients')} C={c.get('frac')} E={c.get('epochs')} "
            f"B={c.get('batch_size')} lr={c.get('lr')} seed={c.get('seed')} rounds={c.get('rounds')}"
        )


def _status(info, redis_url: str | None, runs_dir: Path, where: str) -> str:
    """A run's status: the store knows only running and finished (it is told when a run finishes); a run that
    failed or was interrupted says so in its run.json, so that wins where it names the run. The run's directory
    is the embedded store's own, or (--redis) runs/RUN_ID where it was not given --out."""
    run_dir = RunDirectory(runs_dir / info.run_id if redis_url else Path(where))
    said = run_dir.info().get("status")
    return said if run_dir.run_id() == info.run_id and said in ("failed", "interrupted") else info.status


# The data column of a run that read its task's own data (no --data); the others show --data as report's labels do:
# its kind and file or directory name (with as many parent directories as tell the listed runs' data apart).
OWN_DATA = "task's own"


def _task(config: dict) -> str:
    """A run's task as the list shows it: a name as stored, a file task by its file's name (stored absolute,
    its directory would crowd the line; `runs show` has it whole)."""
    spec = str(config.get("task", "mnist-cnn"))  # checkpoints from before tasks were all mnist-cnn
    where, sep, attr = spec.rpartition(":")
    return f"{Path(where).name}:{attr}" if sep and where.endswith(".py") else spec


@runs.command("show")
@click.argument("run_id")
@runs_redis_option
@runs_dir_option
@click.option("--config", "as_config", is_flag=True,
              help="Print only RUN_ID's stored settings, as a TOML file that `fedactors run --config FILE.toml` reads "
                   "to run it again (flags given with it override the file's).")
def runs_show(run_id: str, redis_url: str | None, runs_dir: Path, as_config: bool) -> None:
    """Everything the store knows of RUN_ID (--config: its settings as a TOML file)."""
    import json

    from fedactors.store.checkpoint import mask_url

    for store, where in _stores(redis_url, runs_dir, run_id):
        info = store.info(run_id)
        if info is not None and as_config:
            click.echo(settings_toml(run_id, info.config), nl=False)
            return
        if info is not None:
            ckpt, skipped = store.latest(run_id)
            best = max((r["accuracy"] for r in ckpt.history), default=None) if ckpt else None
            click.echo(json.dumps({
                "run_id": run_id, "store": where, "status": _status(info, redis_url, runs_dir, where),
                "latest_round": info.latest_round,
                "rounds_kept": list(info.rounds), "corrupt_rounds": [b.round for b in skipped],
                "best_accuracy": best, "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created)),
                "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.updated)),
                "fingerprint": info.fingerprint, "config": info.config,
            }, indent=2))
            return
    raise ConfigError(f"no run {run_id} in {'the store at ' + mask_url(redis_url) if redis_url else runs_dir}")


@runs.command("rm")
@click.argument("run_id")
@runs_redis_option
@runs_dir_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def runs_rm(run_id: str, redis_url: str | None, runs_dir: Path, yes: bool) -> None:
    """Delete RUN_ID's checkpoints from the store (its output files stay)."""
    from fedactors.store.checkpoint import mask_url

    for store, where in _stores(redis_url, runs_dir, run_id):
        if store.info(run_id) is not None:
            if not yes:
                if not sys.stdin.isatty():
                    raise ConfigError(f"refusing to delete run {run_id} without confirmation; pass --yes")
                click.confirm(f"delete every checkpoint of run {run_id} from {where}?", abort=True)
            store.delete(run_id)
            click.echo(f"deleted run {run_id}'s checkpoints from {where}")
            return
    raise ConfigError(f"no run {run_id} in {'the store at ' + mask_url(redis_url) if redis_url else runs_dir}")


def settings_toml(run_id: str, stored: dict) -> str:
    """A run's stored configuration as the TOML `fedactors run --config` reads (cli.run.load_config_file): a line a
    setting, named as its flag; a setting stored as null (not set: its default) left out, as TOML has no null.

    ConfigError when the store holds settings this fedactors would not run (another version's)."""
    import json

    from fedactors.config import RunConfig

    settings = dict(stored)
    if settings.get("partition") == "natural":
        settings.pop("clients", None)  # the count its data gave: a natural partition's clients are the data's owners
    spec = builtin(settings.get("strategy"))
    if (spec is not None and spec.private) or settings.get("dp"):
        settings.setdefault("accountant", "rdp")  # checkpointed before --accountant: it counted with RDP (api.resumed_config)
    try:
        RunConfig.from_dict(settings)
    except ConfigError as exc:
        raise ConfigError(f"run {run_id}'s stored settings are not ones this fedactors runs: {exc}") from None
    lines = [f"# run {run_id}'s settings: fedactors run --config THIS_FILE runs it again (a flag given overrides its line)"]
    for key, value in settings.items():
        if value is None:
            continue
        # A JSON string is a TOML basic string (the same escapes) but for DEL, which TOML wants escaped;
        # ensure_ascii=False keeps characters beyond the BMP whole (\ud83d-style surrogate escapes are not TOML).
        text = json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f") if isinstance(value, str) else (
            "true" if value is True else "false" if value is False else repr(value))
        lines.append(f"{key.replace('_', '-')} = {text}")
    return "\n".join(lines) + "\n"
