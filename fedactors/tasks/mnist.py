"""The paper's MNIST models (McMahan et al. 2017): the CNN (the default task) and the 2NN.

Data: MNIST from `data_dir` (torchvision's layout, downloaded when absent), prepared once:
scaled to [0, 1] and normalised with MNIST's mean and standard deviation (0.1307, 0.3081).
`--data npz:PATH` arrays work too: images of shape (N, 28, 28) or (N, 1, 28, 28), uint8
(0..255, scaled by 1/255) or float32 already in [0, 1]; they are normalised the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedactors.data import MEAN, STD, load_mnist_raw, missing_files, normalise
from fedactors.errors import DataError
from fedactors.task import Arrays, Task

CNN_PARAMETERS = 1_663_370  # McMahan et al.'s CNN with 'same' padding
MLP_PARAMETERS = 199_210  # the 2NN: 784-200-200-10


def cnn():
    """conv 5x5x32 + ReLU + 2x2 max-pool, conv 5x5x64 + ReLU + 2x2 max-pool, fc 512 + ReLU, fc 10."""
    from fedactors.model import CNN

    return CNN()


def mlp_2nn():
    """Two hidden layers of 200 units with ReLU (the paper's "2NN"), on the flattened image."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))


def load(data_dir: Path) -> Arrays:
    return load_mnist_raw(data_dir)


def local(data_dir: Path) -> bool:
    return not missing_files(data_dir)


def prepare(images: np.ndarray) -> np.ndarray:
    """uint8 (0..255) or float32 in [0, 1], (N, 28, 28) or (N, 1, 28, 28) -> float32 (N, 1, 28, 28), normalised."""
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"MNIST models take images of shape (N, 28, 28) or (N, 1, 28, 28), got {images.shape}")
    if images.dtype == np.uint8:
        return normalise(images)
    if images.dtype != np.float32:
        raise DataError(f"MNIST images must be uint8 or float32 in [0, 1], got {images.dtype}")
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise DataError("float32 MNIST images must be in [0, 1] (before normalisation); "
                        f"these are in [{images.min():g}, {images.max():g}]")
    out = images[:, None, :, :].copy()
    out -= np.float32(MEAN)
    out /= np.float32(STD)
    return out


MNIST_CNN = Task(
    name="mnist-cnn", model=cnn, load=load, prepare=prepare, num_classes=10, builtin=True, local=local,
    description="the paper's CNN on MNIST (1,663,370 parameters): the default, and the reference",
)
MNIST_2NN = Task(
    name="mnist-2nn", model=mlp_2nn, load=load, prepare=prepare, num_classes=10, builtin=True, local=local,
    description="the paper's 2NN on MNIST: two hidden layers of 200 units, ReLU (199,210 parameters)",
)
