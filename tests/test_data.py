import shutil

import numpy as np
import pytest

from fedactors.data import MEAN, STD, load_mnist, read_idx, resolve_data_dir
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
