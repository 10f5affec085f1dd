"""The Python API: run an experiment from a task and settings, or resume one; `fedactors run` is a face over it.

    import fedactors
    result = fedactors.run("mnist-2nn", clients=100, frac=0.1, partition="iid", epochs=1, batch_size=10,
                           rounds=50, out="runs/2nn")
    result.history[-1]["accuracy"], result.weights, result.run_dir
    fedactors.resume(result.run_id, out="runs/2nn", rounds=100)   # bit-exact, as from the command line

Both write what the command line writes (the run directory, the checkpoints, the same events),
and end in the same states: a RunResult for a finished run; FedActorsError subclasses for bad
input (ConfigError, DataError, ...) and failures (RoundFailed, StoreUnavailable), the run
marked failed; Interrupted (a KeyboardInterrupt) after Ctrl-C, SIGTERM or SIGHUP, the run
marked interrupted. `task` is a built-in name, "module:attr", "file.py:attr" or a Task object
(a Task object is not recorded anywhere a later process could import it from: resume such a
run from Python, passing the same task again). `progress` is "auto" (a live bar in a terminal,
else a line per round), "plain", "quiet", "json" or a fedactors.results.progress.Renderer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedactors.callbacks import CallbackError, Hooks
from fedactors.config import (DEFAULTED_EXPERIMENT_FIELDS, EXPERIMENT_FIELDS, OPTIONAL_EXPERIMENT_FIELDS, RunConfig,
                              natural_clients, parse_batch_size, refuse_idle_settings)
from fedactors.errors import CheckpointError, ConfigError, FedActorsError, InternalError, first_line
from fedactors.runtime.interrupts import Interrupts
from fedactors.messages import metrics_fields
from fedactors.results.outputs import RunDirectory, resume_command
from fedactors.results.progress import Renderer, make_renderer
from fedactors.results.report import summarise
from fedactors.task import DEFAULT_TASK, Task, with_absolute_paths

STORE_DIR = "checkpoints"  # the embedded Redis keeps its files in OUT/checkpoints


@dataclass(frozen=True)
class RunResult:
    """A finished run: what its directory holds, in memory."""

    run_id: str
    run_dir: Path
    history: list[dict]  # one metrics row per evaluated round (as in metrics.jsonl)
    weights: np.ndarray  # the final global weights, flat float32 (as in weights.npy)
    info: dict  # run.json

    @property
    def summary(self) -> dict:
        return {k: self.info.get(k) for k in ("best_accuracy", "best_round", "final_accuracy", "rounds_to_target")}


def new_run_id() -> str:
    import secrets

    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def run(task: str | Task = DEFAULT_TASK, *, config: RunConfig | None = None, out: str | Path | None = None,
        run_id: str | None = None, redis: str | None = None, progress: str | Renderer = "auto",
        store_retry_seconds: float = 30.0, strategy: object = None, callbacks: Iterable[object] | None = None,
        **settings: object) -> RunResult:
    """Run a new experiment to its last round: `config`, or RunConfig(**settings), with `task`.

    `strategy`: a built-in's name or an import spec (as --strategy), or a Strategy object of your own.
    `callbacks`: objects with hooks called at run start, each evaluation, checkpoint and round's end, and run end
    (fedactors.callbacks); one that raises stops the run (CallbackError), resumable.
    As on the command line, RAY_ADDRESS stands in for `address` (as under `ray job submit`); a store's URL
    is passed as `redis` (the command line's FEDACTORS_REDIS_URL is not read here)."""
    from fedactors.store.checkpoint import check_run_id
    from fedactors.strategy import BUILTIN_CLASSES, OBJECT_PREFIX

    if config is not None and settings:
        raise ConfigError("pass a RunConfig or settings, not both")
    refuse_unknown_settings(settings)
    hooks = Hooks(callbacks)
    spec = task.name if isinstance(task, Task) else with_absolute_paths({"task": task})["task"]
    strategy_object = strategy if strategy is not None and not isinstance(strategy, str) else None
    if isinstance(strategy_object, BUILTIN_CLASSES):
        raise ConfigError(f"strategy={type(strategy_object).__name__}(...): pass a built-in strategy by its name and its "
                          f"settings, e.g. strategy={strategy_object.name!r} with its own keywords (mu=..., clip=...), "
                          "so that its clients and sampling follow it")
    if strategy is not None:
        settings["strategy"] = f"{OBJECT_PREFIX}{strategy.name}" if strategy_object is not None else strategy
    if not (isinstance(store_retry_seconds, (int, float)) and store_retry_seconds > 0):
        raise ConfigError(f"store_retry_seconds must be positive, got {store_retry_seconds!r}")
    if config is None:
        if "batch_size" in settings:  # "inf" as on the command line
            settings["batch_size"] = parse_batch_size(settings["batch_size"], "batch_size")
        refuse_idle_settings(set(settings), {**RunConfig().to_dict(), **settings})
        settings = natural_clients(settings)
        settings.setdefault("address", os.environ.get("RAY_ADDRESS") or None)
        settings = with_absolute_paths(settings)
    config = config if config is not None else RunConfig(task=spec, **settings)  # type: ignore[arg-type]
    if config.task != spec:
        config = dataclasses.replace(config, task=spec)
    run_id = check_run_id(run_id or new_run_id())
    out = Path(out) if out is not None else Path("runs") / run_id
    return start(config, run_id, out, redis, store_retry_seconds, progress, task_object=_object(task),
                 strategy_object=strategy_object, hooks=hooks)


def resume(run_id: str, *, out: str | Path | None = None, redis: str | None = None, task: Task | None = None,
           strategy: object = None, progress: str | Renderer = "auto", store_retry_seconds: float = 30.0,
           callbacks: Iterable[object] | None = None, **changes: object) -> RunResult:
    """Continue `run_id` from its newest valid checkpoint; `changes` may set what does not change the experiment.

    A run given a Task or Strategy object is resumed with the same objects again; `callbacks` are not stored
    either: pass them again (a run already finished calls on_run_start and on_run_end only, so that a tracker
    given now catches up on its rounds)."""
    from fedactors.store.checkpoint import check_run_id

    refuse_unknown_settings(changes)
    hooks = Hooks(callbacks)
    run_id = check_run_id(run_id)
    out = Path(out) if out is not None else Path("runs") / run_id
    changes = with_absolute_paths(changes)
    return continue_run(run_id, out, redis, store_retry_seconds, changes, progress, task_object=task,
                        strategy_object=strategy, hooks=hooks)


# Command-line flags that are not settings, as a newcomer passes them to run() or resume(): what to write instead.
API_SPELLING = {"quiet": 'quiet output is progress="quiet"', "q": 'quiet output is progress="quiet"',
                "json": 'JSON events are progress="json"', "as_json": 'JSON events are progress="json"',
                "resume": "resuming is fedactors.resume(run_id, ...)"}


def refuse_unknown_settings(settings: dict) -> None:
    """A keyword that is no RunConfig field is a ConfigError naming it (and what to write instead, where the
    command line has a flag of that name), not Python's TypeError from deep inside."""
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(RunConfig)} - {"task"})
    if unknown:
        instead = "".join(f"; {API_SPELLING[name]}" for name in unknown if name in API_SPELLING)
        raise ConfigError(f"unknown settings: {', '.join(unknown)} (see fedactors.RunConfig){instead}")


