"""The `fedactors` command. Flags become a RunConfig; errors become one line and an exit status."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
from click.core import ParameterSource

from fedactors import __version__
from fedactors.config import EXPERIMENT_FIELDS, PARTITIONS, RunConfig, parse_batch_size
from fedactors.errors import CheckpointError, ConfigError, FedActorsError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fedactors")
def cli() -> None:
    """Federated learning on Ray: FedAvg on MNIST as in McMahan et al. 2017."""


D = RunConfig()  # defaults, shown in --help
STORE_DIR = "checkpoints"  # the embedded Redis keeps its files in OUT/checkpoints

redis_option = click.option(
    "--redis", "redis_url", default=None, metavar="URL",
    help="Checkpoint store: redis://[:PASSWORD@]HOST:PORT/DB, rediss://... or unix://PATH. "
    "Default: an embedded Redis server keeping its data in OUT/checkpoints.",
)


@cli.command()
@click.option("--clients", type=int, default=D.clients, show_default=True, help="Number of clients K.")
@click.option("--frac", type=float, default=D.frac, show_default=True, help="Fraction C of clients sampled each round, in (0, 1].")
@click.option("--rounds", type=int, default=D.rounds, show_default=True, help="Communication rounds to run (on --resume: the new total).")
@click.option("--epochs", type=int, default=D.epochs, show_default=True, help="Local epochs E per round.")
@click.option("--batch-size", "batch_size", default=str(D.batch_size), show_default=True, help="Local minibatch size B, or 'inf' for full batch.")
@click.option("--lr", type=float, default=D.lr, show_default=True, help="Client SGD learning rate (no momentum, no weight decay).")
@click.option("--partition", type=click.Choice(PARTITIONS), default=D.partition, show_default=True, help="iid: 60000/K shuffled images each; noniid: 2 label-sorted shards each.")
@click.option("--seed", type=int, default=D.seed, show_default=True, help="Seeds partition, initial model, sampling and shuffling.")
@click.option("--hosts", type=int, default=None, help="Client host actors (one CPU and one torch thread each). Default: one per CPU in the cluster.")
@click.option("--cpus-per-host", "cpus_per_host", type=float, default=D.cpus_per_host, show_default=True, help="Ray CPUs per client host; a CPU host runs that many torch threads (at least 1).")
@click.option("--gpus-per-host", "gpus_per_host", type=float, default=D.gpus_per_host, show_default=True, help="Ray GPUs per client host; fractions share a GPU (0.1: up to 10 hosts per GPU). Hosts with a GPU train on it.")
@click.option("--min-fit-fraction", "min_fit_fraction", type=float, default=D.min_fit_fraction, show_default=True, help="Accept a round once this fraction of the sampled clients returned, instead of retraining failed ones.")
@click.option("--round-timeout", "round_timeout", type=float, default=None, help="Seconds a round's training may take; clients still training then count as failed (their host is restarted).")
@click.option("--address", default=None, help="Attach to an existing Ray cluster ('auto', HOST:PORT or ray://HOST:PORT) instead of starting a local one.")
@click.option("--data-dir", "data_dir", default=None, help="MNIST directory (torchvision layout). Default: $FEDACTORS_DATA, else the per-user cache; downloaded when absent.")
@click.option("--eval-every", "eval_every", type=int, default=D.eval_every, show_default=True, help="Evaluate the global model on the 10,000 test images every N rounds (and after the last).")
@click.option("--target", type=float, default=D.target, show_default=True, help="Test accuracy whose first crossing is reported as rounds-to-target.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Output directory for metrics.jsonl, run.json, weights.npy. Default: runs/RUN_ID.")
@redis_option
@click.option("--run-id", "run_id", default=None, help="Name of a new run (letters, digits, . _ -). Default: generated from the time.")
@click.option("--resume", "resume", default=None, metavar="RUN_ID", help="Continue RUN_ID from its newest valid checkpoint, with its stored configuration.")
@click.option("--checkpoint-every", "checkpoint_every", type=int, default=D.checkpoint_every, show_default=True, help="Checkpoint after every N rounds (and after the last).")
@click.option("--keep", type=int, default=D.keep, show_default=True, help="Checkpoints kept per run (the newest N rounds).")
@click.option("--store-retry-seconds", "store_retry_seconds", type=float, default=30.0, show_default=True, help="How long to retry an unreachable store mid-run before stopping (exit 3).")
def run(out: Path | None, batch_size: str, redis_url: str | None, run_id: str | None, resume: str | None,
        store_retry_seconds: float, **flags: object) -> None:
    """Run FedAvg on MNIST (or --resume a run), printing one line per round."""
    from fedactors.checkpoint import check_run_id

    flags["batch_size"] = parse_batch_size(batch_size)
    if resume and run_id:
        raise ConfigError("--resume names the run to continue; drop --run-id")
    if not store_retry_seconds > 0:
        raise ConfigError(f"--store-retry-seconds must be positive, got {store_retry_seconds}")
    run_id = check_run_id(resume or run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2))
    out = out if out is not None else Path("runs") / run_id
    if resume:
        _resume(run_id, out, redis_url, store_retry_seconds, flags)
    else:
        _new_run(RunConfig(**flags), run_id, out, redis_url, store_retry_seconds)  # type: ignore[arg-type]


def _new_run(config: RunConfig, run_id: str, out: Path, redis_url: str | None, retry: float) -> None:
    from fedactors.experiment import check_reachable
    from fedactors.outputs import RunDirectory

    run_dir = RunDirectory(out)
    run_dir.check_fresh()
    check_reachable(config.address)  # before anything is created
    with _open_store(redis_url, out, retry) as (store, url):
        if store.info(run_id) is not None:
            raise ConfigError(f"run {run_id} already exists in the store at {store.url}; continue it with --resume {run_id}")
        run_dir.create()
        _drive(config, run_id, run_dir, url, retry, resume=None)
        store.mark_finished(run_id)


def _resume(run_id: str, out: Path, redis_url: str | None, retry: float, flags: dict) -> None:
    from fedactors.outputs import RunDirectory

    if redis_url is None and not (out / STORE_DIR).is_dir():
        raise ConfigError(f"no run {run_id} at {out} (no {out / STORE_DIR}); pass its --out DIR, or --redis URL")
    with _open_store(redis_url, out, retry) as (store, url):
        if store.info(run_id) is None:
            raise ConfigError(f"no run {run_id} in the store at {store.url}")
        ckpt, skipped = store.latest(run_id)
        for bad in skipped:
            click.echo(f"warning: skipping round {bad.round}: {bad.reason}", err=True)
        if ckpt is None:
            raise CheckpointError(f"run {run_id} has no valid checkpoint in the store at {store.url}")
        config = _resumed_config(ckpt.config, ckpt.fingerprint, flags, run_id)
        run_dir = RunDirectory(out)
        run_dir.reopen(ckpt.history)
        if ckpt.round >= config.rounds:
            _finish(config, run_dir, ckpt.weights, ckpt.round, ckpt.history, {"run_id": run_id}, time.perf_counter())
            store.mark_finished(run_id)
            click.echo(f"run {run_id} already finished: {ckpt.round} of {config.rounds} rounds are done; nothing to do")
            return
        click.echo(f"resuming run {run_id} after round {ckpt.round}")
        _drive(config, run_id, run_dir, url, retry, resume=ckpt)
        store.mark_finished(run_id)


def _resumed_config(stored: dict, fingerprint: str, flags: dict, run_id: str) -> RunConfig:
    """The stored configuration, with the flags given on this command line that may change."""
    config = RunConfig.from_dict(stored)
    if config.fingerprint() != fingerprint:
        raise CheckpointError(f"checkpoint of run {run_id} does not match its own configuration (fingerprint differs)")
    ctx = click.get_current_context()
    given = {k: v for k, v in flags.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    stored_dict = config.to_dict()
    for name in EXPERIMENT_FIELDS:
        if name in given and given[name] != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {_show(given[name])} differs from run {run_id}'s {_show(stored_dict[name])}; "
                "flags that change the experiment cannot change on --resume"
            )
    return dataclasses.replace(config, **given)


def _show(value: object) -> str:
    return "inf" if value is None else str(value)


@contextlib.contextmanager
def _open_store(redis_url: str | None, out: Path, retry: float) -> Iterator[tuple]:
    """The checkpoint store, checked: a given URL, or the embedded server under OUT."""
    from fedactors.checkpoint import RedisStore
    from fedactors.embedded_redis import EmbeddedRedis

    with contextlib.ExitStack() as stack:
        url = redis_url or stack.enter_context(EmbeddedRedis(out / STORE_DIR)).url
        store = stack.enter_context(RedisStore(url, retry_seconds=retry))
        store.check()
        yield store, url


def _drive(config: RunConfig, run_id: str, run_dir, store_url: str, retry: float, resume) -> None:
    """Run (or continue) the experiment, writing the run directory as events arrive."""
    from fedactors import experiment
    from fedactors.outputs import summarise

    history: list[dict] = list(resume.history) if resume else []
    info: dict = {
        "run_id": run_id, "status": "running",
        "failures": sum(len(r.get("failures", [])) for r in history),
        "retried": sum(len(r.get("retried", [])) for r in history),
        "resumed_from_round": resume.round if resume else None,
    }
    run_dir.write_run(config, info)
    started = time.perf_counter()
    echo = _Progress(config)
    echo.line(
        f"fedactors run {run_id}: K={config.clients} C={config.frac} (m={config.clients_per_round}) "
        f"E={config.epochs} B={_show(config.batch_size)} lr={config.lr} {config.partition}, "
        f"{config.rounds} rounds -> {run_dir.path}"
    )

    def on_event(event: dict) -> None:
        if event["type"] == "start":
            hosts = event["hosts"]
            info["hosts"] = len(hosts)
            info["host_info"] = [{**h, "clients_trained": 0} for h in hosts]
            info["device_fallbacks"] = sum(1 for h in hosts if h["fallback"])
            nodes = len({h.get("node_id") for h in hosts})
            echo.line(f"{len(hosts)} client hosts on {nodes} node{'s' * (nodes > 1)}; {event['clients_per_round']} clients per round")
            for h in hosts:
                if h["fallback"]:
                    echo.line(f"warning: host {h['host']}: {h['fallback']}")
            run_dir.write_run(config, info)
        elif event["type"] == "round":
            info["failures"] += len(event["failures"])
            info["retried"] += len(event["retried"])
            info["dropped"] = info.get("dropped", 0) + len(event["dropped"])
            for host in event["hosts"].values():
                if 0 <= host < len(info.get("host_info", [])):
                    info["host_info"][host]["clients_trained"] += 1
            if "startup_seconds" in event:
                info["startup_seconds"] = round(event["startup_seconds"], 3)
            if event["accuracy"] is not None:
                history.append(event)
                run_dir.append_metrics(event)
            echo.round(event)
            run_dir.write_run(config, info)

    def stop(status: str) -> None:
        info.update(status=status, wall_seconds=round(time.perf_counter() - started, 3), **summarise(history, config.target))
        run_dir.write_run(config, info)

    try:
        done = experiment.run(config, on_event, run_id=run_id, store_url=store_url, store_retry_seconds=retry, resume=resume)
    except KeyboardInterrupt:
        stop("interrupted")
        echo.line(f"interrupted; continue with: fedactors run --resume {run_id} --out {run_dir.path}")
        sys.exit(130)
    except FedActorsError:
        stop("failed")
        raise
    _finish(config, run_dir, done["weights"], done["round"], history, info, started)


def _finish(config: RunConfig, run_dir, weights, round_done: int, history: list[dict], info: dict, started: float) -> None:
    """Write weights.npy and the finished run.json, and print the summary."""
    from fedactors.outputs import summarise

    run_dir.write_weights(weights)
    summary = summarise(history, config.target)
    info = {**info, "status": "finished", "rounds_completed": round_done,
            "wall_seconds": round(time.perf_counter() - started, 3), **summary}
    run_dir.write_run(config, info)
    if summary["best_accuracy"] is None:
        return
    reached = summary["rounds_to_target"]
    click.echo(
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
        extra += f"  dropped {len(ev['dropped'])}" if ev["dropped"] else ""
        for failure in ev["failures"]:
            click.echo(f"  failed: {failure}")
        ckpt = "" if ev.get("checkpoint_seconds") is None else f", checkpoint {ev['checkpoint_seconds']:.2f}"
        click.echo(
            f"round {ev['round']:>{self.width}}/{self.rounds}{acc}  train_loss {ev['train_loss']:.4f}  "
            f"{ev['round_seconds']:.2f} s (train {ev['train_seconds']:.2f}, eval {ev['eval_seconds']:.2f}{ckpt}){extra}"
        )


@cli.group()
def runs() -> None:
    """List, show and remove checkpointed runs."""


runs_dir_option = click.option(
    "--runs-dir", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
    show_default=True, help="Where run directories are (for the embedded store, used when --redis is not given).",
)


def _stores(redis_url: str | None, runs_dir: Path, run_id: str | None = None) -> Iterator[tuple]:
    """(store, where) for --redis, or for the embedded store of each run directory under runs_dir."""
    if redis_url:
        with _open_store(redis_url, runs_dir, 30.0) as (store, _):
            yield store, store.url
        return
    # A run's directory is runs/RUN_ID unless it was given --out: look there first, then everywhere.
    dirs = sorted(p.parent for p in runs_dir.glob(f"*/{STORE_DIR}"))
    if run_id and runs_dir / run_id in dirs:
        dirs.remove(runs_dir / run_id)
        dirs.insert(0, runs_dir / run_id)
    for d in dirs:
        with _open_store(None, d, 30.0) as (store, _):
            yield store, str(d)


@runs.command("list")
@redis_option
@runs_dir_option
def runs_list(redis_url: str | None, runs_dir: Path) -> None:
    """One line per run: id, status, newest round, configuration."""
    rows = [info for store, _ in _stores(redis_url, runs_dir) for info in store.runs()]
    if not rows:
        click.echo("no runs")
        return
    click.echo(f"{'run id':<28} {'status':<9} {'round':>6}  configuration")
    for info in rows:
        c = info.config
        click.echo(
            f"{info.run_id:<28} {info.status:<9} {str(info.latest_round):>6}  "
            f"{c.get('partition')} K={c.get('clients')} C={c.get('frac')} E={c.get('epochs')} "
            f"B={c.get('batch_size')} lr={c.get('lr')} seed={c.get('seed')} rounds={c.get('rounds')}"
        )


@runs.command("show")
@click.argument("run_id")
@redis_option
@runs_dir_option
def runs_show(run_id: str, redis_url: str | None, runs_dir: Path) -> None:
    """Everything the store knows of RUN_ID."""
    import json

    from fedactors.checkpoint import mask_url

    for store, where in _stores(redis_url, runs_dir, run_id):
        info = store.info(run_id)
        if info is not None:
            ckpt, skipped = store.latest(run_id)
            best = max((r["accuracy"] for r in ckpt.history), default=None) if ckpt else None
            click.echo(json.dumps({
                "run_id": run_id, "store": where, "status": info.status, "latest_round": info.latest_round,
                "rounds_kept": list(info.rounds), "corrupt_rounds": [b.round for b in skipped],
                "best_accuracy": best, "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created)),
                "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.updated)),
                "fingerprint": info.fingerprint, "config": info.config,
            }, indent=2))
            return
    raise ConfigError(f"no run {run_id} in {'the store at ' + mask_url(redis_url) if redis_url else runs_dir}")


@runs.command("rm")
@click.argument("run_id")
@redis_option
@runs_dir_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def runs_rm(run_id: str, redis_url: str | None, runs_dir: Path, yes: bool) -> None:
    """Delete RUN_ID's checkpoints from the store (its output files stay)."""
    from fedactors.checkpoint import mask_url

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
