"""`fedactors plot`, `report` and `sweep`: looking at runs, and running grids of them."""

from __future__ import annotations

from pathlib import Path

import click

from fedactors.cli import cli, exit_on_interrupt
from fedactors.cli.run import redis_option
from fedactors.config import PARTITIONS
from fedactors.errors import ConfigError, RoundFailed

run_dirs_argument = click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))


@cli.command()
@run_dirs_argument
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=Path("accuracy.png"),
              show_default=True, help="PNG file to write: 800 x 500 px and the legend beside the axes.")
@click.option("--target", type=float, default=None, help="Accuracy line to draw. Default: each run's configured target.")
@click.option("--title", default=None, help="Figure title.")
@click.option("--paper", is_flag=True, help="Mark the paper's rounds to 99% (Table 2) on each run of one of its cells "
              "(the CNN, K=100, C=0.1, FedAvg), in the run's colour.")
@click.option("--y-min", type=float, default=None, help="Bottom of the accuracy axis, e.g. 0.95 to look at the last "
              "stretch to 99%. Default: just below the lowest accuracy after each run's first few evaluated rounds. A run's "
              "legend entry says how many of its points fall off the axis.")
@click.option("--clients", is_flag=True, help="Shade the band from the 10th to the 90th percentile of the clients' own "
              "accuracies around each run's curve (runs evaluated client by client: natural data with client_test, "
              "--eval-clients or --client-test-fraction); runs with clients.jsonl also get a second figure, "
              "OUTPUT-clients.png: each run's distribution of its clients' accuracies at its last evaluated round, "
              "global model and personalized one.")
@click.option("--x", "x", type=click.Choice(["rounds", "uplink", "virtual"]), default="rounds", show_default=True,
              help="The x axis: communication rounds, uplink (the MB the clients sent, cumulative), or virtual (the "
                   "simulated clock's seconds, for runs with --client-speed, --client-trace, --deadline, --over-select "
                   "or an asynchronous strategy).")
def plot(run_dirs: tuple[Path, ...], output: Path, target: float | None, title: str | None, paper: bool,
         y_min: float | None, clients: bool, x: str) -> None:
    """Test accuracy against communication rounds (or uplink MB) for one or more run directories."""
    from fedactors.results.plot import clients_png, plot_client_distributions, plot_runs

    click.echo(str(plot_runs(list(run_dirs), output, target=target, title=title, paper=paper, y_min=y_min,
                             clients=clients, x=x)))
    if clients:
        distributions = plot_client_distributions(list(run_dirs), clients_png(output), title=title)
        if distributions is not None:
            click.echo(str(distributions))


@cli.command()
@run_dirs_argument
@click.option("--markdown", is_flag=True, help="A Markdown table instead of aligned text.")
@click.option("--target", "targets", type=float, multiple=True,
              help="Accuracy for rounds-to-target. Default: each run's configured target. Repeat it for more columns "
                   "(--target 0.97 --target 0.99); the first is the one --best ranks by.")
@click.option("--table2", is_flag=True, help="Also compare with the paper's Table 2 (rounds to 99%, CNN, C=0.1).")
@click.option("--best", "best", default=None, metavar="METRIC",
              help="Only each method's best run (runs differing only in learning rates, server settings, mu, clip, "
                   "noise or seed are one method's cells): the fewest rounds to --target on METRIC (accuracy, loss "
                   "or a task metric), ties by the better final value; failed runs rank after those that reached it.")
@click.option("--clients", "worst", type=click.IntRange(min=1), default=None, metavar="K",
              help="After the table, each run's K worst clients at its last evaluated round (clients.jsonl: runs with "
                   "--client-test-fraction or owners' test sets), by their personalized model's accuracy on their own "
                   "split where the run personalized, else the global model's, with the global model's beside.")
def report(run_dirs: tuple[Path, ...], markdown: bool, targets: tuple[float, ...], table2: bool,
           best: str | None, worst: int | None) -> None:
    """A table of runs: configuration, best accuracy, rounds to target (first and interpolated), time."""
    from fedactors.results.report import (best_by_method, format_table, format_table2, format_worst_clients,
                                          load_run, run_labels)

    if len(targets) > 1 and best not in (None, "accuracy"):
        raise ConfigError(f"--best {best} takes one --target (a value of {best}); more than one is for accuracy")
    target = targets[0] if targets else None
    summaries = [load_run(d, target=target, metric=best or "accuracy") for d in run_dirs]
    if best is not None:
        summaries = best_by_method(summaries)
    click.echo(format_table(summaries, markdown=markdown, also=targets[1:]))
    if table2:
        click.echo()
        click.echo(format_table2(summaries, markdown=markdown))
    if worst is not None:
        for summary, label in zip(summaries, run_labels(summaries)):
            click.echo()
            click.echo(format_worst_clients(summary.path, worst, markdown=markdown, label=label.strip()), nl=False)