def _object(task: str | Task) -> Task | None:
    return task if isinstance(task, Task) else None


def with_data_dir(config: RunConfig) -> RunConfig:
    """`config` naming the data directory actually used: --data-dir, else $FEDACTORS_DATA, else the cache."""
    from fedactors.data.mnist import resolve_data_dir

    return dataclasses.replace(config, data_dir=str(resolve_data_dir(config.data_dir).absolute()))


@contextlib.contextmanager
def open_store(redis_url: str | None, out: Path, retry: float) -> Iterator[tuple]:
    """(store, url), checked: a given URL, or the embedded server under OUT."""
    from fedactors.store.checkpoint import RedisStore
    from fedactors.store.embedded_redis import EmbeddedRedis

    with contextlib.ExitStack() as stack:
        try:
            url = redis_url or stack.enter_context(EmbeddedRedis(out / STORE_DIR)).url
        except OSError as exc:
            if not _under(exc.filename, out):
                raise
            # A read-only or full file system, or a directory not ours: a bad path like any other, one line.
            raise ConfigError(f"{out / STORE_DIR} cannot be written (the embedded checkpoint store keeps its files "
                              f"there): {exc.strerror}") from None
        store = stack.enter_context(RedisStore(url, retry_seconds=retry))
        store.check()
        yield store, url


