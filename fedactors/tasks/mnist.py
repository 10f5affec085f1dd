"""The paper's MNIST models (McMahan et al. 2017): the CNN (the default task) and the 2NN; and the CNN with batch
normalization after each convolution, for FedBN (fedactors.tasks.cnn_bn).

Data: MNIST from `data_dir` (torchvision's layout, downloaded when absent), prepared once:
scaled to [0, 1] and normalised with MNIST's mean and standard deviation (0.1307, 0.3081).
`--data npz:PATH` and `--data leaf:DIR` arrays work too: images of shape (N, 28, 28) or
(N, 1, 28, 28), or rows of 784 pixels (N, 784) as LEAF's FEMNIST keeps them; uint8 (0..255,
scaled by 1/255) or floats already in [0, 1]; they are normalised the same way. Pixels outside
those ranges are refused in one line (a model trained on them learns nothing useful).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedactors.data.arrays import Arrays
from fedactors.data.mnist import MEAN, STD, load_mnist_raw, missing_files, normalise
from fedactors.errors import DataError
from fedactors.task import Task

CNN_PARAMETERS = 1_663_370  # McMahan et al.'s CNN with 'same' padding
CNN_BN_PARAMETERS = 1_663_562  # the same with BatchNorm after each convolution: 2 x (32 + 64) more
MLP_PARAMETERS = 199_210  # the 2NN: 784-200-200-10
INPUTS = "28x28 images (N, 28, 28), (N, 1, 28, 28) or rows (N, 784): uint8 pixels 0..255, or floats in [0, 1]"


def cnn():
    """conv 5x5x32 + ReLU + 2x2 max-pool, conv 5x5x64 + ReLU + 2x2 max-pool, fc 512 + ReLU, fc 10."""
    from fedactors.model import CNN

    return CNN()


def cnn_bn():
    """The CNN with BatchNorm2d after each convolution (before its ReLU)."""
    from fedactors.tasks.cnn_bn import CNNBatchNorm

    return CNNBatchNorm()


def mlp_2nn():
    """Two hidden layers of 200 units with ReLU (the paper's "2NN"), on the flattened image."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))


def load(data_dir: Path) -> Arrays:
    return load_mnist_raw(data_dir)


def local(data_dir: Path) -> bool:
    return not missing_files(data_dir)


def images_28(images: np.ndarray, who: str) -> np.ndarray:
    """(N, 28, 28), (N, 1, 28, 28) or (N, 784) -> (N, 28, 28), values untouched: uint8 0..255 or float32 in [0, 1].

    Floats of another width are cast to float32 (LEAF's JSON reads as float64). DataError, one line naming
    `who`, for another shape, another dtype, or pixels outside the range their dtype says."""
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    elif images.ndim == 2 and images.shape[1] == 784:
        images = images.reshape(len(images), 28, 28)  # a view: the same bytes as (N, 28, 28) images
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{who} take images of shape (N, 28, 28) or (N, 1, 28, 28), or rows (N, 784), "
                        f"got {images.shape}")
    if images.dtype == np.uint8:
        # 0/1 pixels in uint8 would be scaled to 0..1/255: nearly blank images, and training on them says nothing.
        if images.size and images.max() == 1:
            raise DataError(f"uint8 images for {who} are pixels 0..255; these are 0..1: pass 0/1 pixels as floats "
                            "in [0, 1]")
        return images
    if images.dtype.kind != "f":
        raise DataError(f"{who} take uint8 pixels (0..255) or floats in [0, 1], got {images.dtype}")
    images = np.asarray(images, dtype=np.float32)  # no copy when already float32
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise DataError(f"float images for {who} must be in [0, 1] (before normalisation); "
                        f"these are in [{images.min():g}, {images.max():g}]")
    return images


def prepare(images: np.ndarray) -> np.ndarray:
    """uint8 (0..255) or floats in [0, 1], (N, 28, 28), (N, 1, 28, 28) or (N, 784) -> float32 (N, 1, 28, 28),
    normalised."""
    images = images_28(images, "MNIST models")
    if images.dtype == np.uint8:
        return normalise(images)
    out = images[:, None, :, :].copy()
    out -= np.float32(MEAN)
    out /= np.float32(STD)
    return out


MNIST_CNN = Task(
    name="mnist-cnn", model=cnn, load=load, prepare=prepare, num_classes=10, builtin=True, local=local,
    description="the paper's CNN on MNIST (1,663,370 parameters): the default, and the reference", inputs=INPUTS,
)
MNIST_CNN_BN = Task(
    name="mnist-cnn-bn", model=cnn_bn, load=load, prepare=prepare, num_classes=10, builtin=True, local=local,
    description="the paper's CNN with BatchNorm after each convolution (1,663,562 parameters, 192 running "
                "statistics): for --strategy fedbn", inputs=INPUTS,
)
MNIST_2NN = Task(
    name="mnist-2nn", model=mlp_2nn, load=load, prepare=prepare, num_classes=10, builtin=True, local=local,
    description="the paper's 2NN on MNIST: two hidden layers of 200 units, ReLU (199,210 parameters)", inputs=INPUTS,
)