def _csv(kind: type, name: str):
    def parse(_ctx: click.Context, _param: click.Parameter, text: str | None) -> list | None:
        if text is None:
            return None
        values = []
        for item in text.split(","):
            item = item.strip()
            if kind is int and item.lower() == "inf":
                values.append(None)
                continue
            try:
                values.append(kind(item))
            except ValueError:
                raise ConfigError(f"{name} takes a comma-separated list, and {item!r} is not a valid value") from None
        return values

    return parse


@cli.command()
@click.option("--paper-table2", "paper_table2", is_flag=True, help="The paper's Table 2 grid for the CNN: C=0.1, both partitions, its E and B.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Sweep TOML: epochs, batch_sizes, fracs, partitions lists and a [run] table of run settings.")
@click.option("--epochs", callback=_csv(int, "--epochs"), default=None, help="Comma-separated E values, e.g. 1,5,20.")
@click.option("--batch-sizes", "batch_sizes", callback=_csv(int, "--batch-sizes"), default=None, help="Comma-separated B values; 'inf' for full batch.")
@click.option("--fracs", callback=_csv(float, "--fracs"), default=None, help="Comma-separated C values. Default: 0.1.")
@click.option("--partitions", callback=_csv(str, "--partitions"), default=None, help=f"Comma-separated, of {', '.join(PARTITIONS)}. Default: iid,noniid (the paper's).")
@click.option("--grid", "grid_items", multiple=True, metavar="KEY=V1,V2,...",
              help="Another grid axis over any run setting, e.g. --grid lr=0.02,0.05,0.1 --grid server_lr=0.01,0.1 "
                   "(repeatable; a file's [grid] table holds the same).")
@click.option("--rounds", type=int, default=None, help="Rounds per cell (overrides the file's [run] table).")
@click.option("--lr", type=float, default=None, help="Learning rate for every cell.")
@click.option("--seed", type=int, default=None, help="Seed for every cell.")
@click.option("--hosts", type=int, default=None, help="Client hosts per run.")
@click.option("--address", default=None, envvar="RAY_ADDRESS", show_envvar=True, help="Ray cluster to attach every run to.")
@click.option("--data-dir", "data_dir", default=None,
              help="The directory every cell's task reads, as run's --data-dir. Default: $FEDACTORS_DATA, else the per-user cache.")
@redis_option("each cell's embedded store, in its run directory.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/sweep"), show_default=True,
              help="Root directory: one run directory per cell, named like noniid-E5-B10-C0.1.")
@click.option("--markdown", is_flag=True, help="Print the closing report as Markdown.")
@click.option("--quiet", "-q", is_flag=True, help="Only one line per cell and the report.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="List the cells, their run directories, which are finished, resumable (from which round) or new, "
              "and the rounds each would run; start nothing.")