def _under(filename: object, directory: Path) -> bool:
    """Whether an OSError's `filename` is `directory` or inside it."""
    if not isinstance(filename, (str, os.PathLike)):
        return False
    return Path(directory).absolute() in (Path(filename).absolute(), *Path(filename).absolute().parents)


def start(config: RunConfig, run_id: str, out: Path, redis_url: str | None, retry: float,
          progress: str | Renderer, task_object: Task | None = None, strategy_object: object = None,
          hooks: Hooks | None = None) -> RunResult:
    """A new run: checks the directory, the cluster and the store before anything is written."""
    config = with_data_dir(config)
    run_dir = RunDirectory(out)
    run_dir.check_fresh()
    _check_runnable(config, task_object, strategy_object)
    privacy = dp_preflight(config, task_object)
    with open_store(redis_url, out, retry) as (store, url):
        if store.info(run_id) is not None:
            raise ConfigError(f"run {run_id} already exists in the store at {store.url}; continue it with --resume {run_id}")
        run_dir.check_no_checkpoints(store, embedded=redis_url is None)
        run_dir.create()
        try:
            result = _drive(config, run_id, run_dir, url, retry, None, _renderer(progress, config),
                            store.persistence_warning(), task_object, strategy_object, privacy, hooks)
            store.mark_finished(run_id)
        finally:
            run_dir.release()
        return result


def _check_runnable(config: RunConfig, task_object: Task | None, strategy_object: object) -> None:
    """A task or strategy that cannot be had, or a cluster that is not there or refuses: one line, before
    anything of the run is written."""
    from fedactors.data.registry import load_task
    from fedactors.runtime.experiment import check_cluster
    from fedactors.strategy import make_strategy

    if task_object is None:
        load_task(config.task)
    if strategy_object is None:
        make_strategy(config)
    check_cluster(config.address)


def dp_preflight(config: RunConfig, task_object: Task | None = None):
    """DP-FedAvg's pre-flight (fedactors.privacy.Preflight) from a model built here, or None for other strategies;
    with --strict-dp-check, a ConfigError when the noise on the average outweighs the clip."""
    if not config.private or config.clients is None:  # natural: K is known once the data is read
        return None
    from fedactors.data.registry import load_task
    from fedactors.runtime.experiment import model_weights
    from fedactors.privacy import preflight

    check = preflight(config, model_weights(task_object if task_object is not None else load_task(config.task)))
    warning = check.warning()
    if warning and config.strict_dp_check:
        raise ConfigError(f"--strict-dp-check: {warning.removesuffix(' (--strict-dp-check makes this an error)')}")
    return check


