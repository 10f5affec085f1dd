"""A task on data that needs no download: scikit-learn's 8x8 handwritten digits (1,797 images, in its wheel).

The images are split once, with a fixed generator, into 1,437 training and 360 test images
(the 80/20 split most examples use); pixel values 0..16 are scaled to [0, 1]. The model is a
small MLP (64-64-10). It trains in seconds on a CPU: for trying fedactors out, for tests, and
as the shape of a user's own task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedactors.data.arrays import Arrays
from fedactors.errors import DataError
from fedactors.task import Task

TEST_FRACTION = 0.2
SPLIT_SEED = 20170217  # the split is part of the data set, not of a run: fixed
MAX_PIXEL = 16.0


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
    """Pixels 0..16 -> [0, 1], float32 rows of 64 (8x8 images are flattened).

    DataError, one line, for pixels outside 0..16 or already scaled (none above 1: dividing by 16
    again would leave a model nothing to learn from). Examples of another size the model itself refuses."""
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise DataError(f"digits-mlp takes pixel numbers 0..16, got {x.dtype}")
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    low, high = (float(np.nanmin(x)), float(np.nanmax(x))) if x.size and not np.isnan(x).all() else (0.0, 0.0)
    if low < 0 or high > MAX_PIXEL:
        raise DataError(f"digits-mlp takes pixels 0..{MAX_PIXEL:g} (scikit-learn's digits); these are in "
                        f"[{low:g}, {high:g}]")
    if 0 < high <= 1:
        raise DataError(f"digits-mlp takes pixels 0..{MAX_PIXEL:g} (scikit-learn's digits) and scales them itself; "
                        f"these are in [{low:g}, {high:g}], already scaled: multiply them by {MAX_PIXEL:g}")
    return x / np.float32(MAX_PIXEL)


DIGITS_MLP = Task(
    name="digits-mlp", model=mlp, load=load, prepare=prepare, num_classes=10, builtin=True,
    description="a 64-64-10 MLP on scikit-learn's 8x8 digits (1,437 train / 360 test, no download): seconds a round",
    inputs="rows of 64 pixels (or 8x8 images): numbers 0..16, as scikit-learn's digits are",
)
