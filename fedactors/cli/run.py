"""`fedactors run`: a new run, or --resume one, with its checkpoint store and output directory."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import click
from click.core import ParameterSource

from fedactors.cli import cli
from fedactors.cli.progress import Renderer, make_renderer
from fedactors.config import AGGREGATORS, ATTACKS, EXPERIMENT_FIELDS, PARTITIONS, PRECISIONS, RunConfig, parse_batch_size, read_toml
from fedactors.errors import CheckpointError, ConfigError, FedActorsError
from fedactors.report import summarise

D = RunConfig()  # defaults, shown in --help
STORE_DIR = "checkpoints"  # the embedded Redis keeps its files in OUT/checkpoints
CONFIG_KEYS = {f.name for f in dataclasses.fields(RunConfig)}

REDIS_URL_VARIABLE = "FEDACTORS_REDIS_URL"  # keeps a password off the command line and out of shell history


def forget_redis_variable() -> None:
    """Once read, $FEDACTORS_REDIS_URL leaves the environment: Ray's processes (a local cluster's are
    this process's children) would otherwise inherit the password with it."""
    os.environ.pop(REDIS_URL_VARIABLE, None)


def redis_option(default_help: str):
    """--redis URL, also read from $FEDACTORS_REDIS_URL; `default_help` says what happens without either."""
    return click.option(
        "--redis", "redis_url", default=None, metavar="URL", envvar=REDIS_URL_VARIABLE, show_envvar=True,
        help="Checkpoint store: redis://[:PASSWORD@]HOST:PORT/DB, rediss://... or unix://PATH; put a URL with a "
        f"password in ${REDIS_URL_VARIABLE} rather than on the command line. Default: {default_help}",
    )