def continue_run(run_id: str, out: Path, redis_url: str | None, retry: float, changes: dict,
                 progress: str | Renderer, task_object: Task | None = None, strategy_object: object = None,
                 hooks: Hooks | None = None) -> RunResult:
    """Resume `run_id` from its newest checkpoint that verifies, with `changes` to what may change.

    The directory is written only once the cluster, the task and the strategy are there: a resume
    refused before its first round leaves run.json and metrics.jsonl as it found them."""
    run_dir = RunDirectory(out)
    other = run_dir.run_id()
    if other is not None and other != run_id:
        raise ConfigError(f"--out {out} holds run {other}, not {run_id}: resume a run into its own directory "
                          "(or a new one)")
    if redis_url is None and not (out / STORE_DIR).is_dir():
        raise ConfigError(f"no run {run_id} at {out} (no {out / STORE_DIR}); pass its --out DIR, or --redis URL")
    with open_store(redis_url, out, retry) as (store, url):
        ckpt, config, skipped = latest(store, run_id, out, changes)
        _check_runnable(config, task_object, strategy_object)
        privacy = dp_preflight(config, task_object) if ckpt.round < config.rounds else None
        renderer = _renderer(progress, config)
        for bad in skipped:
            renderer.warning(f"skipping round {bad.round}: {bad.reason}")
        run_dir.lock()  # a run still writing here (resumed twice at once) is not written over
        try:
            before = run_dir.snapshot()
            run_dir.reopen(ckpt.history)
            if ckpt.round >= config.rounds:
                renderer.already_finished(run_id, ckpt.round)
                # What run.json said of this run (its identity, partition, hosts, wall time to its last
                # write) stays: nothing ran to replace it.
                earlier = run_dir.info()
                kept = {k: v for k, v in earlier.items() if k != "config"} if earlier.get("fingerprint") == ckpt.fingerprint else {}
                total = float(kept.get("total_wall_seconds", ckpt.extra.get("wall_seconds", 0.0)))
                info = {**kept, "run_id": run_id, "fingerprint": ckpt.fingerprint, "wall_seconds": 0.0,
                        "total_wall_seconds": total}
                lower = kept.get("target_lower", config.target_metric == "loss")  # the task said so when it ran
                if hooks is not None:  # nothing runs, but a tracker given now may lack rounds: it catches up here
                    hooks.call("on_run_start", {"run_id": run_id, "run_dir": str(run_dir.path),
                                                "config": config.to_dict(), "resumed_from_round": ckpt.round},
                               " as the finished run was resumed")
                result = _finish(config, run_dir, ckpt.weights, ckpt.round, ckpt.history, info, renderer, lower)
                if hooks is not None:
                    hooks.call("on_run_end", {"config": config.to_dict(), **result.info}, " (the run itself finished)")
            else:
                try:
                    result = _drive(config, run_id, run_dir, url, retry, ckpt, renderer, store.persistence_warning(),
                                    task_object, strategy_object, privacy, hooks)
                except FedActorsError:
                    if (run_dir.rounds_completed() or 0) <= ckpt.round:  # it never got to run (Ray did not start...)
                        run_dir.restore(before)
                    raise
            store.mark_finished(run_id)
        finally:
            run_dir.release()
        return result


def latest(store, run_id: str, out: Path, changes: dict) -> tuple:
    """(checkpoint, the configuration to continue with, rounds skipped as corrupt); ConfigError if there is none."""
    if store.info(run_id) is None:
        run_dir = RunDirectory(out)
        if run_dir.run_id() == run_id:
            stopped = f"run {run_id} in {out} stopped before its first checkpoint, so there is nothing to resume"
            if run_dir.has_rows() or run_dir.weights_path.exists():
                # Rounds it evaluated are results, never overwritten (check_fresh): the command that started it
                # would be refused here.
                raise ConfigError(f"{stopped}; its evaluated rounds stay in {out}: start it again with another --out")
            # No result in it: check_fresh lets the same command use it again.
            raise ConfigError(f"{stopped}; start it again with the command that started it")
        raise ConfigError(f"no run {run_id} in the store at {store.url}")
    ckpt, skipped = store.latest(run_id)
    if ckpt is None:
        raise CheckpointError(f"run {run_id} has no valid checkpoint in the store at {store.url}")
    return ckpt, resumed_config(ckpt, changes, run_id), skipped


