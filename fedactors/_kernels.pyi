"""Typed stub of the native extension built from csrc/ (tests/test_kernels.py checks it)."""

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

def weighted_average(
    buffers: Sequence[npt.NDArray[np.float32]],
    weights: Sequence[float],
    *,
    out: npt.NDArray[np.float32] | None = None,
    threads: int = 0,
    accumulate: Literal["float32", "float64"] = "float32",
) -> npt.NDArray[np.float32]:
    """Return sum_j (weights[j] / sum(weights)) * buffers[j]; same bytes at any thread count."""

def stream_read(buffers: Sequence[npt.NDArray[np.float32]], *, threads: int = 0) -> float:
    """Return the float64 sum of every element of buffers, reading each byte once."""

def openmp_max_threads() -> int:
    """Return omp_get_max_threads(): the thread count used when threads <= 0."""
