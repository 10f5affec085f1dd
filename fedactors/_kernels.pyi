"""Typed stub of the native extension built from csrc/ (tests/test_kernels.py checks it)."""

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

Isa = Literal["auto", "baseline", "avx2", "avx512"]

def weighted_average(
    buffers: Sequence[npt.NDArray[np.float32]],
    weights: Sequence[float],
    *,
    out: npt.NDArray[np.float32] | None = None,
    threads: int = 0,
    accumulate: Literal["float32", "float64"] = "float32",
    isa: Isa = "auto",
) -> npt.NDArray[np.float32]:
    """Return sum_j (weights[j] / sum(weights)) * buffers[j]; same bytes at any thread count and isa."""

def weighted_fold(
    buffers: Sequence[npt.NDArray[np.float32]],
    weights: Sequence[float],
    *,
    total: float,
    out: npt.NDArray[np.float32],
    start: bool,
    threads: int = 0,
    isa: Isa = "auto",
) -> npt.NDArray[np.float32]:
    """Fold buffers into out: out (+)= sum_j float32(weights[j] / total) * buffers[j]; returns out.

    Folding clients 0..a-1 with start=True, then a..k-1 with start=False, gives the bytes of one
    weighted_average over all k when total is their weights' sum, added in order in double.
    """

def median(
    buffers: Sequence[npt.NDArray[np.float32]],
    *,
    out: npt.NDArray[np.float32] | None = None,
    threads: int = 0,
    isa: Isa = "auto",
) -> npt.NDArray[np.float32]:
    """Return the coordinate-wise median: np.median(np.stack(buffers), axis=0), bit for bit but for -0.0.

    Even count: float32 (a + b) / 2 of the two middle values. A coordinate where any buffer is
    NaN is NaN (like np.median, not nanmedian). Same bytes at any thread count and isa.
    """

def trimmed_mean(
    buffers: Sequence[npt.NDArray[np.float32]],
    trim_fraction: float,
    *,
    out: npt.NDArray[np.float32] | None = None,
    threads: int = 0,
    isa: Isa = "auto",
) -> npt.NDArray[np.float32]:
    """Return the coordinate-wise mean after dropping the g = floor(trim_fraction * k) smallest and largest.

    trim_fraction in [0, 0.5). Kept values summed in ascending order in float32, then divided
    by k - 2g (aggregate.trimmed_mean_reference, bit for bit but for -0.0); g == 0 is the plain
    mean, rows summed in client order. A coordinate where any buffer is NaN is NaN, even if the
    NaN would have been trimmed. Same bytes at any thread count and isa.
    """

def stream_read(buffers: Sequence[npt.NDArray[np.float32]], *, threads: int = 0, isa: Isa = "auto") -> float:
    """Return the float64 sum of every element of buffers, reading each byte once."""

def count_nonfinite(buffer: npt.NDArray[np.float32], *, threads: int = 0) -> int:
    """Return how many values of buffer are NaN or +-infinity (an exact test of the exponent bits)."""

def server_step(
    method: Literal["fedavgm", "fedadagrad", "fedadam", "fedyogi"],
    aggregate: npt.NDArray[np.float32],
    weights: npt.NDArray[np.float32],
    m: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32] | None = None,
    *,
    lr: float,
    beta1: float,
    beta2: float = 0.99,
    tau: float = 1e-3,
    threads: int = 0,
    isa: Isa = "auto",
) -> npt.NDArray[np.float32]:
    """Return the new global weights after one server-optimizer step on d = aggregate - weights; m, v updated in place."""

def pairwise_sq_distances(
    buffers: Sequence[npt.NDArray[np.float32]],
    *,
    threads: int = 0,
    isa: Isa = "auto",
    max_partials: int = 8 << 20,
) -> npt.NDArray[np.float64]:
    """Return the (k, k) float64 matrix of squared distances between the buffers; same bytes at any thread count and
    isa, and whatever max_partials (the partial sums held at once, in doubles) makes of the grouping of its blocks."""

def clipped_sum(
    buffers: Sequence[npt.NDArray[np.float32]],
    weights: npt.NDArray[np.float32],
    *,
    clip: float,
    threads: int = 0,
    isa: Isa = "auto",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Return (sum_j float32(min(1, clip / |b_j - weights|)) * (b_j - weights), the norms |b_j - weights|)."""

def available_isas() -> list[str]:
    """Return the instruction-set variants this CPU and build can run, narrowest first."""

def openmp_max_threads() -> int:
    """Return omp_get_max_threads(): the thread count used when threads <= 0."""


def exact_add(
    acc: npt.NDArray[np.int64],
    buffer: npt.NDArray[np.float32],
    weight: float,
    *,
    subtract: bool = False,
    threads: int = 0,
    isa: Isa = "auto",
) -> int:
    """acc += round(weight * buffer * 2**32) as int64 (csrc/exact.hpp); returns how many values were left out.

    Exact and order-independent: the same terms in any order or grouping give the same integers.
    weight in [0, 1]; a block holding a value with |weight * value| >= 2**18, NaN or infinity is left
    out; subtract=True on the same buffer takes out exactly what was added. ValueError, acc untouched, if an
    acc value would reach 2**51 grid units (the shares summed add up to more than 1)."""

def exact_merge(acc: npt.NDArray[np.int64], other: npt.NDArray[np.int64], *, threads: int = 0) -> None:
    """acc += other: two exact sums combined, exactly; ValueError, acc untouched, past 2**51 grid units."""

def exact_result(
    acc: npt.NDArray[np.int64],
    *,
    factor: float = 1.0,
    out: npt.NDArray[np.float32] | None = None,
    threads: int = 0,
    isa: Isa = "auto",
) -> npt.NDArray[np.float32]:
    """float32(acc * 2**-32 * factor): the exact sum rounded once (factor 1). ValueError if out overlaps acc or an
    acc value is at 2**51 grid units or past (the shares summed add up to more than 1)."""

def quantize(
    values: npt.NDArray[np.float32], *, bits: int, block: int, key: int, threads: int = 0
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return (codes, lo, step): values quantized stochastically to `bits` levels a block; same codes at any thread count.

    ValueError naming the first value that is NaN or infinite, or the first block whose max - min overflows float32."""

def dequantize(
    codes: npt.NDArray[np.uint8],
    lo: npt.NDArray[np.float32],
    step: npt.NDArray[np.float32],
    *,
    n: int,
    bits: int,
    block: int,
    threads: int = 0,
) -> npt.NDArray[np.float32]:
    """Return the n float32 values lo + q * step that quantize's output stands for."""

def hadamard(values: npt.NDArray[np.float32], *, chunk: int, key: int, inverse: bool = False, threads: int = 0) -> None:
    """Rotate values in place, chunk by chunk: H D x / sqrt(chunk), or with inverse D H y / sqrt(chunk)."""
