"""MNIST: the files, read as they are, and normalised once at load time (the MNIST tasks' data).

The files are torchvision's layout, `DATA_DIR/MNIST/raw/*-ubyte`. When they are absent,
torchvision's `datasets.MNIST(download=True)` fetches them; reading is a direct parse of the
IDX files into NumPy (the same bytes torchvision reads, checked in tests), so a run needs
neither torch nor PIL in the process that loads the data. How examples are split among
clients is fedactors.data.partition's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedactors.errors import DataError
from fedactors.data.arrays import Arrays

MEAN, STD = 0.1307, 0.3081
ENV_VAR = "FEDACTORS_DATA"
FILES = {
    "train_images": ("train-images-idx3-ubyte", 2051, (60_000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte", 2049, (60_000,)),
    "test_images": ("t10k-images-idx3-ubyte", 2051, (10_000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049, (10_000,)),
}


@dataclass(frozen=True)
class Mnist:
    """Images as float32 (N, 1, 28, 28), normalised; labels as int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def resolve_data_dir(flag: str | None) -> Path:
    """--data-dir, else $FEDACTORS_DATA, else the per-user cache directory."""
    if flag:
        return Path(flag).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("fedactors")) / "data"


def missing_files(data_dir: Path) -> list[str]:
    """Which of the four files are not in `data_dir` (none: loading reads them and downloads nothing)."""
    return [name for name, *_ in FILES.values() if not (data_dir / "MNIST" / "raw" / name).is_file()]


def load_mnist(data_dir: Path, *, download: bool = True) -> Mnist:
    """Read (downloading first if absent and allowed) and normalise MNIST from `data_dir`."""
    raw = load_mnist_raw(data_dir, download=download)
    return Mnist(train_images=normalise(raw.x_train), train_labels=raw.y_train.astype(np.int64),
                 test_images=normalise(raw.x_test), test_labels=raw.y_test.astype(np.int64))


def load_mnist_raw(data_dir: Path, *, download: bool = True) -> Arrays:
    """The four files as they are: uint8 images (N, 28, 28) and labels (N,), downloading first if absent and allowed."""
    raw = data_dir / "MNIST" / "raw"
    missing = missing_files(data_dir)
    if missing and download:
        _download(data_dir)
        missing = missing_files(data_dir)
    if missing:
        raise DataError(
            f"MNIST not found: {raw} lacks {', '.join(missing)}; pass --data-dir or set "
            f"{ENV_VAR} to a directory holding MNIST/raw/*-ubyte"
        )
    arrays = {key: read_idx(raw / name, magic, shape) for key, (name, magic, shape) in FILES.items()}
    return Arrays(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"])


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28): scaled to [0, 1], then (x - mean) / std."""
    out = images.astype(np.float32)[:, None, :, :]
    out *= np.float32(1.0 / 255.0)
    out -= np.float32(MEAN)
    out /= np.float32(STD)
    return out


def read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """An uncompressed big-endian IDX file of unsigned bytes, checked against its expected header."""
    blob = path.read_bytes()
    header_len = 4 * (1 + len(shape))
    header = np.frombuffer(blob[:header_len], dtype=">u4") if len(blob) >= header_len else None
    if header is None or header[0] != magic or tuple(int(d) for d in header[1:]) != shape:
        raise DataError(f"{path} is not the MNIST file it is named after (bad IDX header)")
    body = np.frombuffer(blob, dtype=np.uint8, offset=header_len)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated or padded: {body.size} bytes of data, expected {int(np.prod(shape))}")
    return body.reshape(shape)


def _download(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        from torchvision import datasets

        for train in (True, False):
            datasets.MNIST(root=str(data_dir), train=train, download=True)
    except Exception as exc:  # offline, unwritable, mirror down: all mean the same to the user
        # torchvision's message puts each mirror's error on lines of their own after a bare
        # "Error downloading X:"; the reason is in those lines, so keep them, on one line.
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 400:
            reason = reason[:397] + "..."
        raise DataError(
            f"MNIST not found in {data_dir / 'MNIST' / 'raw'} and the download failed ({reason}); "
            f"copy the four *-ubyte files there, or pass --data-dir / set {ENV_VAR}"
        ) from None
