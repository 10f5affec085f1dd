"""LEAF's FEMNIST (Caldas et al. 2018): handwritten digits and letters, each writer one client, and LEAF's CNN.

FEMNIST's examples are 28x28 images kept as rows of 784 floats in [0, 1], its labels 62 classes
(digits 0-9, upper case A-Z as 10-35, lower case a-z as 36-61), its owners writers named like
`f0000_14`. `femnist-cnn` is LEAF's baseline model (models/femnist/cnn.py): two 5x5 convolutions
of 32 and 64 channels ('same' padding, ReLU), each followed by 2x2 max-pooling, a dense layer of
2048 units (ReLU) and 62 logits: 6,603,710 parameters. As in LEAF, the pixels go in as they are
(no normalisation). Its data is `--data leaf:DIR` (LEAF's preprocess.sh makes it from NIST's
scans, which fedactors does not download), or `DATA_DIR/femnist/{train,test}`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedactors.data.arrays import Arrays
from fedactors.data.leaf import load_leaf_under
from fedactors.task import Task
from fedactors.tasks.mnist import images_28

NUM_CLASSES = 62
PARAMETERS = 6_603_710  # 832 + 51,264 + 6,424,576 (3136 x 2048 + 2048) + 127,038 (2048 x 62 + 62)
INPUTS = "rows of 784 pixels (N, 784) as LEAF keeps them, or 28x28 images: floats in [0, 1], or uint8 0..255"


def cnn():
    """LEAF's FEMNIST CNN: (B, 1, 28, 28) pixels -> (B, 62) logits."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
        nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
        nn.Flatten(), nn.Linear(64 * 7 * 7, 2048), nn.ReLU(),  # (B, 2048)
        nn.Linear(2048, NUM_CLASSES),  # (B, 62) logits; softmax lives in the loss
    )


def load(data_dir: Path) -> Arrays:
    """LEAF's FEMNIST in DATA_DIR/femnist (train/ and test/ of JSON files)."""
    return load_leaf_under(data_dir, "femnist", "LEAF's FEMNIST")


def prepare(x: np.ndarray) -> np.ndarray:
    """Rows (N, 784) or images (N, 28, 28), (N, 1, 28, 28): floats in [0, 1] (or uint8 0..255, scaled by 1/255)
    -> float32 (N, 1, 28, 28) in [0, 1]."""
    images = images_28(x, "femnist-cnn")
    if images.dtype == np.uint8:
        out = images.astype(np.float32)[:, None]
        out *= np.float32(1.0 / 255.0)
        return out
    return images[:, None].copy()


FEMNIST_CNN = Task(
    name="femnist-cnn", model=cnn, load=load, prepare=prepare, num_classes=NUM_CLASSES, builtin=True,
    local=lambda d: (d / "femnist" / "train").is_dir(), inputs=INPUTS,
    description="LEAF's FEMNIST CNN (conv 5x5x32, conv 5x5x64, each 2x2 max-pooled, dense 2048, 62 classes; "
                "6,603,710 parameters) on LEAF's FEMNIST (--data leaf:DIR, --partition natural: one client per writer)",
)
