"""FedAvg over flat float32 weight buffers: the native kernel and its NumPy oracle. No Ray here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedactors import _kernels


def fedavg(
    buffers: Sequence[np.ndarray],
    num_examples: Sequence[int | float],
    *,
    out: np.ndarray | None = None,
    threads: int = 0,
) -> np.ndarray:
    """Return sum_k (n_k / sum n) * buffers[k] in float32, clients summed in the given order.

    Buffers must be float32, 1-D, C-contiguous and of equal length (read-only is fine); they
    are never copied. Raises ValueError naming the bad buffer or count. `out` is written in
    place and returned; threads <= 0 uses OpenMP's default. Same bytes at any thread count.
    """
    return _kernels.weighted_average(buffers, num_examples, out=out, threads=threads)


def fedavg_reference(buffers: Sequence[np.ndarray], num_examples: Sequence[int | float]) -> np.ndarray:
    """Return the same average computed in NumPy with float64 accumulation in client order."""
    total = 0.0
    for n in num_examples:
        total += float(n)
    acc = np.zeros(np.shape(buffers[0]), dtype=np.float64)
    for buffer, n in zip(buffers, num_examples, strict=True):
        acc += (float(n) / total) * np.asarray(buffer, dtype=np.float64)
    return acc.astype(np.float32)
