"""A task on data that needs no download: scikit-learn's 8x8 handwritten digits (1,797 images, in its wheel).

The images are split once, with a fixed generator, into 1,437 training and 360 test images
(the 80/20 split most examples use); pixel values 0..16 are scaled to [0, 1]. The model is a
small MLP (64-64-10). It trains in seconds on a CPU: for trying fedactors out, for tests, and
as the shape of a user's own task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedactors.task import Arrays, Task

TEST_FRACTION = 0.2
SPLIT_SEED = 20170217  # the split is part of the data set, not of a run: fixed


def mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def load(data_dir: Path) -> Arrays:
    """The digits as flat 64-pixel rows (data_dir is not used: the data comes with scikit-learn)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    test = int(round(TEST_FRACTION * len(y)))
    train_ix, test_ix = np.sort(order[test:]), np.sort(order[:test])
    return Arrays(x[train_ix], y[train_ix], x[test_ix], y[test_ix])


def prepare(x: np.ndarray) -> np.ndarray:
    """Pixels 0..16 -> [0, 1], float32 rows of 64 (8x8 images are flattened)."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    return x / np.float32(16.0)


DIGITS_MLP = Task(
    name="digits-mlp", model=mlp, load=load, prepare=prepare, num_classes=10, builtin=True,
    description="a 64-64-10 MLP on scikit-learn's 8x8 digits (1,437 train / 360 test, no download): seconds a round",
)