def resumed_config(ckpt, changes: dict, run_id: str) -> RunConfig:
    """The checkpoint's configuration with `changes` to what may change; the rest must equal the stored values."""
    saved = dict(ckpt.config)
    # A run checkpointed before --accountant reported RDP's epsilon: it goes on doing so (the new default is PLD's).
    saved.setdefault("accountant", "rdp")
    try:
        config = RunConfig.from_dict(saved)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint of run {run_id} holds a configuration this fedactors does not read ({exc}); "
                              "finish the run with the fedactors that started it") from None
    identity = ckpt.extra.get("identity")
    if not isinstance(identity, dict) or config.fingerprint(identity) != ckpt.fingerprint:
        raise CheckpointError(f"checkpoint of run {run_id} does not match its own configuration (fingerprint differs; "
                              "a checkpoint of an earlier fedactors is resumed by that version)")
    stored = config.to_dict()
    for name in (*EXPERIMENT_FIELDS, *OPTIONAL_EXPERIMENT_FIELDS, *DEFAULTED_EXPERIMENT_FIELDS):
        if name in changes and changes[name] != getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {_show(changes[name])} differs from run {run_id}'s {_show(stored[name])}; "
                "flags that change the experiment cannot change on --resume"
            )
    if config.lr_schedule.startswith("cosine") and "rounds" in changes and changes["rounds"] != config.rounds:
        raise ConfigError(f"--rounds {changes['rounds']} differs from run {run_id}'s {config.rounds}: its --lr-schedule "
                          f"{config.lr_schedule} decays over them, so they cannot change on --resume")
    if "accountant" in changes and changes["accountant"] != config.accountant:
        raise ConfigError(f"--accountant {changes['accountant']} differs from run {run_id}'s {config.accountant}, which "
                          "counted the epsilon it has reported so far; a resumed run keeps its accountant")
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(RunConfig)})
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}")
    config = with_data_dir(dataclasses.replace(config, **changes))
    if config.private and config.target_epsilon is not None and ckpt.round > 0:
        from fedactors.strategy import dp_epsilon

        spent = dp_epsilon(config.frac, config.noise_multiplier, ckpt.round, config.delta, config.accountant)
        if spent > config.target_epsilon:
            raise ConfigError(f"run {run_id} has already spent epsilon {spent:.3f} (delta {config.delta:g}) in "
                              f"{ckpt.round} rounds, over --target-epsilon {config.target_epsilon:g}")
    return config


def _show(value: object) -> str:
    return "inf" if value is None else str(value)


def _renderer(progress: str | Renderer, config: RunConfig) -> Renderer:
    return progress if isinstance(progress, Renderer) else make_renderer(progress, config)


