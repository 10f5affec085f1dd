"""Wire a run together: load data, start or attach to Ray, size the host pool, drive the coordinator.

Everything here happens in the process that typed `fedactors run` (the driver). The data is
loaded and validated before Ray starts, so a missing data set fails in a second, not after a
cluster start-up; it is then put into the object store once, and every host maps it from there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fedactors.checkpoint import Checkpoint
from fedactors.config import RunConfig
from fedactors.data import load_mnist, partition, resolve_data_dir
from fedactors.errors import ClusterError, ConfigError, FedActorsError

EventHandler = Callable[[dict], None]


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
    data = load_mnist(resolve_data_dir(config.data_dir))
    client_indices = partition(data.train_labels, config.clients, config.partition, config.seed)

    import ray

    from fedactors.client import ClientHost
    from fedactors.coordinator import CoordinatorActor

    _start_ray(config.address)
    try:
        num_hosts = pool_size(config, ray.cluster_resources())
        train_images, train_labels = ray.put(data.train_images), ray.put(data.train_labels)
        test_images, test_labels = ray.put(data.test_images), ray.put(data.test_labels)
        indices = ray.put(client_indices)
        num_test = len(data.test_labels)
        del data  # the object store holds the only copy from here on
        host_cls = ray.remote(ClientHost).options(num_cpus=1, scheduling_strategy="SPREAD")
        hosts = [
            host_cls.remote(config, train_images, train_labels, indices, test_images, test_labels, threads=1, host_id=i)
            for i in range(num_hosts)
        ]
        on_event({"type": "start", "hosts": num_hosts, "clients_per_round": config.clients_per_round})
        coordinator = (
            ray.remote(CoordinatorActor)
            .options(num_cpus=0, scheduling_strategy=_near_store(store_url))
            .remote(
                config, hosts, num_test, run_id=run_id, store_url=store_url, store_retry_seconds=store_retry_seconds,
                start_round=resume.round if resume else 0,
                weights=ray.put(resume.weights) if resume else None,
                history=resume.history if resume else None,
            )
        )
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


def pool_size(config: RunConfig, resources: dict) -> int:
    """--hosts if given (checked against the cluster's CPUs), else one host per CPU, at most K."""
    cpus = int(resources.get("CPU", 0))
    if config.hosts is not None:
        if config.hosts > cpus:
            raise ClusterError(f"--hosts {config.hosts} needs {config.hosts} CPUs, but the Ray cluster has {cpus}")
        return config.hosts
    if cpus < 1:
        raise ClusterError("the Ray cluster has no CPU to place a client host on")
    return max(1, min(cpus, config.clients))


def _near_store(store_url: str | None) -> object:
    """Where the coordinator may run: anywhere, except that a unix-socket store pins it to this node."""
    if not (store_url and store_url.startswith("unix://")):
        return "DEFAULT"
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def _start_ray(address: str | None) -> None:
    import ray

    # Ray warns on every local start that token authentication is on; it is, and that is right.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)

    try:
        if address is None:
            ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except FedActorsError:
        raise
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError...: all say "no cluster there"
        where = "a local Ray instance" if address is None else f"the Ray cluster at {address}"
        raise ClusterError(f"could not start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None

