"""`--data hf:PATH`: a Hugging Face dataset on disk as Arrays (issue 37 item 3).

PATH is a DatasetDict saved with `save_to_disk` (a directory holding dataset_dict.json), or a directory of
Parquet files, the Hub's layout: `train*.parquet` and `test*.parquet` beside each other, or in `train/` and
`test/` (or under `data/`). It needs a train and a test split. Columns:

    --input-column   the examples (default: `image` if there is one, else the one column left besides the
                     label and --partition-by); images decode to arrays, lists of numbers to arrays
    --label-column   the labels (default: `label`)
    --partition-by   one client per value of this column (Flower Datasets' NaturalIdPartitioner convention):
                     the owners `--partition natural` makes clients of, and their test examples if the test
                     split has the column too

Nothing is downloaded (the library runs offline) and nothing is pickled: the library reads Arrow and Parquet.
`datasets` is an optional dependency (`pip install 'fedactors[hf]'`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedactors.data.arrays import Arrays
from fedactors.errors import ConfigError, DataError

SPLITS = ("train", "test")


def load_hf(path: Path, *, partition_by: str | None = None, input_column: str | None = None,
            label_column: str | None = None) -> Arrays:
    """The dataset at `path` as Arrays; DataError (one line, naming the path) for what is not one."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # a local path only: never the network
    try:
        import datasets
    except ImportError:
        raise ConfigError("--data hf: needs the datasets library: pip install 'fedactors[hf]' (or datasets)") from None
    datasets.disable_progress_bars()
    where = f"--data hf:{path}"
    if not path.is_dir():
        raise DataError(f"{where}: no such directory")
    splits = _splits(datasets, path, where)
    label = label_column or "label"
    train_columns = list(splits["train"].column_names)
    for name, column in (("--label-column", label), ("--partition-by", partition_by), ("--input-column", input_column)):
        if column is not None and column not in train_columns:
            raise DataError(f"{where}: {name} {column!r} is not a column of its train split (columns: "
                            f"{', '.join(train_columns)})")
    x_name = input_column or _input_column(train_columns, label, partition_by, where)
    arrays = {}
    for split in SPLITS:
        table = splits[split]
        missing = [c for c in (x_name, label) if c not in table.column_names]
        if missing:
            raise DataError(f"{where}: its {split} split lacks {', '.join(repr(c) for c in missing)}")
        rows = table.select_columns([c for c in (x_name, label, partition_by) if c in table.column_names])
        values = rows.with_format("numpy")[:]
        arrays[f"x_{split}"] = _array(values[x_name], f"{where}: column {x_name!r} of {split}")
        arrays[f"y_{split}"] = _array(values[label], f"{where}: column {label!r} of {split}")
        if partition_by is not None and partition_by in values:
            arrays[f"client_{split}"] = np.asarray(values[partition_by])
    return Arrays(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                  client_train=arrays.get("client_train"), client_test=arrays.get("client_test"))


def _splits(datasets, path: Path, where: str) -> dict:
    """{"train": Dataset, "test": Dataset} from a saved DatasetDict or a directory of Parquet files."""
    if (path / "dataset_dict.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - the library's own errors, in one line
            raise DataError(f"{where}: not a readable saved dataset: {type(exc).__name__}: {exc}") from None
        missing = [s for s in SPLITS if s not in loaded]
        if missing:
            raise DataError(f"{where} has splits {', '.join(loaded)}; it needs {' and '.join(SPLITS)}")
        return {s: loaded[s] for s in SPLITS}
    if (path / "dataset_info.json").is_file():
        raise DataError(f"{where} is a single saved Dataset; save a DatasetDict with train and test splits")
    files = {split: _parquet_files(path, split) for split in SPLITS}
    if not any(files.values()):
        raise DataError(f"{where} is not a Hugging Face dataset: no dataset_dict.json (save_to_disk) and no "
                        "train*.parquet / test*.parquet files")
    missing = [s for s in SPLITS if not files[s]]
    if missing:
        raise DataError(f"{where}: no {' or '.join(missing)} split's Parquet files ({'*.parquet, '.join(missing)}"
                        f"*.parquet or {'/, '.join(missing)}/)")
    out = {}
    for split, names in files.items():
        try:
            out[split] = datasets.Dataset.from_parquet([str(f) for f in names], split=split)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{where}: its {split} Parquet files are not readable: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return out


def _parquet_files(path: Path, split: str) -> list[Path]:
    for base in (path, path / "data"):
        found = sorted(base.glob(f"{split}*.parquet")) or sorted((base / split).glob("*.parquet"))
        if found:
            return found
    return []


def _input_column(columns: list[str], label: str, partition_by: str | None, where: str) -> str:
    if "image" in columns:
        return "image"
    rest = [c for c in columns if c not in (label, partition_by)]
    if len(rest) == 1:
        return rest[0]
    raise DataError(f"{where}: which column holds the examples? --input-column one of {', '.join(rest)}")


def _array(values: object, where: str) -> np.ndarray:
    """A column as one array: images and nested lists of one shape stack; ragged ones are refused."""
    array = np.asarray(values)
    if array.dtype == object:
        try:
            array = np.stack([np.asarray(v) for v in array])
        except ValueError:
            raise DataError(f"{where} holds examples of different shapes; fedactors needs one shape") from None
    return array