def _drive(config: RunConfig, run_id: str, run_dir: RunDirectory, store_url: str, retry: float, resume,
           out: Renderer, store_warning: str | None, task_object: Task | None, strategy_object: object,
           privacy=None, hooks: Hooks | None = None) -> RunResult:
    """Run (or continue) the experiment, writing the run directory as events arrive, then calling `hooks`.

    However it stops, run.json says how: finished, interrupted (a signal, or stdout closed, as
    SIGPIPE; the resume command is shown, Interrupted raised), or failed (a FedActorsError, raised; or an unexpected error,
    whose traceback goes to OUT/error.log, raised as InternalError).
    """
    from fedactors.runtime import experiment

    hooks = hooks if hooks is not None else Hooks(None)
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
    if privacy is not None:  # DP-FedAvg's pre-flight (dp_preflight): what the noise does, before round 1
        out.privacy(privacy)
    if store_warning:
        out.warning(store_warning)

    lower = config.target_metric == "loss"  # the task's say on its own metrics comes with the identity event
    owners: list | None = None

    def stop_if_output_closed() -> None:
        # `| head` has what it wanted: stop as a signal would, resumable, rather than fail on the next write.
        if out.output_closed:
            interrupts.stop(signal.SIGPIPE)

    def on_event(event: dict) -> None:
        nonlocal config, lower, owners
        interrupts.check()
        stop_if_output_closed()
        if event["type"] == "identity":
            owners = event.get("owners")  # a natural partition's owner ids, for clients.jsonl
            info.update(fingerprint=event["fingerprint"], identity=event["identity"], partition=event["partition"])
            lower = event.get("target_lower", lower)
            if config.clients is None:  # --partition natural: run.json records the clients the data gave
                config = dataclasses.replace(config, clients=event["clients"])
        elif event["type"] == "start":
            hosts = event["hosts"]
            info["hosts"] = len(hosts)
            info["host_info"] = [{**h, "clients_trained": 0} for h in hosts]
            info["device_fallbacks"] = sum(1 for h in hosts if h["fallback"])
            out.start(hosts, event["clients_per_round"], resume.round if resume else 0)
        elif event["type"] in ("warning", "budget"):
            if event["type"] == "budget":
                info["stopped"] = event["message"]  # the privacy budget: the run ends here, finished
            out.warning(event["message"])
        elif event["type"] == "round":
            info["rounds_completed"] = event["round"]  # so far; checkpointed up to here (or the last multiple)
            info["failures"] += len(event["failures"])
            info["retried"] += len(event["retried"])
            info["dropped"] += len(event["dropped"])
            info["rejected"] += len(event["rejected"])
            info["hosts_lost"].update({str(h): why for h, why in event["lost_hosts"].items()})
            if not event.get("private") and "bytes_up_total" in event:  # the bytes count who took part: DP hides it
                info["bytes"] = {"down": event["bytes_down_total"], "up": event["bytes_up_total"],
                                 "since_round": event["bytes_since_round"]}
            if event.get("virtual_seconds") is not None:  # the virtual clock so far (fedactors.runtime.systems)
                info["virtual_seconds"] = event["virtual_seconds"]
            for host in event["hosts"].values():
                if 0 <= host < len(info.get("host_info", [])):
                    info["host_info"][host]["clients_trained"] += 1
            if "startup_seconds" in event:
                info["startup_seconds"] = round(event["startup_seconds"], 3)
            if event["loss"] is not None:  # evaluated
                history.append(metrics_fields(event))  # as metrics.jsonl and the checkpoints hold it
                run_dir.append_metrics(event)
                if event.get("clients_table") and not event.get("private"):  # DP keeps its clients' results in
                    run_dir.append_clients(event["clients_table"], owners)
            out.round(event)
        run_dir.write_run(config, info)
        if event["type"] == "round":  # written down first: a callback that raises leaves the run as it stands
            call_round_hooks(event)
        stop_if_output_closed()

    def call_round_hooks(event: dict) -> None:
        where = f" at round {event['round']}; the run stops here, resumable from its last checkpoint"
        record = metrics_fields(event)
        if event["loss"] is not None:
            hooks.call("on_evaluation", record, where)
        if event.get("checkpoint_seconds") is not None:  # the coordinator wrote it before the round's event
            hooks.call("on_checkpoint", {"round": event["round"], "checkpoint_seconds": event["checkpoint_seconds"]},
                       where)
        hooks.call("on_round_end", record, where)

    def wall() -> dict:
        part = time.perf_counter() - started
        return {"wall_seconds": round(part, 3), "total_wall_seconds": round(wall_before + part, 3)}

    def stop(status: str, error: str | None = None) -> None:
        out.close()
        info.update(status=status, **wall(), **summarise(history, config.target, config.target_metric, lower))
        if error is not None:  # why it failed, the line the user saw: a sweep's failed cell is read back from here
            info["error"] = error
        run_dir.write_run(config, info)
        try:
            hooks.call("on_run_end", {"config": config.to_dict(), **info})
        except CallbackError as exc:  # the run's own error (or interruption) is what propagates; this one is kept
            info["callback_error"] = str(exc)
            run_dir.write_run(config, info)

    interrupts = Interrupts()
    try:
        with interrupts:
            hooks.call("on_run_start", {"run_id": run_id, "run_dir": str(run_dir.path), "config": config.to_dict(),
                                        "resumed_from_round": resume.round if resume else None}, " as the run started")
            done = experiment.run(config, on_event, run_id=run_id, store_url=store_url, store_retry_seconds=retry,
                                  resume=resume, wall_seconds_before=wall_before, task=task_object,
                                  strategy=strategy_object)
            out.close()
            result = _finish(config, run_dir, done["weights"], done["round"], history, {**info, **wall()}, out, lower)
    except KeyboardInterrupt:
        stop("interrupted")
        out.interrupted(resume_command(run_id, run_dir.path))
        # The signal remembered, not the exception's: Ray turns one raised inside ray.get into a plain KeyboardInterrupt.
        from fedactors.runtime.interrupts import Interrupted

        raise Interrupted(interrupts.stopped_by()) from None
    except FedActorsError as exc:
        stop("failed", first_line(exc))
        raise
    except Exception as exc:
        line = f"unexpected {type(exc).__name__}: {first_line(exc)}"
        stop("failed", line)
        log = run_dir.write_error("".join(traceback.format_exception(exc)))
        raise InternalError(f"{line} (traceback in {log})") from exc
    # After the try: the run is finished and said so; a hook that raises here does not make it failed.
    hooks.call("on_run_end", {"config": config.to_dict(), **result.info}, " (the run itself finished)")
    return result


