"""Wire a run together: load data, start or attach to Ray, size the host pool, drive the coordinator.

Everything here happens in the process that typed `fedactors run` (the driver). Start-up does
each thing once and overlaps what does not depend on each other: the data is read in a thread
while Ray starts, a local Ray's first workers import torch while ray.init still waits for its
own daemons (fedactors._preload), a local Ray starts without the two daemons it has no use for
(log monitor, autoscaler), the host actors go into those workers as soon as Ray is up,
and the coordinator actor starts while the hosts finish. A data set that is not on disk is
downloaded, or fails, before Ray starts, so a missing data set fails in seconds, not after a
cluster start-up. The data is put into the object store once, and every host maps it from there.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedactors.checkpoint import Checkpoint
from fedactors.config import RunConfig
from fedactors.data import Mnist, load_mnist, missing_files, partition, resolve_data_dir
from fedactors.errors import ClusterError, ConfigError, FedActorsError

EventHandler = Callable[[dict], None]
# The coordinator's worker process skips fedactors._preload's torch import (see _start_ray).
COORDINATOR_ENV = {"env_vars": {"FEDACTORS_ROLE": "coordinator"}}
PRELOAD_VARIABLE = "RAY_preload_python_modules"
HOST_RESTARTS = 3
PLACEMENT_TIMEOUT_SECONDS = 180.0


def run(
    config: RunConfig,
    on_event: EventHandler,
    *,
    run_id: str,
    store_url: str | None = None,
    store_retry_seconds: float = 30.0,
    resume: Checkpoint | None = None,
) -> dict:
    """Run `config` to its last round, calling `on_event` for every event; returns the "done" event.

    With `store_url` every round is checkpointed there under `run_id`; with `resume` the run
    continues after that checkpoint's round from its weights and history.
    """
    t_start = time.perf_counter()
    if store_url and store_url.startswith("unix://") and (config.address or "").startswith("ray://"):
        raise ConfigError("the embedded checkpoint store is local to this machine; with a ray:// address pass --redis URL")
    data_dir = resolve_data_dir(config.data_dir)
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedactors-data")
    loading = loader.submit(_load_data, config, data_dir)  # ~0.6 s of reading and normalising, during ray.init
    loader.shutdown(wait=False)
    if missing_files(data_dir):
        loading.result()  # a download, or its failure, comes before a cluster start-up

    import ray

    from fedactors.client import ClientHost
    from fedactors.coordinator import CoordinatorActor

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
        hosts = [
            host_cls.remote(config, threads=config.threads_per_host, gpus=config.gpus_per_host, host_id=i)
            for i in range(num_hosts)
        ]
        data, client_indices = loading.result()
        loading = None  # the future holds the arrays too, and the driver keeps no copy once they are put
        data_refs = [
            ray.put(data.train_images), ray.put(data.train_labels), ray.put(client_indices),
            ray.put(data.test_images), ray.put(data.test_labels),
        ]
        num_test = len(data.test_labels)
        del data  # the object store holds the only copy from here on
        loads = [h.load.remote(*data_refs) for h in hosts]
        # Its process starts while the hosts still import torch; it waits for them on its own.
        coordinator = (
            ray.remote(CoordinatorActor)
            .options(num_cpus=0, scheduling_strategy=_near_store(store_url), runtime_env=COORDINATOR_ENV)
            .remote(
                config, hosts, data_refs, num_test, run_id=run_id, store_url=store_url, store_retry_seconds=store_retry_seconds,
                start_round=resume.round if resume else 0,
                weights=ray.put(resume.weights) if resume else None,
                history=resume.history if resume else None,
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
        on_event({"type": "start", "hosts": described, "clients_per_round": config.clients_per_round})
        done: dict = {}
        for ref in coordinator.run.remote():
            event = ray.get(ref)
            if event["type"] == "error":
                raise event["error"]
            if event["type"] == "done":
                done = event
            if event["type"] == "round" and event["round"] == 1:
                event["startup_seconds"] = time.perf_counter() - t_start - event["round_seconds"]
            on_event(event)
        return done
    finally:
        ray.shutdown()


def _load_data(config: RunConfig, data_dir: Path) -> tuple[Mnist, list]:
    """The data set and its partition into the run's clients."""
    data = load_mnist(data_dir)
    return data, partition(data.train_labels, config.clients, config.partition, config.seed)


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

    check_reachable(config.address)
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

    # Ray warns on every local start that token authentication is on; it is, and that is right.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)

    check_reachable(address)
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
        if address is None:
            with _without_idle_daemons() as lean:
                ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=not lean)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except FedActorsError:
        raise
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError...: all say "no cluster there"
        where = "a local Ray instance" if address is None else f"the Ray cluster at {address}"
        raise ClusterError(f"could not start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    finally:
        if preload:
            del os.environ[PRELOAD_VARIABLE]


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
