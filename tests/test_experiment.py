import pytest

from fedactors.config import RunConfig
from fedactors.errors import ClusterError
from fedactors.runtime.experiment import pool_size


def test_default_pool_is_one_host_per_cpu_capped_at_k():
    assert pool_size(RunConfig(), [{"CPU": 2.0}]) == 2
    assert pool_size(RunConfig(), [{"CPU": 1.0}, {"CPU": 4.0}]) == 5
    assert pool_size(RunConfig(clients=2, partition="iid"), [{"CPU": 8.0}]) == 2


def test_hosts_cannot_span_nodes():
    # 1.5 + 1.5 CPUs is 3 in total, but a 1-CPU host fits only once on each node.
    assert pool_size(RunConfig(), [{"CPU": 1.5}, {"CPU": 1.5}]) == 2


def test_fractional_gpus_pack_and_the_float_rounding_does_not_lose_one():
    cfg = RunConfig(gpus_per_host=0.1, cpus_per_host=0.1)
    assert pool_size(cfg, [{"CPU": 2.0, "GPU": 1.0}]) == 10
    assert pool_size(RunConfig(gpus_per_host=0.1, cpus_per_host=0.1), [{"CPU": 8.0, "GPU": 0.7}]) == 7
    assert pool_size(RunConfig(gpus_per_host=1), [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0}]) == 2


def test_asking_for_more_than_the_cluster_has_fails_fast():
    with pytest.raises(ClusterError, match=r"--hosts 3 needs 3 CPUs, but the Ray cluster has 2 CPUs \(room for 2 hosts\)"):
        pool_size(RunConfig(hosts=3), [{"CPU": 2.0}])
    with pytest.raises(ClusterError, match=r"needs 1.1 CPUs and 1.1 GPUs"):
        pool_size(RunConfig(hosts=11, gpus_per_host=0.1, cpus_per_host=0.1), [{"CPU": 2.0, "GPU": 1.0}])
    with pytest.raises(ClusterError, match=r"has no room for one host of 1 CPU and 1 GPU"):
        pool_size(RunConfig(gpus_per_host=1), [{"CPU": 4.0}])


def test_missing_data_fails_before_ray_starts(tmp_path, monkeypatch):
    """The data is read while Ray starts, but a download (and its failure) comes first."""
    import fedactors.data.mnist
    from fedactors.runtime import experiment
    from fedactors.errors import DataError

    def no_network(data_dir):
        raise DataError(f"MNIST not found in {data_dir} and the download failed (offline)")

    def must_not_start(address):
        raise AssertionError("Ray was started for a run whose data is missing")

    monkeypatch.setattr(fedactors.data.mnist, "_download", no_network)
    monkeypatch.setattr(experiment, "_start_ray", must_not_start)
    with pytest.raises(DataError, match="download failed"):
        experiment.run(RunConfig(data_dir=str(tmp_path)), lambda event: None, run_id="r")


def test_data_on_disk_is_loaded_alongside_ray(tmp_path, monkeypatch, mnist_dir):
    """With the files present, Ray starts without waiting for them; a bad file still fails the run, and Ray stops."""
    import ray

    import shutil

    from fedactors.runtime import experiment
    from fedactors.errors import DataError

    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", raw)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    started = []
    real_start = experiment._start_ray
    monkeypatch.setattr(experiment, "_start_ray", lambda address, **kw: (started.append(address), real_start(address, **kw)))
    with pytest.raises(DataError, match="bad IDX header"):
        experiment.run(RunConfig(data_dir=str(tmp_path)), lambda event: None, run_id="r")
    assert started == [None] and not ray.is_initialized()


def test_torch_is_preloaded_only_where_it_pays():
    from fedactors.runtime.experiment import _local_cpus, preload_pays

    assert preload_pays(RunConfig())  # one host per CPU: every idle worker becomes a host
    assert preload_pays(RunConfig(hosts=1)) == (_local_cpus() == 1)
    assert not preload_pays(RunConfig(address="127.0.0.1:6379"))


def test_first_workers_import_torch_but_not_the_coordinators():
    import os
    import sys

    import ray

    from fedactors.runtime.experiment import COORDINATOR_ENV, PRELOAD_VARIABLE, _start_ray

    @ray.remote(num_cpus=0)
    class Probe:
        def torch_imported(self) -> bool:
            return "torch" in sys.modules  # nothing here imports it: only the preload can have

    assert PRELOAD_VARIABLE not in os.environ
    _start_ray(None, preload_torch=True)
    try:
        assert PRELOAD_VARIABLE not in os.environ  # only the raylet needed it
        host_like = Probe.remote()
        coordinator_like = Probe.options(runtime_env=COORDINATOR_ENV).remote()
        assert ray.get(host_like.torch_imported.remote()) is True
        assert ray.get(coordinator_like.torch_imported.remote()) is False
    finally:
        ray.shutdown()


def test_a_local_cluster_starts_without_log_monitor_and_autoscaler():
    import psutil
    import ray
    from ray._private import parameter

    from fedactors.runtime.experiment import _start_ray

    base = parameter.RayParams
    _start_ray(None)
    try:
        assert parameter.RayParams is base  # swapped for ray.init only
        commands = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True) if p.is_running()]
        assert any("gcs_server" in c for c in commands) and any("raylet" in c for c in commands), commands
        assert not any("log_monitor.py" in c or "autoscaler/_private/monitor.py" in c for c in commands), commands
        assert ray.get(ray.remote(lambda: 6 * 7).remote()) == 42  # and the cluster works without them
    finally:
        ray.shutdown()
