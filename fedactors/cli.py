"""The `fedactors` command. Flags become a RunConfig; errors become one line and an exit status."""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

import click

from fedactors import __version__
from fedactors.config import PARTITIONS, RunConfig, parse_batch_size
from fedactors.errors import FedActorsError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fedactors")
def cli() -> None:
    """Federated learning on Ray: FedAvg on MNIST as in McMahan et al. 2017."""


D = RunConfig()  # defaults, shown in --help


@cli.command()
@click.option("--clients", type=int, default=D.clients, show_default=True, help="Number of clients K.")
@click.option("--frac", type=float, default=D.frac, show_default=True, help="Fraction C of clients sampled each round, in (0, 1].")
@click.option("--rounds", type=int, default=D.rounds, show_default=True, help="Communication rounds to run.")
@click.option("--epochs", type=int, default=D.epochs, show_default=True, help="Local epochs E per round.")
@click.option("--batch-size", "batch_size", default=str(D.batch_size), show_default=True, help="Local minibatch size B, or 'inf' for full batch.")
@click.option("--lr", type=float, default=D.lr, show_default=True, help="Client SGD learning rate (no momentum, no weight decay).")
@click.option("--partition", type=click.Choice(PARTITIONS), default=D.partition, show_default=True, help="iid: 60000/K shuffled images each; noniid: 2 label-sorted shards each.")
@click.option("--seed", type=int, default=D.seed, show_default=True, help="Seeds partition, initial model, sampling and shuffling.")
@click.option("--hosts", type=int, default=None, help="Client host actors (one CPU and one torch thread each). Default: one per CPU in the cluster.")
@click.option("--address", default=None, help="Attach to an existing Ray cluster ('auto', HOST:PORT or ray://HOST:PORT) instead of starting a local one.")
@click.option("--data-dir", "data_dir", default=None, help="MNIST directory (torchvision layout). Default: $FEDACTORS_DATA, else the per-user cache; downloaded when absent.")
@click.option("--eval-every", "eval_every", type=int, default=D.eval_every, show_default=True, help="Evaluate the global model on the 10,000 test images every N rounds (and after the last).")
@click.option("--target", type=float, default=D.target, show_default=True, help="Test accuracy whose first crossing is reported as rounds-to-target.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Output directory for metrics.jsonl, run.json, weights.npy. Default: runs/RUN_ID.")
def run(out: Path | None, batch_size: str, **flags: object) -> None:
    """Run FedAvg on MNIST, printing one line per round."""
    from fedactors import experiment
    from fedactors.outputs import RunDirectory, summarise

    config = RunConfig(batch_size=parse_batch_size(batch_size), **flags)  # type: ignore[arg-type]
    run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    run_dir = RunDirectory(out if out is not None else Path("runs") / run_id)
    run_dir.create()
    history: list[dict] = []
    info: dict = {"run_id": run_id, "status": "running", "failures": 0, "retried": 0}
    run_dir.write_run(config, info)
    started = time.perf_counter()
    echo = _Progress(config)
    echo.line(
        f"fedactors run {run_id}: K={config.clients} C={config.frac} (m={config.clients_per_round}) "
        f"E={config.epochs} B={'inf' if config.batch_size is None else config.batch_size} lr={config.lr} "
        f"{config.partition}, {config.rounds} rounds -> {run_dir.path}"
    )

    def on_event(event: dict) -> None:
        if event["type"] == "start":
            info["hosts"] = event["hosts"]
            echo.line(f"{event['hosts']} client hosts ready to start; {event['clients_per_round']} clients per round")
        elif event["type"] == "round":
            info["failures"] += len(event["failures"])
            info["retried"] += len(event["retried"])
            if "startup_seconds" in event:
                info["startup_seconds"] = round(event["startup_seconds"], 3)
            if event["accuracy"] is not None:
                history.append(event)
                run_dir.append_metrics(event)
            echo.round(event)

    try:
        done = experiment.run(config, on_event)
    except KeyboardInterrupt:
        info.update(status="interrupted", wall_seconds=round(time.perf_counter() - started, 3), **summarise(history, config.target))
        run_dir.write_run(config, info)
        echo.line(f"interrupted; results so far are in {run_dir.path}")
        sys.exit(130)
    except FedActorsError:
        info.update(status="failed", wall_seconds=round(time.perf_counter() - started, 3), **summarise(history, config.target))
        run_dir.write_run(config, info)
        raise
    run_dir.write_weights(done["weights"])
    summary = summarise(history, config.target)
    info.update(status="finished", rounds_completed=done["round"], wall_seconds=round(time.perf_counter() - started, 3), **summary)
    run_dir.write_run(config, info)
    reached = summary["rounds_to_target"]
    echo.line(
        f"best accuracy {summary['best_accuracy']:.4f} at round {summary['best_round']}; "
        f"target {config.target}: {'reached at round ' + str(reached) if reached else 'not reached'}; "
        f"{info['wall_seconds']:.1f} s in all"
    )


class _Progress:
    """One line per round: readable in a terminal and in a CI log alike."""

    def __init__(self, config: RunConfig) -> None:
        self.rounds = config.rounds
        self.width = len(str(config.rounds))

    def line(self, text: str) -> None:
        click.echo(text)

    def round(self, ev: dict) -> None:
        acc = "" if ev["accuracy"] is None else f"  acc {ev['accuracy']:.4f}  loss {ev['loss']:.4f}"
        extra = f"  retried {len(ev['retried'])}" if ev["retried"] else ""
        click.echo(
            f"round {ev['round']:>{self.width}}/{self.rounds}{acc}  train_loss {ev['train_loss']:.4f}  "
            f"{ev['round_seconds']:.2f} s (train {ev['train_seconds']:.2f}, eval {ev['eval_seconds']:.2f}){extra}"
        )


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
