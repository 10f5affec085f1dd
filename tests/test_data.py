import shutil

import numpy as np
import pytest

from fedactors.data import MEAN, STD, load_mnist, partition_iid, partition_noniid, read_idx, resolve_data_dir
from fedactors.errors import ConfigError, DataError


def test_loads_genuine_mnist_normalised_once(mnist):
    assert mnist.train_images.shape == (60_000, 1, 28, 28) and mnist.train_images.dtype == np.float32
    assert mnist.test_images.shape == (10_000, 1, 28, 28)
    assert mnist.train_labels.dtype == np.int64
    np.testing.assert_array_equal(mnist.train_labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(mnist.test_labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    np.testing.assert_array_equal(np.bincount(mnist.test_labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    # Background pixels are 0 -> -mean/std; the data set's mean after normalising is about 0.
    assert np.isclose(mnist.train_images.min(), -MEAN / STD, atol=1e-6)
    assert np.isclose(mnist.train_images.max(), (1 - MEAN) / STD, atol=1e-5)
    assert abs(float(mnist.train_images.mean())) < 0.01


def test_reads_the_same_values_as_torchvision(mnist_dir, mnist):
    import torch
    from torchvision import datasets

    ref = datasets.MNIST(root=str(mnist_dir), train=False, download=False)
    expected = (ref.data.to(torch.float32) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(mnist.test_images[:, 0], expected.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(mnist.test_labels, ref.targets.numpy())


def test_missing_data_offline_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"MNIST not found: .*MNIST/raw lacks train-images-idx3-ubyte.*--data-dir"):
        load_mnist(tmp_path, download=False)


def test_corrupt_file_is_refused(tmp_path, mnist_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_dir / "MNIST" / "raw").glob("*-ubyte"):
        shutil.copy(f, raw / f.name)
    target = raw / "t10k-labels-idx1-ubyte"
    target.write_bytes(target.read_bytes()[:-5])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is truncated"):
        load_mnist(tmp_path, download=False)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="bad IDX header"):
        read_idx(raw / "train-labels-idx1-ubyte", 2049, (60_000,))


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDACTORS_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("FEDACTORS_DATA")
    assert "fedactors" in str(resolve_data_dir(None))


def _check_covering(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n  # disjoint and covering


@pytest.mark.parametrize("k", [1, 10, 100, 600])
def test_iid_partition_sizes_disjoint_covering(k):
    parts = partition_iid(60_000, k, seed=0)
    assert len(parts) == k and all(len(p) == 60_000 // k for p in parts)
    _check_covering(parts, 60_000)
    again = partition_iid(60_000, k, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    if k > 1:
        assert not np.array_equal(parts[0], partition_iid(60_000, k, seed=1)[0])


def test_iid_clients_see_all_labels(mnist):
    parts = partition_iid(60_000, 100, seed=0)
    assert all(len(np.unique(mnist.train_labels[p])) == 10 for p in parts)


def test_noniid_is_two_label_sorted_shards_per_client(mnist):
    labels = mnist.train_labels
    parts = partition_noniid(labels, 100, seed=0)
    assert len(parts) == 100 and all(len(p) == 600 for p in parts)
    _check_covering(parts, 60_000)
    # Rebuild the 200 shards of 300 from the stable label sort: every client is exactly two of them.
    shards = np.split(np.argsort(labels, kind="stable"), 200)
    shard_of = np.empty(60_000, dtype=int)
    for s, idx in enumerate(shards):
        shard_of[idx] = s
    used = [tuple(sorted(set(shard_of[p].tolist()))) for p in parts]
    assert all(len(u) == 2 for u in used)
    assert sorted(s for u in used for s in u) == list(range(200))
    # A shard spans at most 2 labels (it may straddle a class boundary), so a client sees at most 4,
    # and most clients see exactly the paper's 2 digits or fewer.
    assert all(len(np.unique(labels[idx])) <= 2 for idx in shards)
    n_labels = [len(np.unique(labels[p])) for p in parts]
    assert max(n_labels) <= 4 and sum(n <= 2 for n in n_labels) >= 80
    assert not all(np.array_equal(a, b) for a, b in zip(parts, partition_noniid(labels, 100, seed=1)))


def test_noniid_general_k_and_bad_k(mnist):
    parts = partition_noniid(mnist.train_labels, 50, seed=3)
    assert len(parts) == 50 and all(len(p) == 1200 for p in parts)
    _check_covering(parts, 60_000)
    with pytest.raises(ConfigError, match="14 shards do not divide 60000"):
        partition_noniid(mnist.train_labels, 7, seed=0)


def test_a_failed_download_says_why(tmp_path, monkeypatch):
    """torchvision puts each mirror's error on lines after a bare "Error downloading X:"; the reason must survive."""
    from torchvision import datasets

    from fedactors.data import load_mnist

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror/, got:\n"
                           "<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr(datasets, "MNIST", offline)
    with pytest.raises(DataError, match=r"download failed \(Error downloading train-images-idx3-ubyte.gz: Tried "
                                        r"https://mirror/, got: <urlopen error \[Errno -2\] Name or service not known>\)"):
        load_mnist(tmp_path)