def load_config_file(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    """--config FILE: a TOML table of run settings, used as defaults that flags override."""
    if path is None:
        return None
    table = read_toml(path, f"--config {path}")
    table = table.get("run", table)  # a sweep file's [run] table works too
    table = {k.replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(table) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting {unknown[0]!r} (settings are the run flags, e.g. clients, frac, batch_size)")
    if "batch_size" in table:
        table["batch_size"] = str(table["batch_size"])
    ctx.default_map = {**(ctx.default_map or {}), **table}
    return path


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, is_eager=True, expose_value=False,
              callback=load_config_file, help="TOML file of settings (keys as the flags: clients, frac, batch_size, ...); flags override it.")
@click.option("--clients", type=int, default=D.clients, show_default=True, help="Number of clients K.")
@click.option("--frac", type=float, default=D.frac, show_default=True, help="Fraction C of clients sampled each round, in (0, 1].")
@click.option("--rounds", type=int, default=D.rounds, show_default=True, help="Communication rounds to run (on --resume: the new total).")
@click.option("--epochs", type=int, default=D.epochs, show_default=True, help="Local epochs E per round.")
@click.option("--batch-size", "batch_size", default=str(D.batch_size), show_default=True, help="Local minibatch size B, or 'inf' for full batch.")
@click.option("--lr", type=float, default=D.lr, show_default=True, help="Client SGD learning rate (no momentum, no weight decay).")
@click.option("--partition", type=click.Choice(PARTITIONS), default=D.partition, show_default=True, help="iid: 60000/K shuffled images each; noniid: 2 label-sorted shards each.")
@click.option("--seed", type=int, default=D.seed, show_default=True, help="Seeds partition, initial model, sampling and shuffling.")
@click.option("--hosts", type=int, default=None, help="Client host actors. Default: as many as the cluster's CPUs (and GPUs) allow.")
@click.option("--cpus-per-host", "cpus_per_host", type=float, default=D.cpus_per_host, show_default=True, help="Ray CPUs per client host; a CPU host runs that many torch threads (at least 1).")
@click.option("--gpus-per-host", "gpus_per_host", type=float, default=D.gpus_per_host, show_default=True, help="Ray GPUs per client host; fractions share a GPU (0.1: up to 10 hosts per GPU). Hosts with a GPU train on it.")
@click.option("--min-fit-fraction", "min_fit_fraction", type=float, default=D.min_fit_fraction, show_default=True, help="Accept a round once this fraction of the sampled clients returned, instead of retraining failed ones.")
@click.option("--round-timeout", "round_timeout", type=float, default=None, help="Seconds a round's training may take; clients still training then count as failed (their host is restarted).")
@click.option("--aggregator", type=click.Choice(AGGREGATORS), default=D.aggregator, show_default=True,
              help="How updates are combined: FedAvg's example-weighted mean, or the coordinate-wise median or trimmed mean.")
@click.option("--trim-fraction", "trim_fraction", type=float, default=D.trim_fraction, show_default=True,
              help="trimmed-mean: drop floor(F * m) of the m values at each end of every coordinate; in [0, 0.5).")
@click.option("--byzantine", type=int, default=D.byzantine, show_default=True,
              help="Faulty clients, chosen by the seed for the whole run, that send an --attack instead of their update.")
@click.option("--attack", type=click.Choice(ATTACKS), default=D.attack, show_default=True,
              help="What faulty clients send: sign-flip (update reversed, times --attack-scale), gaussian (noise of std --attack-scale) or nan.")
@click.option("--attack-scale", "attack_scale", type=float, default=D.attack_scale, show_default=True,
              help="sign-flip: factor on the reversed update; gaussian: standard deviation of the noise.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=D.precision, show_default=True,
              help="bf16: bfloat16 convolutions and matrix products with float32 master weights (faster on CPUs with bf16 instructions).")
@click.option("--address", default=None, help="Attach to an existing Ray cluster ('auto', HOST:PORT or ray://HOST:PORT) instead of starting a local one.")
@click.option("--data-dir", "data_dir", default=None, help="MNIST directory (torchvision layout). Default: $FEDACTORS_DATA, else the per-user cache; downloaded when absent.")
@click.option("--eval-every", "eval_every", type=int, default=D.eval_every, show_default=True, help="Evaluate the global model on the 10,000 test images every N rounds (and after the last).")
@click.option("--target", type=float, default=D.target, show_default=True, help="Test accuracy whose first crossing is reported as rounds-to-target.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Output directory for metrics.jsonl, run.json, weights.npy. Default: runs/RUN_ID.")
@redis_option("an embedded Redis server keeping its data in OUT/checkpoints.")
@click.option("--run-id", "run_id", default=None, help="Name of a new run (letters, digits, . _ -). Default: generated from the time.")
@click.option("--resume", "resume", default=None, metavar="RUN_ID", help="Continue RUN_ID from its newest valid checkpoint, with its stored configuration.")
@click.option("--checkpoint-every", "checkpoint_every", type=int, default=D.checkpoint_every, show_default=True, help="Checkpoint after every N rounds (and after the last).")
@click.option("--keep", type=int, default=D.keep, show_default=True, help="Checkpoints kept per run (the newest N rounds).")
@click.option("--store-retry-seconds", "store_retry_seconds", type=float, default=30.0, show_default=True, help="How long to retry an unreachable store mid-run before stopping (exit 3).")
@click.option("--quiet", "-q", is_flag=True, help="Print only warnings and the closing summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event on stdout: header, start, warning, round, summary "
              "(and interrupted, already_finished or dry_run where they happen).")
@click.option("--dry-run", "dry_run", is_flag=True, help="Print the resolved configuration and the planned resources, and start nothing.")
def run(out: Path | None, batch_size: str, redis_url: str | None, run_id: str | None, resume: str | None,
        store_retry_seconds: float, quiet: bool, as_json: bool, dry_run: bool, **flags: object) -> None:
    """Run FedAvg on MNIST (or --resume a run): a live progress bar in a terminal, a line per round elsewhere."""
    from fedactors.checkpoint import check_run_id

    forget_redis_variable()

    flags["batch_size"] = parse_batch_size(batch_size)
    if resume and run_id:
        raise ConfigError("--resume names the run to continue; drop --run-id")
    if quiet and as_json:
        raise ConfigError("--quiet and --json exclude each other")
    if not store_retry_seconds > 0:
        raise ConfigError(f"--store-retry-seconds must be positive, got {store_retry_seconds}")
    run_id = check_run_id(resume or run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2))
    out = out if out is not None else Path("runs") / run_id
    mode = "json" if as_json else "quiet" if quiet else "auto"
    if resume:
        _resume(run_id, out, redis_url, store_retry_seconds, flags, mode, dry_run)
        return
    _refuse_idle_flags(flags)
    config = RunConfig(**flags)  # type: ignore[arg-type]
    if dry_run:
        _dry_run(config, run_id, out, redis_url, mode)
        return
    _new_run(config, run_id, out, redis_url, store_retry_seconds, mode)