def _finish(config: RunConfig, run_dir: RunDirectory, weights: np.ndarray, round_done: int, history: list[dict],
            info: dict, out: Renderer, lower: bool = False) -> RunResult:
    """Write weights.npy and the finished run.json (`info` carries the wall times), and show the summary.
    `lower`: whether --target-metric is better smaller."""
    run_dir.write_weights(weights)
    summary = summarise(history, config.target, config.target_metric, lower)
    info = {**info, "status": "finished", "rounds_completed": round_done, **summary}
    run_dir.write_run(config, info)
    out.summary(summary, info["wall_seconds"])
    return RunResult(run_id=info["run_id"], run_dir=run_dir.path, history=history, weights=np.asarray(weights), info=info)


def plan(config: RunConfig, run_id: str, out: Path, redis_url: str | None, *, resume_round: int | None = None,
         task: Task | None = None) -> dict:
    """What a run would do (for --dry-run): hosts, data, partition, store; it starts nothing and writes nothing.

    `data` says what the run would read, `data_dir` the directory its task's loader is given (None when
    nothing reads one) and `data_present` whether the files are there (None: only the loader knows).
    The data is read (not downloaded) to summarise the partition; a local Ray is not started
    (its size is this machine's CPUs), a cluster is asked for its nodes.
    """
    from fedactors.store.checkpoint import mask_url
    from fedactors.data.registry import load_task
    from fedactors.runtime.experiment import _load_data, plan_hosts

    config = with_data_dir(config)
    task = task if task is not None else load_task(config.task)
    data_dir = Path(config.data_dir)
    # What the run reads: the .npz (there, or _load_data says not), or the directory a task's loader is
    # given; a built-in without a `local` check (digits-mlp) reads none. Only `local` knows if data is there.
    reads_dir = config.data is None and (task.local is not None or not task.builtin)
    present = True if config.data is not None else task.local(data_dir) if task.local is not None else None
    loaded = _load_data(config, task, data_dir) if present is not False or config.clients is None else None
    split = loaded[3] if loaded is not None else None
    if config.clients is None:  # --partition natural: as many clients as the data has owners
        config = dataclasses.replace(config, clients=split["clients"])
    clock = None
    if config.simulates_systems and loaded is not None:  # the virtual clock's first rounds, without training
        from fedactors.runtime.experiment import model_weights
        from fedactors.runtime.preview import preview
        from fedactors.runtime.systems import read_trace

        trace = read_trace(config.client_trace, config.clients) if config.client_trace else None
        clock = preview(config, loaded[1].sizes, model_weights(task), trace)
    hosts, source = plan_hosts(config)
    if config.data is not None:
        data = config.data
    elif task.local is not None:
        data = f"{data_dir} ({'present' if present else 'absent: it would be downloaded there'})"
    elif task.builtin:
        data = f"task {task.name}'s own (it reads no data directory)"
    else:
        data = f"task {task.name}'s own loader, given {data_dir}"
    epsilon = privacy = None
    if config.private:
        check = dp_preflight(config, task)  # the model built here, as check_model does; strict: the error now
        epsilon, privacy = check.epsilon, {**check.to_dict(), "lines": check.lines(), "warning": check.warning()}
    return {
        "run_id": run_id, "out": str(out), "resume_after_round": resume_round, "task": config.task,
        "epsilon": epsilon, "privacy": privacy, "clock": clock,
        "data": data, "data_dir": config.data_dir if reads_dir else None, "data_present": present, "partition": split,
        "store": mask_url(redis_url) if redis_url else f"embedded Redis in {out / STORE_DIR}",
        "hosts": hosts, "hosts_from": source, "cpus_per_host": config.cpus_per_host,
        "gpus_per_host": config.gpus_per_host, "threads_per_host": config.threads_per_host,
        "clients_per_round": config.clients_per_round, "rounds": config.rounds, "config": config.to_dict(),
    }
