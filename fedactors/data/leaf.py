"""LEAF's data layout (Caldas et al. 2018), the convention federated data sets ship in: `--data leaf:DIR`.

    DIR/train/*.json and DIR/test/*.json, each file one JSON object:
        {"users": ["u1", ...], "num_samples": [n1, ...],
         "user_data": {"u1": {"x": [example, ...], "y": [label, ...]}, ...}}

FEMNIST's examples are lists of 784 pixel values and its labels integers; Shakespeare's are
80-character strings and its labels the next character. The files of a directory are read in
name order, their users in the order `users` lists them. Every user is one owner
(Arrays.client_train / client_test), so `--partition natural` makes each one client. The
examples come back as NumPy arrays as they are (numbers or strings): the task's `prepare` and
`prepare_labels` turn them into the model's input and class ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedactors.errors import DataError
from fedactors.data.arrays import Arrays

SPLITS = ("train", "test")


def load_leaf(root: Path) -> Arrays:
    """The train/ and test/ splits of a LEAF directory as Arrays with owners; DataError naming what is wrong."""
    if not root.is_dir():
        raise DataError(f"--data leaf:{root}: no such directory")
    split = {}
    for name in SPLITS:
        where = root / name
        files = sorted(where.glob("*.json")) if where.is_dir() else []
        if not files:
            raise DataError(f"--data leaf:{root}: no {name}/*.json files (LEAF keeps a split's users in JSON files "
                            f"under {name}/)")
        split[name] = _read_split(files)
    (x_train, y_train, c_train), (x_test, y_test, c_test) = split["train"], split["test"]
    return Arrays(x_train, y_train, x_test, y_test, client_train=c_train, client_test=c_test)


def load_leaf_under(data_dir: Path, name: str, what: str) -> Arrays:
    """A built-in task's LEAF data kept in DATA_DIR/name (train/ and test/ of JSON files); DataError if absent."""
    root = data_dir / name
    if not (root / "train").is_dir():
        raise DataError(f"{what} is not in {root} (train/ and test/ of JSON files): make it with LEAF's "
                        "preprocess.sh and pass --data leaf:DIR, or put it there")
    return load_leaf(root)


def _read_split(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every user's examples, labels and (repeated) user id, over `files` in order.

    Each file becomes arrays before the next is read: the full FEMNIST is ~700,000 rows of 784 numbers, 17 GB
    as Python floats but 4.4 GB as one float64 array, so only one file's lists are alive at a time."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    owners: list[str] = []
    seen: set[str] = set()
    for path in files:
        doc = _read_json(path)
        users, counts, data = doc.get("users"), doc.get("num_samples"), doc.get("user_data")
        if not isinstance(users, list) or not isinstance(data, dict):
            raise DataError(f"{path} is not a LEAF file: it needs a 'users' list and a 'user_data' object")
        if counts is not None and (not isinstance(counts, list) or len(counts) != len(users)):
            raise DataError(f"{path}: 'num_samples' must list one count per user ({len(users)})")
        file_x: list = []
        file_y: list = []
        for i, user in enumerate(users):
            user = str(user)
            if user in seen:
                raise DataError(f"{path}: user {user!r} appears twice in the split")
            seen.add(user)
            if user not in data:
                raise DataError(f"{path}: user {user!r} is in 'users' but not in 'user_data'")
            record = data[user]
            x, y = (record.get("x"), record.get("y")) if isinstance(record, dict) else (None, None)
            if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y):
                raise DataError(f"{path}: user {user!r} needs lists 'x' and 'y' of the same length")
            if counts is not None and counts[i] != len(x):
                raise DataError(f"{path}: user {user!r} has {len(x)} examples but num_samples says {counts[i]}")
            if not x:
                continue  # an owner with nothing to learn from is not a client
            file_x.extend(x)
            file_y.extend(y)
            owners.extend([user] * len(x))
        del doc, data
        if file_x:
            xs.append(_array(file_x, path, "x"))
            ys.append(_array(file_y, path, "y"))
    if not xs:
        raise DataError(f"{files[0].parent}: the LEAF files hold no examples")
    return _join(xs, files[0].parent, "x"), _join(ys, files[0].parent, "y"), np.array(owners)


def _join(parts: list[np.ndarray], where: Path, what: str) -> np.ndarray:
    """The files' arrays as one, typed as if read as one list (ints and floats make floats); DataError if they
    do not fit together (examples of different lengths, numbers in one file and strings in another)."""
    if len(parts) == 1:
        return parts[0]
    if len({p.shape[1:] for p in parts}) > 1 or len({p.dtype.kind in "iufb" for p in parts}) > 1:
        raise DataError(f"{where}: the '{what}' values do not all have one shape and type (e.g. examples of "
                        "different lengths)")
    return np.concatenate(parts)


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path} is not a LEAF file: it holds a JSON {type(doc).__name__}, not an object")
    return doc


def _array(values: list, where: Path, what: str) -> np.ndarray:
    """A list of examples (numbers, lists of numbers, strings) as one NumPy array; DataError if they are ragged."""
    try:
        out = np.asarray(values)
    except ValueError:
        out = None
    if out is None or out.dtype == object:
        raise DataError(f"{where}: the '{what}' values do not all have one shape and type (e.g. examples of "
                        "different lengths)")
    return out