def sweep(paper_table2: bool, config_file: Path | None, epochs, batch_sizes, fracs, partitions, grid_items, rounds, lr,
          seed, hosts, address, data_dir, redis_url, out: Path, markdown: bool, quiet: bool, dry_run: bool) -> None:
    """Run a grid over E, B, C and partition (and any run setting with --grid), one run per cell; finished cells
    are skipped, so an interrupted sweep continues where it stopped; a cell whose run fails (a NaN) is a result
    of the sweep, not the end of it. Ends with the report (and Table 2 beside the paper's)."""
    from fedactors.cli.run import forget_redis_variable
    from fedactors.results.report import format_table, format_table2, load_run
    from fedactors.results.sweep import load_sweep_toml, paper_table2_cells, parse_grid, plan_sweep

    forget_redis_variable()
    spec = load_sweep_toml(config_file) if config_file else {"run": {}}
    axes = {**spec.get("grid", {}), **parse_grid(grid_items)}
    if paper_table2:
        if axes:
            raise ConfigError("--paper-table2 is the paper's grid; --grid axes do not go with it")
        cells = paper_table2_cells()
    else:
        grid = {
            "epochs": epochs or spec.get("epochs"),
            "batch_sizes": batch_sizes or spec.get("batch_sizes"),
            "fracs": fracs or spec.get("fracs") or [0.1],
            "partitions": partitions or spec.get("partitions") or ["iid", "noniid"],
        }
        if not grid["epochs"] or not grid["batch_sizes"]:
            raise ConfigError("a sweep needs --epochs and --batch-sizes (or a --config file with them), or --paper-table2")
        cells = plan_sweep(grid["epochs"], grid["batch_sizes"], grid["fracs"], grid["partitions"], axes)
    run_settings = dict(spec["run"])
    overrides = {"rounds": rounds, "lr": lr, "seed": seed, "hosts": hosts, "address": address, "data_dir": data_dir}
    run_settings.update({k: v for k, v in overrides.items() if v is not None})
    plans = [(cell, cell.run_config(run_settings)) for cell in cells]  # every cell validated before any runs
    if dry_run:
        _sweep_plan(plans, out, redis_url)
        return
    mode = "quiet" if quiet else "auto"
    click.echo(f"sweep of {len(plans)} cells into {out}")
    with exit_on_interrupt():
        _run_cells(plans, out, redis_url, mode)
    summaries = [load_run(out / cell.name) for cell, _ in plans]
    click.echo()
    click.echo(format_table(summaries, markdown=markdown))
    if paper_table2:
        click.echo()
        click.echo(format_table2(summaries, markdown=markdown))


def _run_cells(plans: list, out: Path, redis_url: str | None, mode: str) -> None:
    """Each cell into its own run directory: finished ones skipped, interrupted ones resumed, the rest started.
    A cell whose run fails (a round that cannot be completed: a NaN) is that cell's result; the sweep goes on."""
    from fedactors.results.sweep import cell_is_complete

    for i, (cell, config) in enumerate(plans, 1):
        run_dir = out / cell.name
        run_id = f"{out.name}-{cell.name}"
        if cell_is_complete(run_dir, config):
            click.echo(f"[{i}/{len(plans)}] {cell.name}: complete, skipped")
            continue
        click.echo(f"[{i}/{len(plans)}] {cell.name}")
        try:
            _run_cell(run_id, run_dir, config, redis_url, mode)
        except RoundFailed as exc:  # a method that diverged here: a result, which the report shows as failed
            click.echo(f"[{i}/{len(plans)}] {cell.name}: failed: {exc}", err=True)


def _run_cell(run_id: str, run_dir: Path, config, redis_url: str | None, mode: str) -> None:
    """One cell: resumed where its store has the run, else started."""
    from fedactors import api
    from fedactors.results.outputs import RunDirectory

    if redis_url is not None or (run_dir / api.STORE_DIR).is_dir():
        # A data directory named now is the one read now (without it, a resume reads where the run read).
        changes = {"rounds": config.rounds, **({"data_dir": config.data_dir} if config.data_dir is not None else {})}
        try:
            api.continue_run(run_id, run_dir, redis_url, 30.0, changes, mode)
            return
        except ConfigError:
            if (run_dir / "run.json").exists() and RunDirectory(run_dir).run_id() != run_id:
                raise
    api.start(config, run_id, run_dir, redis_url, 30.0, mode)


def _sweep_plan(plans: list, out: Path, redis_url: str | None) -> None:
    """What a sweep would do, cell by cell: nothing is started or written (but a cell's embedded store is read)."""
    from fedactors.api import STORE_DIR, open_store
    from fedactors.results.sweep import cell_is_complete

    click.echo(f"sweep of {len(plans)} cells into {out} (dry run)")
    total = 0
    for i, (cell, config) in enumerate(plans, 1):
        run_dir, run_id = out / cell.name, f"{out.name}-{cell.name}"
        done_round = None
        if cell_is_complete(run_dir, config):
            state, todo = "finished", 0
        else:
            if redis_url is not None or (run_dir / STORE_DIR).is_dir():
                with open_store(redis_url, run_dir, 30.0) as (store, _):
                    info = store.info(run_id)
                    done_round = info.latest_round if info is not None else None
            todo = config.rounds - (done_round or 0)
            state = f"resumable after round {done_round}" if done_round else "new"
        total += todo
        click.echo(f"[{i}/{len(plans)}] {cell.name}: {state}; {todo} rounds to run -> {run_dir}")
    click.echo(f"{total} rounds in all")
