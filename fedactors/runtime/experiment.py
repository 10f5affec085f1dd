"""Wire a run together: load data, start or attach to Ray, size the host pool, drive the coordinator.

Everything here happens in the process that typed `fedactors run` (the driver). Start-up does
each thing once and overlaps what does not depend on each other: the task's data is read,
prepared, partitioned and digested in a thread while Ray starts, a local Ray's first workers import torch while ray.init still waits for its
own daemons (fedactors._preload), a local Ray starts without the two daemons it has no use for
(log monitor, autoscaler), the host actors go into those workers as soon as Ray is up,
and the coordinator actor starts while the hosts finish. A data set that is not on disk is
downloaded, or fails, before Ray starts, so a missing data set fails in seconds, not after a
cluster start-up, and so does a user's task (its data and model are checked first). The data
is put into the object store once, and every host maps it from there.

A run's identity (fingerprint) is its experiment settings plus what it found: the task's
parameter shapes and the prepared data's digest (and, for a model with frozen parameters,
which are frozen and a digest of their values). Checkpoints carry it; a resume whose task or
data differ from the checkpoint's is refused, naming which.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedactors.store.checkpoint import Checkpoint
from fedactors.algorithms import OBJECT_PREFIX, builtin
from fedactors.config import RunConfig
from fedactors.data.mnist import resolve_data_dir
from fedactors.data.registry import load_task
from fedactors.errors import CheckpointError, ClusterError, ConfigError, DataError, FedActorsError
from fedactors.data.partition import Parts, hold_out, partition, summary
from fedactors.task import Arrays, Task, digest, load_arrays, target_direction
from fedactors.runtime.systems import read_trace
from fedactors.traffic import Totals

EventHandler = Callable[[dict], None]
# The coordinator's worker process skips fedactors._preload's torch import (see _start_ray).
COORDINATOR_ENV = {"env_vars": {"FEDACTORS_ROLE": "coordinator"}}
PRELOAD_VARIABLE = "RAY_preload_python_modules"
HOST_RESTARTS = 3
PLACEMENT_TIMEOUT_SECONDS = 180.0
# Ray's switch that makes a node take 127.0.0.1 as its address (see _on_loopback).
RAY_CLUSTER_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def run(
    config: RunConfig,
    on_event: EventHandler,
    *,
    run_id: str,
    store_url: str | None = None,
    store_retry_seconds: float = 30.0,
    resume: Checkpoint | None = None,
    wall_seconds_before: float = 0.0,
    task: Task | None = None,
    strategy: object | None = None,
) -> dict:
    """Run `config` to its last round, calling `on_event` for every event; returns the "done" event.

    With `store_url` every round is checkpointed there under `run_id`; with `resume` the run
    continues after that checkpoint's round from its weights and history. `wall_seconds_before`
    is the wall time of the run's earlier parts, so each checkpoint records the run's total.
    `task`: the Task itself, when config.task does not name one a process can import; `strategy`
    likewise (a fedactors.strategy.Strategy object, else config.strategy's). Events:
    "identity" (fingerprint, identity, partition summary), "start" (hosts), then the
    coordinator's ("round", "warning"), and the returned "done".
    """
    t_start = time.perf_counter()
    run_started_at = time.time() - wall_seconds_before  # as if the run had never stopped
    if store_url and store_url.startswith("unix://") and (config.address or "").startswith("ray://"):
        raise ConfigError("the embedded checkpoint store is local to this machine; with a ray:// address pass --redis URL")
    data_dir = resolve_data_dir(config.data_dir)
    task_object = task
    task = task if task is not None else load_task(config.task)
    target_lower = target_direction(task, config.target_metric)
    from fedactors.strategy import make_strategy

    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedactors-data")
    loading = loader.submit(_load_data, config, task, data_dir)  # ~0.7 s for MNIST, during ray.init
    loader.shutdown(wait=False)
    if config.clients is None:  # --partition natural: the data says how many clients there are
        config = dataclasses.replace(config, clients=loading.result()[3]["clients"])
    strategy = strategy if strategy is not None else make_strategy(config)  # a user's is imported (and checked) here
    resolve = getattr(strategy, "resolve", None)
    if callable(resolve):  # a method keeping a part of the model with each client: the part exists, before Ray starts
        from fedactors.model import build

        resolve(build(task.model))
    # --client-trace is read here, where its path is (a cluster's coordinator may run on another node); its errors
    # come before a cluster start-up.
    trace = read_trace(config.client_trace, config.clients) if config.client_trace else None
    if not task.builtin or config.data is not None or (task.local is not None and not task.local(data_dir)):
        loading.result()  # a download or a user's task or data, and their failures, come before a cluster start-up

    import ray

    from fedactors.runtime.client import ClientHost
    from fedactors.runtime.coordinator import CoordinatorActor

    _start_ray(config.address, preload_torch=preload_pays(config))
    try:
        num_hosts = pool_size(config, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
        host_cls = ray.remote(ClientHost).options(
            num_cpus=config.cpus_per_host,
            num_gpus=config.gpus_per_host,
            scheduling_strategy="SPREAD",
            max_restarts=HOST_RESTARTS,  # a killed host comes back; the pool re-sends it the data
            max_task_retries=0,  # and the coordinator, not Ray, decides who retrains its clients
        )
        # Created first, so their processes start (and import torch) while the data goes in.
        # A Python object's client half travels to the hosts with them (one named by an import spec is imported there).
        algorithm = strategy if config.strategy.startswith(OBJECT_PREFIX) else None
        hosts = [
            host_cls.remote(config, threads=config.threads_per_host, gpus=config.gpus_per_host, host_id=i,
                            task=task_object, algorithm=algorithm)
            for i in range(num_hosts)
        ]
        data, client_indices, data_digest, split, holdout = loading.result()
        loading = None  # the future holds the arrays too, and the driver keeps no copy once they are put
        data_refs = [
            ray.put(data.x_train), ray.put(data.y_train), ray.put(client_indices),
            ray.put(data.x_test), ray.put(data.y_test), ray.put(None if holdout is None else holdout.indices),
        ]
        num_test = len(data.y_test)
        owners = eval_owners(data, holdout)
        owner_ids = data.owners  # a natural partition's: client k is owner_ids[k] (clients.jsonl names them)
        del data  # the object store holds the only copy from here on
        loads = [h.load.remote(*data_refs) for h in hosts]
        # Its process starts while the hosts still import torch; it waits for them on its own.
        coordinator = (
            ray.remote(CoordinatorActor)
            .options(num_cpus=0, scheduling_strategy=_near_store(store_url), runtime_env=COORDINATOR_ENV)
            .remote(
                config, hosts, data_refs, num_test, run_id=run_id, store_retry_seconds=store_retry_seconds,
                start_round=resume.round if resume else 0,
                weights=ray.put(resume.weights) if resume else None,
                history=resume.history if resume else None,
                run_started_at=run_started_at,
                strategy=strategy,
                strategy_state=resume.strategy_state() if resume else None,
                # Through the object store, as the weights: Ray keeps an actor's constructor arguments themselves
                # in its control store, and a million owners' test examples are megabytes.
                eval_owners=None if owners is None else ray.put(owners), held_out=holdout is not None,
                classes=task.labels == "classes",
                traffic=Totals.from_checkpoint(resume.extra, resume.round) if resume else None,
                trace=trace, clock=resume.extra.get("clock") if resume else None,
                clients=resume.extra.get("clients") if resume else None,
            )
        )
        try:
            ray.get(loads, timeout=PLACEMENT_TIMEOUT_SECONDS)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(
                f"{num_hosts} client hosts could not all be placed within {PLACEMENT_TIMEOUT_SECONDS:g} s: "
                "the cluster's resources are taken by other work; try fewer --hosts"
            ) from None
        described = ray.get([h.describe.remote() for h in hosts])
        identity = {"task": config.task, "data": config.data or "the task's own", "digest": data_digest,
                    "parameters": described[0]["parameters"], "weights": described[0]["weights"],
                    "strategy": {"name": strategy.name, "settings": strategy.settings()}}
        if trace is not None:  # only then, as frozen below
            identity["trace"] = trace.digest
        if "frozen" in described[0]:  # only then: the identity (fingerprint) of every other model stays as it was
            identity["frozen"] = frozen_identity(described)
        check_client_state(config, described[0]["weights"], store_memory(store_url))
        fingerprint = config.fingerprint(identity)
        if resume is not None and fingerprint != resume.fingerprint:
            raise CheckpointError(_identity_change(run_id, resume, identity))
        on_event({"type": "identity", "fingerprint": fingerprint, "identity": identity, "partition": split,
                  "clients": config.clients, "target_lower": target_lower,
                  **({"owners": [str(o) for o in owner_ids]} if owner_ids is not None else {})})
        on_event({"type": "start", "hosts": described, "clients_per_round": config.clients_per_round})
        done: dict = {}
        # The store URL (it may hold a password) goes in a method call: Ray keeps an actor's
        # constructor arguments in its control store for restarts, not those of its calls.
        # At most one event ahead of this loop: a run stopped here (Ctrl-C, a closed stdout, a callback) has its
        # checkpoint at most one round past what run.json and the screen last said, not as many as the
        # coordinator could run while events queued (rounds of 0.05 s ran several ahead on a fast CI machine).
        events = coordinator.run.options(_generator_backpressure_num_objects=1)
        try:
            for ref in events.remote(store_url, fingerprint, identity):
                event = ray.get(ref)
                if event["type"] == "error":
                    error = event["error"]
                    if not isinstance(error, FedActorsError):
                        error.add_note(f"raised in the coordinator actor:\n{event['traceback']}")
                    raise error
                if event["type"] == "done":
                    done = event
                if event["type"] == "round" and event["round"] == 1:
                    event["startup_seconds"] = time.perf_counter() - t_start - event["round_seconds"]
                on_event(event)
        except BaseException:
            # Stopped here (a signal, a closed stdout, a callback): the coordinator stops where it is, its last
            # checkpoint the resume point, rather than run on through Ray's shutdown.
            ray.kill(coordinator, no_restart=True)
            raise
        return done
    finally:
        ray.shutdown()


def _load_data(config: RunConfig, task: Task, data_dir: Path) -> tuple[Arrays, Parts, str, dict, Parts | None]:
    """The prepared data set, its partition into the run's clients, its digest, the partition's summary, and the
    examples held out for per-client evaluation (--eval-clients; else None)."""
    data = load_arrays(task, config.data, data_dir, columns={
        "partition_by": config.partition_by, "input_column": config.input_column, "label_column": config.label_column})
    if not task.builtin or config.data is not None:  # a user's model, or a built-in one on the user's arrays
        check_model(task, data)
    parts = partition(data.y_train, config.clients, config.partition, config.seed,
                      shards_per_client=config.shards_per_client, alpha=config.alpha, sigma=config.sigma,
                      owners=data.client_train)
    split = summary(parts, data.y_train, owners=data.owners, values=task.labels == "values")
    holdout = None
    if config.eval_clients is not None:
        if data.client_test is not None:
            raise ConfigError("--eval-clients: the data gives its owners test examples of their own (client_test), "
                              "and every client is evaluated on them; drop --eval-clients")
        parts, holdout = hold_out(parts, config.eval_clients, config.seed)
        split["held_out"] = {"clients": int((holdout.sizes > 0).sum()), "examples": int(holdout.sizes.sum())}
    if config.client_test_fraction is not None:
        if data.client_test is not None:
            raise ConfigError("--client-test-fraction: the data gives its owners test examples of their own "
                              "(client_test), and every client is judged on them; drop --client-test-fraction")
        parts, holdout = hold_out(parts, 1.0, config.seed, examples=config.client_test_fraction)
        split["held_out"] = {"clients": int((holdout.sizes > 0).sum()), "examples": int(holdout.sizes.sum())}
    return data, parts, digest(data), split, holdout


def eval_owners(data: Arrays, holdout: Parts | None) -> np.ndarray | None:
    """Whose each example of the per-client evaluation is (client numbers), or None when clients are not evaluated
    one by one: the owners of the test set (a natural partition's client_test), or of the held-out examples."""
    if holdout is not None:
        return np.repeat(np.arange(len(holdout)), holdout.sizes)
    return data.client_test


def check_client_state(config: RunConfig, weights: int, store: tuple[int, int, str] | None = None) -> None:
    """The clients' own state must fit where it lives (fedactors.runtime.states). SCAFFOLD's control variates and
    top-k's or sign's error-feedback residuals are one copy of the weights per client each. The store holds every
    client's, plus the older copies its --keep checkpoints still name (at most the clients of --keep x
    --checkpoint-every rounds); the coordinator only those changed since the last checkpoint, twice while it is
    written. Refused with one line, before round 1, where that is more than the store can hold: `store` is (its
    limit, what it uses now, its name), the limit being a Redis's maxmemory, else half its machine's memory (the
    store shares it). The embedded store runs here; a store that cannot say is counted as if it were here too."""
    feedback = config.compress is not None and config.compress.partition(":")[0] in ("topk", "sign")
    spec = builtin(config.strategy)
    own = spec.state_per_client if spec is not None else 0  # SCAFFOLD's control variates
    down = config.compress_down is not None  # the model each client was last sent, the server's record of it
    copies = own + feedback + down  # and error-feedback residuals
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    if config.asynchronous:
        # The weights of every version a client in flight started from: at most one per client training at once.
        held = config.concurrency_value * weights * 4 * (3 + config.keep)
        if total and held > total / 2:
            raise ConfigError(
                f"--strategy {config.strategy} keeps the weights each client in flight started from: up to "
                f"--concurrency {config.concurrency_value} x {weights:,} floats, {held / 2**30:.1f} GiB at the peak with "
                f"the checkpoints, more than half of this machine's {total / 2**30:.1f} GiB; use a smaller "
                "--concurrency, a smaller model or --keep 1")
    if not copies:
        return
    limit, used, where = store if store is not None else (total // 2, 0, "this machine's store")
    per_client = copies * weights * 4
    moving = min(config.clients, config.clients_per_round * config.checkpoint_every)  # changed between checkpoints
    need = per_client * (config.clients + moving * config.keep)
    if limit and need > limit - used:
        gib = 2**30
        kept = [w for w, on in ((f"--strategy {config.strategy} keeps {spec.client_state if spec else ''}", own),
                                 (f"--compress {config.compress} keeps an error-feedback residual", feedback),
                                 (f"--compress-down {config.compress_down} keeps the model it last sent", down)) if on]
        raise ConfigError(
            f"{' and '.join(kept)} per client: {config.clients} x {weights:,} floats = "
            f"{config.clients * per_client / gib:.1f} GiB, {need / gib:.1f} GiB in the store with the older copies "
            f"its --keep {config.keep} checkpoints name; {where} has {max(limit - used, 0) / gib:.1f} GiB for it; "
            "use fewer clients, a smaller model, --keep 1, or a Redis with more memory (--redis)")


def store_memory(store_url: str | None) -> tuple[int, int, str] | None:
    """(what the store may hold, what it holds now, its name) for check_client_state; None if it cannot say."""
    if not store_url:
        return None
    from fedactors.store.checkpoint import RedisStore

    try:
        with RedisStore(store_url, retry_seconds=5) as store:
            return store.memory()
    except FedActorsError:
        return None


def frozen_identity(described: list[dict]) -> dict:
    """Which parameters are frozen and a digest of their values, the same in every host; ConfigError if not.

    A frozen parameter never travels: each host makes its own with the task's factory and the run's seed.
    A factory that reads pretrained weights from a file that differs between nodes would train each
    client against another model without a word; this is where that is caught."""
    first = described[0]["frozen"]
    for host in described[1:]:
        if host.get("frozen", {}).get("sha256") != first["sha256"]:
            raise ConfigError(f"host {host['host']} built other frozen parameters than host {described[0]['host']} "
                              "(their values differ): the task's model factory must build the same frozen "
                              "parameters in every host (a file of pretrained weights must be the same on every node)")
    return {"names": first["names"], "sha256": first["sha256"]}


def model_weights(task: Task) -> int:
    """The floats of `task`'s model that travel (a host's describe()["weights"]), from a model built here: for what
    must be known before any host is up (DP-FedAvg's pre-flight)."""
    from fedactors.model import FlatModel

    return FlatModel(task.model, labels=task.labels).size


def check_model(task: Task, data: Arrays) -> None:
    """A user's model: one fedactors can train (fedactors.model), taking these examples, with an output per class."""
    import torch

    from fedactors.model import FlatModel
    from fedactors.task import num_classes

    model = FlatModel(task.model, loss=task.loss, labels=task.labels)  # ConfigError for what it cannot train
    x = torch.from_numpy(data.x_test[:2].copy())
    try:
        with torch.no_grad():
            out = model.module(x)
    except Exception as exc:
        raise DataError(f"task {task.name}'s model cannot take {data.x_test.dtype} examples of shape "
                        f"{tuple(data.x_test.shape[1:])}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    y = torch.from_numpy(data.y_test[:2].copy())
    if task.labels == "values":
        if not isinstance(out, torch.Tensor) or out.numel() != y.numel():
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DataError(f"task {task.name}'s model returns {shape} for 2 examples; it must return their targets' "
                            f"shape {tuple(y.shape)}")
    else:
        classes = num_classes(task, data)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < classes:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DataError(f"task {task.name}'s model returns {shape} for 2 examples; it must return (2, C) scores "
                            f"with C >= {classes}, the number of classes")
    model.evaluate_all(x, y, metrics=task.metrics)  # a metric that raises, or gives other than one value an example


def _identity_change(run_id: str, resume: Checkpoint, identity: dict) -> str:
    """Why this run's task or data is not the checkpoint's: the CheckpointError message."""
    stored = resume.extra.get("identity") or {}
    changed = [key for key in identity if stored.get(key) != identity[key]]
    if not changed:
        return f"run {run_id}'s checkpoint was written with another configuration (fingerprint differs)"
    what = {"digest": "the data (its digest)", "parameters": "the model's parameter shapes", "weights": "the model's size",
            "task": "the task", "data": "the data's source", "frozen": "the frozen parameters"}
    return (f"cannot resume run {run_id}: {', '.join(what.get(k, k) for k in changed)} differ from its checkpoint's "
            f"({', '.join(f'{k}: {str(stored.get(k))[:20]} then, {str(identity[k])[:20]} now' for k in changed)})")


def pool_size(config: RunConfig, nodes: list[dict]) -> int:
    """--hosts if the cluster can hold that many, else as many as its nodes' CPUs (and GPUs) allow, at most K.

    `nodes` are the alive nodes' resource dicts; a host cannot span nodes, so each node is counted alone.
    """
    def room(res: dict) -> int:
        fit = _fits(res.get("CPU", 0.0), config.cpus_per_host)
        if config.gpus_per_host > 0:
            fit = min(fit, _fits(res.get("GPU", 0.0), config.gpus_per_host))
        return fit

    fit = sum(room(res) for res in nodes)
    cpus, gpus = sum(r.get("CPU", 0.0) for r in nodes), sum(r.get("GPU", 0.0) for r in nodes)
    if config.hosts is not None:
        if config.hosts > fit:
            need = f"{config.hosts * config.cpus_per_host:g} CPUs"
            have = f"{cpus:g} CPUs"
            if config.gpus_per_host > 0:
                need += f" and {config.hosts * config.gpus_per_host:g} GPUs"
                have += f" and {gpus:g} GPUs"
            raise ClusterError(f"--hosts {config.hosts} needs {need}, but the Ray cluster has {have} (room for {fit} hosts)")
        return config.hosts
    if fit < 1:
        what = f"{config.cpus_per_host:g} CPU" + (f" and {config.gpus_per_host:g} GPU" if config.gpus_per_host else "")
        raise ClusterError(f"the Ray cluster ({cpus:g} CPUs, {gpus:g} GPUs) has no room for one host of {what}")
    return min(fit, config.clients)


def plan_hosts(config: RunConfig) -> tuple[int, str]:
    """(pool size, where the figure comes from) without starting Ray: for --dry-run."""
    if config.address is None:
        cpus = float(_local_cpus())
        return pool_size(config, [{"CPU": cpus}]), f"a local Ray instance would have {cpus:g} CPUs"
    import ray

    _start_ray(config.address)
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()
    return pool_size(config, nodes), f"the cluster at {config.address} has {len(nodes)} nodes"


def preload_pays(config: RunConfig) -> bool:
    """Whether a local cluster should import torch in its first workers (see _start_ray).

    Only if every idle worker the local raylet starts (one per CPU) becomes a client host: one
    left over would hold ~300 MiB of torch for nothing. Never on a cluster fedactors attaches to.
    """
    if config.address is not None:
        return False
    try:
        return plan_hosts(config)[0] >= _local_cpus()
    except ClusterError:  # --hosts beyond this machine: run() says so once Ray is up, as before
        return False


def _local_cpus() -> int:
    """The CPUs a local Ray instance would have: the ones this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _fits(available: float, per_host: float) -> int:
    """How many shares of `per_host` fit in `available`; 1e-9 absorbs 0.7 / 0.1 = 6.999..."""
    return int(available / per_host + 1e-9)


def _near_store(store_url: str | None) -> object:
    """Where the coordinator may run: anywhere, except that a unix-socket store pins it to this node."""
    if not (store_url and store_url.startswith("unix://")):
        return "DEFAULT"
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def _start_ray(address: str | None, preload_torch: bool = False) -> None:
    import ray

    check_cluster(address)
    if address is None:
        # The raylet connects to its own object store, and workers to the raylet, retrying every
        # raylet_client_connect_timeout_milliseconds: 1 s by default, 10 tries. In about half of
        # the local starts on a 2-core machine the store is not listening at the first try, and
        # ray.init stalls for that second (2.2 s or 3.2 s, nothing between). Retrying every 50 ms
        # for the same 10 s in all removes the stall. The raylet reads them from its environment,
        # which it inherits from this process; a value the user set is kept.
        os.environ.setdefault("RAY_raylet_client_connect_timeout_milliseconds", "50")
        os.environ.setdefault("RAY_raylet_client_num_connect_attempts", "200")
    # The raylet starts one idle worker per CPU before ray.init returns. With preload_torch each
    # imports torch as soon as it is up (fedactors._preload), so that ~2.5 s overlaps ray.init's
    # last seconds instead of following it, in the workers the client hosts then take. The raylet
    # reads the setting at its start and passes it to every worker it launches; the variable is
    # only for it, so it is removed again (a user's own setting is left alone).
    preload = address is None and preload_torch and PRELOAD_VARIABLE not in os.environ
    if preload:
        os.environ[PRELOAD_VARIABLE] = "fedactors._preload"
    try:
        with _keeping_signal_handlers():
            if address is None:
                with _on_loopback(), _without_idle_daemons() as lean:
                    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING,
                             log_to_driver=not lean)
            else:
                ray.init(address=address, logging_level=logging.WARNING)
    except FedActorsError:
        raise
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError...: all say "no cluster there"
        where = "a local Ray instance" if address is None else f"the Ray cluster at {address}"
        if _is_auth_failure(exc):
            raise ClusterError(f"{where} requires token authentication and refused {_token_advice()}") from None
        raise ClusterError(f"could not start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    finally:
        if preload:
            del os.environ[PRELOAD_VARIABLE]


@contextmanager
def _keeping_signal_handlers() -> Iterator[None]:
    """Around ray.init: put back the caller's SIGTERM and SIGHUP handlers afterwards.

    ray.init sets a SIGTERM handler that exits the driver on the spot, and the core worker it
    connects installs a native one that prints "*** SIGTERM received ***" and kills the
    process; either way a run stopped by `kill`, Slurm, Kubernetes, systemd or `timeout` would
    be left marked running with no resume hint. The handlers the caller had (fedactors' CLI
    treats both signals like Ctrl-C) are reinstalled, which also replaces the native one.
    """
    import signal
    import threading

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    main = threading.current_thread() is threading.main_thread()
    saved = {n: signal.getsignal(getattr(signal, n)) for n in names} if main else {}
    try:
        yield
    finally:
        for name, handler in saved.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(getattr(signal, name), handler)


AUTH_TOKEN_VARIABLES = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _token_source() -> str | None:
    """Where Ray reads this machine's auth token from, or None: the variable or file, never the token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH ({path})" if Path(path).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def _attach_auth(address: str) -> None:
    """Attaching: use Ray's auth token exactly when the cluster asks for one; refused is one line, at once.

    `ray start --head` turns token authentication on whenever a token exists (it writes
    ~/.ray/auth_token for a new cluster), but ray.init with an explicit address connects
    without one unless RAY_AUTH_MODE=token (Ray enables it by itself only for "auto"), and is
    refused; sending a token to a cluster without authentication breaks it the other way (its
    workers cannot call back a driver that expects tokens). So the GCS is asked first, without
    a token, the way ray.init connects (Ray's GcsClient, which raises AuthenticationError on
    the first refusal, where ray.init would retry for 20 s and report only "Failed to
    connect"); if it wants one, Ray's own token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token) is switched on and asked again. A RAY_AUTH_MODE the user set is kept.
    The question is asked in a child process: Ray's native client logs a refusal to stderr and
    may end its process on errors of its own, neither of which should reach this one.
    """
    hostport = address.strip()
    if hostport == "auto" or hostport.startswith("ray://") or ":" not in hostport:
        return  # Ray handles "auto" itself; a Ray Client server is not a GCS
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # a Ray without token authentication
        return
    if _gcs_answer(hostport) != "refused":
        return
    if os.environ.get("RAY_AUTH_MODE") is None and _token_source() is not None:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # this process, and so its children
        if _gcs_answer(hostport) != "refused":
            return
    raise ClusterError(f"the Ray cluster at {address} requires token authentication and refused {_token_advice()}")


_GCS_PROBE = """
import sys
from ray._raylet import GcsClient
from fedactors.runtime.experiment import _is_auth_failure
try:
    GcsClient(address=sys.argv[1])
except Exception as exc:  # AuthenticationError, or a refusal Ray did not map to it but that names the token
    print("refused" if _is_auth_failure(exc) else "other")
else:
    print("accepted")
"""


def _gcs_answer(hostport: str) -> str:
    """"accepted", "refused" (an authentication error) or "other", from a GcsClient made in a child process."""
    import subprocess
    import sys

    answer = "other"
    for _ in range(2):  # "other" is mostly a GCS too busy to answer in time: ask once more
        try:
            result = subprocess.run([sys.executable, "-c", _GCS_PROBE, hostport], capture_output=True, text=True,
                                    timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = result.stdout.strip().splitlines()
        answer = lines[-1] if lines and lines[-1] in ("accepted", "refused") else "other"
        if answer != "other":
            break
    return answer


def _is_auth_failure(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in ("AuthenticationError", "InvalidAuthToken", "UNAUTHENTICATED", "Unauthenticated",
                                   "Authentication token is missing or incorrect", "authentication token"))


def _token_advice() -> str:
    """The tail of the auth-failure line: what was sent and which variable to set (never the token)."""
    if (os.environ.get("RAY_AUTH_MODE") or "").lower() == "disabled":
        return ("a connection without one (RAY_AUTH_MODE=disabled): unset RAY_AUTH_MODE, and set RAY_AUTH_TOKEN "
                "to the cluster's token (`ray get-auth-token` on its head node)")
    source = _token_source()
    sent = f"the token from {source}" if source else "a connection without one (no RAY_AUTH_TOKEN, no ~/.ray/auth_token)"
    return (f"{sent}: set RAY_AUTH_TOKEN to the cluster's token (`ray get-auth-token` on its head node) "
            "or RAY_AUTH_TOKEN_PATH to a file holding it")


@contextmanager
def _on_loopback() -> Iterator[None]:
    """During a local ray.init: the node's address is 127.0.0.1, so no Ray process listens beyond loopback.

    A Ray node binds its servers (GCS, raylet, object manager, every worker's and the driver's
    gRPC server, the runtime-env agent) to its node address, which by default is the machine's
    network address, so a local run was reachable from the whole network. ray.init turns an
    explicit 127.0.0.1 back into that network address; what makes it keep loopback is Ray's
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the setting that keeps laptops single-node), read once
    at import into ray_constants. Both are set for this one call and restored after it: the
    raylet and its workers inherit the variable and are given 127.0.0.1, while a later attach
    from this process to a real cluster still finds its own network address. The cluster also
    keeps Ray's token authentication, on by default for a local cluster (~/.ray/auth_token).
    """
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(RAY_CLUSTER_VARIABLE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_CLUSTER_VARIABLE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            del os.environ[RAY_CLUSTER_VARIABLE]
        else:
            os.environ[RAY_CLUSTER_VARIABLE] = saved_env


@contextmanager
def _without_idle_daemons() -> Iterator[bool]:
    """During a local ray.init: start neither the log monitor nor the autoscaler monitor; yields whether it could.

    Both are Python processes that import Ray, about 0.65 CPU-seconds each, while ray.init
    and then the client hosts' torch import are bound by the CPU (on 2 cores, command to
    round 1 took 6.9 s without them against 7.7 s with: means of 11 alternating pairs), and
    the log monitor then polls the workers' log files through every round (about 1% of a
    core). Neither has work here: the autoscaler has one fixed node that lives as long as
    the run, and fedactors' actors print nothing (errors come back as exceptions; a worker's
    own output stays in Ray's session log directory). ray.init has no parameter for either,
    so the RayParams it builds is swapped for one that says so: Ray's own switches
    (`ray start --no-monitor --include-log-monitor=False`), set the way ray.init would if
    it passed them on. A Ray without them gets the ordinary start-up.
    """
    from ray._private import parameter

    base = parameter.RayParams
    if not {"include_log_monitor", "no_monitor"} <= set(inspect.signature(base).parameters):
        yield False
        return

    class LeanParams(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("include_log_monitor", False)
            kwargs.setdefault("no_monitor", True)
            super().__init__(*args, **kwargs)

    parameter.RayParams = LeanParams
    try:
        yield True
    finally:
        parameter.RayParams = base


def check_cluster(address: str | None) -> None:
    """For --address: something listens there, and it takes this machine's Ray token; else one ClusterError."""
    # Ray warns whenever it turns token authentication on (every local start, and an attach
    # with a token); it is on, and that is right.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    check_reachable(address)
    if address is not None:
        _attach_auth(address)


def check_reachable(address: str | None) -> None:
    """Fail in seconds, not minutes, when nothing listens at HOST:PORT (Ray itself retries for long)."""
    import socket

    if address is None:
        return
    hostport = address.removeprefix("ray://")
    if hostport == "auto" or ":" not in hostport:
        return  # Ray resolves "auto" itself, and fails fast when there is no cluster
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10):
            pass
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ClusterError(f"could not start or reach the Ray cluster at {address}: {reason}") from None