def _refuse_idle_flags(flags: dict) -> None:
    """A flag given for a setting that the rest of the command switches off is a mistake: say so."""
    ctx = click.get_current_context()
    given = {k for k in flags if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.DEFAULT_MAP)}
    if "trim_fraction" in given and flags["aggregator"] != "trimmed-mean":
        raise ConfigError(f"--trim-fraction applies to --aggregator trimmed-mean only, not {flags['aggregator']}")
    for name in ("attack", "attack_scale"):
        if name in given and flags["byzantine"] == 0:
            raise ConfigError(f"--{name.replace('_', '-')} needs --byzantine N (how many clients attack)")


def _new_run(config: RunConfig, run_id: str, out: Path, redis_url: str | None, retry: float, mode: str) -> None:
    from fedactors.experiment import check_cluster
    from fedactors.outputs import RunDirectory

    config = with_data_dir(config)
    run_dir = RunDirectory(out)
    run_dir.check_fresh()
    check_cluster(config.address)  # before anything is created
    with _open_store(redis_url, out, retry) as (store, url):
        if store.info(run_id) is not None:
            raise ConfigError(f"run {run_id} already exists in the store at {store.url}; continue it with --resume {run_id}")
        run_dir.check_no_checkpoints(store, embedded=redis_url is None)
        run_dir.create()
        _drive(config, run_id, run_dir, url, retry, None, make_renderer(mode, config), store.persistence_warning())
        store.mark_finished(run_id)


def with_data_dir(config: RunConfig) -> RunConfig:
    """`config` naming the data directory actually used: --data-dir, else $FEDACTORS_DATA, else the cache."""
    from fedactors.data import resolve_data_dir

    return dataclasses.replace(config, data_dir=str(resolve_data_dir(config.data_dir).absolute()))


def _resume(run_id: str, out: Path, redis_url: str | None, retry: float, flags: dict, mode: str, dry_run: bool) -> None:
    from fedactors.outputs import RunDirectory

    if redis_url is None and not (out / STORE_DIR).is_dir():
        raise ConfigError(f"no run {run_id} at {out} (no {out / STORE_DIR}); pass its --out DIR, or --redis URL")
    with _open_store(redis_url, out, retry) as (store, url):
        if store.info(run_id) is None:
            if RunDirectory(out).run_id() == run_id:
                raise ConfigError(f"run {run_id} in {out} stopped before its first checkpoint, so there is nothing to "
                                  "resume; start it again with the command that started it")
            raise ConfigError(f"no run {run_id} in the store at {store.url}")
        ckpt, skipped = store.latest(run_id)
        for bad in skipped:
            click.echo(f"warning: skipping round {bad.round}: {bad.reason}", err=True)
        if ckpt is None:
            raise CheckpointError(f"run {run_id} has no valid checkpoint in the store at {store.url}")
        config = _resumed_config(ckpt.config, ckpt.fingerprint, flags, run_id)
        if dry_run:
            _dry_run(config, run_id, out, redis_url, mode, resume_round=ckpt.round)
            return
        renderer = make_renderer(mode, config)
        run_dir = RunDirectory(out)
        run_dir.reopen(ckpt.history)
        if ckpt.round >= config.rounds:
            renderer.already_finished(run_id, ckpt.round)
            total = float(ckpt.extra.get("wall_seconds", 0.0))
            _finish(config, run_dir, ckpt.weights, ckpt.round, ckpt.history,
                    {"run_id": run_id, "wall_seconds": 0.0, "total_wall_seconds": total}, renderer)
            store.mark_finished(run_id)
            return
        _drive(config, run_id, run_dir, url, retry, ckpt, renderer, store.persistence_warning())
        store.mark_finished(run_id)


