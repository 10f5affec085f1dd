import pytest

from fedactors.config import RunConfig
from fedactors.errors import ClusterError
from fedactors.experiment import pool_size


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
    import fedactors.data
    from fedactors import experiment
    from fedactors.errors import DataError

    def no_network(data_dir):
        raise DataError(f"MNIST not found in {data_dir} and the download failed (offline)")

    def must_not_start(address):
        raise AssertionError("Ray was started for a run whose data is missing")

    monkeypatch.setattr(fedactors.data, "_download", no_network)
    monkeypatch.setattr(experiment, "_start_ray", must_not_start)
    with pytest.raises(DataError, match="download failed"):
        experiment.run(RunConfig(data_dir=str(tmp_path)), lambda event: None, run_id="r")


def test_data_on_disk_is_loaded_alongside_ray(tmp_path, monkeypatch, mnist_dir):
    """With the files present, Ray starts without waiting for them; a bad file still fails the run, and Ray stops."""
    import ray

    import shutil

    from fedactors import experiment
    from fedactors.errors import DataError

    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", raw)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    started = []
    real_start = experiment._start_ray
    monkeypatch.setattr(experiment, "_start_ray", lambda address: (started.append(address), real_start(address)))
    with pytest.raises(DataError, match="bad IDX header"):
        experiment.run(RunConfig(data_dir=str(tmp_path)), lambda event: None, run_id="r")
    assert started == [None] and not ray.is_initialized()
