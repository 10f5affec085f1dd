"""A data set as arrays, and the two stock `prepare` functions: what a task's loader returns.

It imports only NumPy: the task contract (fedactors.task), the loaders (fedactors.data.mnist,
fedactors.data.leaf) and the built-in tasks (fedactors.tasks) all build on it, and none of them is
imported by it. `fedactors.task.Arrays` is this class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Arrays:
    """A data set as arrays: examples (N, ...) and labels (N,), for training and for testing.

    `client_train` (N,) and `client_test` (M,), optional, say who owns each example: any
    hashable ids (integers, strings). With them `--partition natural` makes every owner of a
    training example one client, and the owners' test examples evaluate each client on its own
    data. load_arrays turns them into client numbers 0..K-1 (the owners in sorted order, kept in
    `owners`; a test owner with no training example is refused).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    client_train: np.ndarray | Sequence | None = None
    client_test: np.ndarray | Sequence | None = None
    owners: np.ndarray | None = None  # set by load_arrays: client k is owners[k]

    @property
    def natural(self) -> bool:
        """Whether the data says who owns each training example."""
        return self.client_train is not None


def as_float32(x: np.ndarray) -> np.ndarray:
    """The default `prepare`: the examples as float32, unchanged otherwise."""
    return np.ascontiguousarray(x, dtype=np.float32)


def as_int64(x: np.ndarray) -> np.ndarray:
    """A `prepare` for integer examples (token ids for an embedding): int64, unchanged otherwise."""
    return np.ascontiguousarray(x, dtype=np.int64)