def _resumed_config(stored: dict, fingerprint: str, flags: dict, run_id: str) -> RunConfig:
    """The stored configuration, with the flags given on this command line that may change."""
    config = RunConfig.from_dict(stored)
    if config.fingerprint() != fingerprint:
        raise CheckpointError(f"checkpoint of run {run_id} does not match its own configuration (fingerprint differs)")
    ctx = click.get_current_context()
    chosen = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT_MAP)
    given = {k: v for k, v in flags.items() if ctx.get_parameter_source(k) in chosen}
    stored_dict = config.to_dict()
    for name in EXPERIMENT_FIELDS:
        if name in given and given[name] != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {_show(given[name])} differs from run {run_id}'s {_show(stored_dict[name])}; "
                "flags that change the experiment cannot change on --resume"
            )
    return with_data_dir(dataclasses.replace(config, **given))


def _show(value: object) -> str:
    return "inf" if value is None else str(value)


def _dry_run(config: RunConfig, run_id: str, out: Path, redis_url: str | None, mode: str, resume_round: int | None = None) -> None:
    """The resolved configuration and the resources the run would take; nothing is started or written."""
    from fedactors.checkpoint import mask_url
    from fedactors.experiment import plan_hosts

    from fedactors.data import missing_files

    config = with_data_dir(config)
    hosts, source = plan_hosts(config)
    data_present = not missing_files(Path(config.data_dir))
    plan = {
        "run_id": run_id, "out": str(out), "resume_after_round": resume_round,
        "data_dir": config.data_dir, "data_present": data_present,
        "store": mask_url(redis_url) if redis_url else f"embedded Redis in {out / STORE_DIR}",
        "hosts": hosts, "hosts_from": source, "cpus_per_host": config.cpus_per_host,
        "gpus_per_host": config.gpus_per_host, "threads_per_host": config.threads_per_host,
        "clients_per_round": config.clients_per_round, "rounds": config.rounds,
        "fingerprint": config.fingerprint(), "config": config.to_dict(),
    }
    if mode == "json":
        click.echo(json.dumps({"event": "dry_run", **plan}))
        return
    click.echo(json.dumps(config.to_dict(), indent=2))
    click.echo(
        f"would run {run_id}: {hosts} client hosts ({source}), each {config.cpus_per_host:g} CPU"
        f"{f' and {config.gpus_per_host:g} GPU' if config.gpus_per_host else ''} with {config.threads_per_host} torch "
        f"thread{'s' * (config.threads_per_host > 1)}; {config.clients_per_round} clients per round; rounds "
        f"{(resume_round or 0) + 1}..{config.rounds}; checkpoints in {plan['store']}; outputs in {out}"
    )
    click.echo(f"MNIST: {config.data_dir}/MNIST/raw ({'present' if data_present else 'absent: it would be downloaded there'})")


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


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by `signum` (SIGINT, SIGTERM or SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Interrupts:
    """Ctrl-C, SIGTERM and SIGHUP stop the run cleanly; each is remembered until the run stops.

    SIGTERM is what `kill`, Slurm, Kubernetes, systemd and `timeout` send to stop a job, and
    SIGHUP what a closed terminal sends: both are treated like Ctrl-C (status "interrupted",
    the resume command printed, exit 128 + the signal's number). The handler raises Interrupted
    (a KeyboardInterrupt) as Python's SIGINT handler does, and sets a flag that `check` turns
    back into Interrupted at the next event from the coordinator, so a swallowed exception
    cannot let the run finish. A signal ignored when the run starts (`nohup`, `... &` without
    job control) stays ignored. experiment._start_ray puts these handlers back after ray.init,
    which replaces the SIGTERM handler with one that exits on the spot.
    """

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Interrupts:
        for name in self.SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            current = signal.getsignal(signum)
            if current in (signal.default_int_handler, signal.SIG_DFL):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        raise Interrupted(signum)

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


def _drive(config: RunConfig, run_id: str, run_dir, store_url: str, retry: float, resume, out: Renderer,
           store_warning: str | None = None) -> None:
    """Run (or continue) the experiment, writing the run directory as events arrive.

    However it stops, run.json says how: finished, interrupted (a signal; the resume command is
    printed), or failed (a FedActorsError, or an unexpected error whose traceback goes to
    OUT/error.log; one line on stderr either way).
    """
    from fedactors import experiment
    from fedactors.errors import InternalError

    history: list[dict] = list(resume.history) if resume else []
    wall_before = float(resume.extra.get("wall_seconds", 0.0)) if resume else 0.0
    info: dict = {
        "run_id": run_id, "status": "running",
        "failures": sum(len(r.get("failures", [])) for r in history),
        "retried": sum(len(r.get("retried", [])) for r in history),
        "dropped": sum(len(r.get("dropped", [])) for r in history),
        "rejected": sum(len(r.get("rejected", [])) for r in history),
        "resumed_from_round": resume.round if resume else None,
        "rounds_completed": resume.round if resume else 0,
        "hosts_lost": {},
    }
    run_dir.write_run(config, info)
    started = time.perf_counter()
    out.header(run_id, str(run_dir.path), resume.round if resume else None)
    if store_warning:
        out.warning(store_warning)

    def on_event(event: dict) -> None:
        interrupts.check()
        if event["type"] == "start":
            hosts = event["hosts"]
            info["hosts"] = len(hosts)
            info["host_info"] = [{**h, "clients_trained": 0} for h in hosts]
            info["device_fallbacks"] = sum(1 for h in hosts if h["fallback"])
            out.start(hosts, event["clients_per_round"], resume.round if resume else 0)
        elif event["type"] == "warning":
            out.warning(event["message"])
        elif event["type"] == "round":
            info["rounds_completed"] = event["round"]  # so far; checkpointed up to here (or the last multiple)
            info["failures"] += len(event["failures"])
            info["retried"] += len(event["retried"])
            info["dropped"] += len(event["dropped"])
            info["rejected"] += len(event["rejected"])
            info["hosts_lost"].update({str(h): why for h, why in event["lost_hosts"].items()})
            for host in event["hosts"].values():
                if 0 <= host < len(info.get("host_info", [])):
                    info["host_info"][host]["clients_trained"] += 1
            if "startup_seconds" in event:
                info["startup_seconds"] = round(event["startup_seconds"], 3)
            if event["accuracy"] is not None:
                history.append(event)
                run_dir.append_metrics(event)
            out.round(event)
        run_dir.write_run(config, info)

    def wall() -> dict:
        part = time.perf_counter() - started
        return {"wall_seconds": round(part, 3), "total_wall_seconds": round(wall_before + part, 3)}

    def stop(status: str) -> None:
        out.close()
        info.update(status=status, **wall(), **summarise(history, config.target))
        run_dir.write_run(config, info)

    interrupts = _Interrupts()
    try:
        with interrupts:
            done = experiment.run(config, on_event, run_id=run_id, store_url=store_url, store_retry_seconds=retry,
                                  resume=resume, wall_seconds_before=wall_before)
            out.close()
            _finish(config, run_dir, done["weights"], done["round"], history, {**info, **wall()}, out)
    except KeyboardInterrupt:
        stop("interrupted")
        out.interrupted(f"fedactors run --resume {run_id} --out {run_dir.path}")
        # The signal remembered, not the exception's: Ray turns one raised inside ray.get into a plain KeyboardInterrupt.
        sys.exit(128 + (interrupts.signum or signal.SIGINT))
    except FedActorsError:
        stop("failed")
        raise
    except Exception as exc:
        stop("failed")
        log = run_dir.write_error("".join(traceback.format_exception(exc)))
        raise InternalError(f"unexpected {type(exc).__name__}: {_first_line(exc)} (traceback in {log})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _finish(config: RunConfig, run_dir, weights, round_done: int, history: list[dict], info: dict, out: Renderer) -> None:
    """Write weights.npy and the finished run.json (`info` carries the wall times), and show the summary."""
    run_dir.write_weights(weights)
    summary = summarise(history, config.target)
    run_dir.write_run(config, {**info, "status": "finished", "rounds_completed": round_done, **summary})
    out.summary(summary, info["wall_seconds"])




