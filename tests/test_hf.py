"""--data hf:DIR (issue 37 item 3): Hugging Face datasets on disk, built here with `datasets` from real MNIST
examples (nothing downloaded): saved with save_to_disk and as the Hub's Parquet layout, one client per writer with
--partition-by, and the same bytes as the same arrays given as an .npz."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fedactors.errors import ConfigError, DataError

WRITERS = ("w-a", "w-b", "w-c", "w-d", "w-e", "w-f")


@pytest.fixture(scope="module")
def examples():
    """400 training and 100 test images of real MNIST, each with a writer (train and test alike)."""
    from fedactors.data import load_mnist_raw

    raw = load_mnist_raw(Path(os.environ["FEDACTORS_DATA"]))
    x_train, y_train, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    rng = np.random.default_rng(0)
    train, test = rng.choice(len(y_train), 400, replace=False), rng.choice(len(y_test), 100, replace=False)
    return {"x_train": x_train[train], "y_train": y_train[train].astype(np.int64),
            "x_test": x_test[test], "y_test": y_test[test].astype(np.int64),
            "client_train": np.array([WRITERS[i % 6] for i in range(400)]),
            "client_test": np.array([WRITERS[i % 6] for i in range(100)])}


def _dataset_dict(examples):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10),
                                  "writer": datasets.Value("string")})
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(
        {"image": list(examples[f"x_{split}"]), "label": examples[f"y_{split}"].tolist(),
         "writer": examples[f"client_{split}"].tolist()}, features=features) for split in ("train", "test")})


@pytest.fixture(scope="module")
def saved(examples, tmp_path_factory):
    """The examples as save_to_disk writes them, and as the Hub's Parquet files (data/train-*.parquet, ...)."""
    import datasets

    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("hf")
    ds = _dataset_dict(examples)
    ds.save_to_disk(str(root / "saved"))
    for split in ("train", "test"):
        ds[split].to_parquet(str(root / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    np.savez(root / "same.npz", **examples)
    return root


def _run(data: str, tmp_path: Path, **settings):
    """Two rounds of mnist-2nn on `data` in this process (two ClientHosts, no Ray): the final weights."""
    import torch

    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
    from fedactors.task import load_arrays, load_task

    cfg = RunConfig(task="mnist-2nn", data=data, partition="natural", clients=None, frac=0.5, rounds=2, epochs=1,
                    batch_size=10, seed=2, **settings)
    columns = {k: getattr(cfg, k) for k in ("partition_by", "input_column", "label_column")}
    arrays = load_arrays(load_task(cfg.task), cfg.data, tmp_path, columns=columns)
    parts = partition(arrays.y_train, None, "natural", cfg.seed, owners=arrays.client_train)
    cfg = RunConfig(**{**cfg.to_dict(), "clients": len(parts), "batch_size": 10})
    threads = torch.get_num_threads()
    try:
        hosts = [ClientHost(cfg, arrays.x_train, arrays.y_train, parts, arrays.x_test, arrays.y_test, host_id=i,
                            threads=1) for i in range(2)]
        events = list(Coordinator(cfg, LocalPool(hosts), num_test=len(arrays.y_test)).run())
    finally:
        torch.set_num_threads(threads)
    return arrays, events[-1]["weights"]


def test_a_saved_dataset_and_its_parquet_files_train_as_the_same_npz(saved, tmp_path):
    """One client per writer (--partition-by writer), images decoded to MNIST's arrays: the run's weights are the
    .npz's to the byte, from save_to_disk's directory and from the Hub's Parquet layout alike."""
    arrays, weights = _run(f"hf:{saved / 'saved'}", tmp_path, partition_by="writer")
    assert len(arrays.y_train) == 400 and len(np.unique(arrays.client_train)) == len(WRITERS)
    assert list(arrays.owners) == sorted(WRITERS) and arrays.client_test is not None
    _, hub = _run(f"hf:{saved / 'hub'}", tmp_path, partition_by="writer")
    same, npz = _run(f"npz:{saved / 'same.npz'}", tmp_path)
    for name in ("x_train", "y_train", "x_test", "y_test", "client_train", "client_test"):
        assert np.array_equal(getattr(arrays, name), getattr(same, name)), name
    assert weights.tobytes() == hub.tobytes() == npz.tobytes()


def test_the_command_line_takes_hf_data(saved, monkeypatch, capsys, tmp_path):
    from conftest import run_main

    status, out, err = run_main(monkeypatch, capsys, "run", "--task", "mnist-2nn", "--data", f"hf:{saved / 'saved'}",
                                "--partition", "natural", "--partition-by", "writer", "--out", str(tmp_path / "r"),
                                "--dry-run", "--json")
    assert status == 0, err
    plan = json.loads(out)
    assert plan["config"]["partition_by"] == "writer" and plan["partition"]["clients"] == len(WRITERS)


@pytest.mark.parametrize(("where", "settings", "message"), [
    ("nothing", {}, "is not a Hugging Face dataset: no dataset_dict.json"),
    ("saved", {"partition_by": "author"}, "--partition-by 'author' is not a column of its train split (columns: "
                                          "image, label, writer)"),
    ("saved", {"label_column": "digit", "partition_by": "writer"}, "--label-column 'digit' is not a column"),
    ("missing", {}, "no such directory"),
])
def test_what_is_not_a_dataset_or_a_column_is_one_line(saved, tmp_path, where, settings, message):
    from fedactors.task import load_arrays, load_task

    (saved / "nothing").mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_arrays(load_task("mnist-2nn"), f"hf:{saved / where}", tmp_path,
                    columns={"partition_by": None, "input_column": None, "label_column": None, **settings})


@pytest.mark.parametrize(("settings", "message"), [
    ({"data": "hf:/x", "partition_by": "writer", "partition": "iid", "clients": 10},
     "--partition-by writer makes one client per value of that column: it goes with --partition natural, not iid"),
    ({"data": "npz:/x.npz", "input_column": "image"}, "--input-column applies to --data hf:DIR only"),
    ({"data": "csv:/x"}, "--data must be npz:PATH, leaf:DIR or hf:DIR, got 'csv:/x'"),
])
def test_columns_without_hf_data_are_refused(settings, message):
    from fedactors.config import RunConfig

    with pytest.raises(ConfigError, match=message):
        RunConfig(**settings)
