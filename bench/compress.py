"""Benchmark the update compressors (issue 27): encode and decode of the CNN's 1,663,370 floats.

For each of q8, q4, q2 (and q4 with the Hadamard rotation) at one thread: the native encode
(fedactors.compress.Compressor.encode: rotation, quantization, packing) and decode, against

  - the streaming floor: _kernels.stream_read of the same float32 buffer at one thread, measured in
    the same run (what reading the update once costs; an encode also writes 1/4..1/16 of it, a
    decode writes it whole, so 1x is out of reach and 2x is the goal);
  - NumPy doing the same math (per-block min and step, stochastic rounding with a NumPy generator,
    packing with shifts; the rotation with a vectorised butterfly), goal >= 5x slower than native.

    .venv/bin/python bench/compress.py [--repeats 7]

Prints a table, then one JSON object as the last stdout line. Figures are medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from fedactors import _kernels
from fedactors.compress import BLOCK, CHUNK, Compressor

N = 1_663_370


def numpy_encode(x: np.ndarray, bits: int, rotate: bool, rng: np.random.Generator) -> tuple:
    """The same encoding in NumPy: padded, optionally rotated (random signs, then an in-place butterfly), then
    quantized per block with stochastic rounding and packed."""
    n = -(-len(x) // CHUNK) * CHUNK if rotate else len(x)
    v = np.zeros(-(-n // BLOCK) * BLOCK, np.float32)
    v[: len(x)] = x
    if rotate:
        signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=n)
        v[:n] = numpy_hadamard(v[:n] * signs)
    blocks = v.reshape(-1, BLOCK)
    lo = blocks.min(axis=1)
    step = (blocks.max(axis=1) - lo) / np.float32(2**bits - 1)
    t = (blocks - lo[:, None]) / np.where(step > 0, step, 1)[:, None]
    q = np.floor(t)
    q = np.clip(q + (rng.random(t.shape, dtype=np.float32) < t - q), 0, 2**bits - 1).astype(np.uint8)
    per_byte = 8 // bits
    q = q.reshape(-1, per_byte)
    codes = np.zeros(len(q), np.uint8)
    for j in range(per_byte):
        codes |= q[:, j] << np.uint8(bits * j)
    return codes, lo, step


def numpy_hadamard(v: np.ndarray) -> np.ndarray:
    """H v / sqrt(CHUNK) chunk by chunk, a vectorised butterfly per level."""
    chunks = v.reshape(-1, CHUNK).copy()
    h = 1
    while h < CHUNK:
        c = chunks.reshape(len(chunks), -1, 2, h)
        c[:] = np.stack([c[:, :, 0] + c[:, :, 1], c[:, :, 0] - c[:, :, 1]], axis=2)
        h *= 2
    return chunks.ravel() / np.float32(np.sqrt(CHUNK))


def numpy_decode(codes: np.ndarray, lo: np.ndarray, step: np.ndarray, bits: int, signs: np.ndarray | None) -> np.ndarray:
    per_byte = 8 // bits
    q = (codes[:, None] >> (np.arange(per_byte, dtype=np.uint8) * bits)) & np.uint8(2**bits - 1)
    v = (lo[:, None] + q.reshape(len(lo), -1).astype(np.float32) * step[:, None]).ravel()
    if signs is not None:  # the inverse rotation: D H y / sqrt(CHUNK)
        v[: len(signs)] = numpy_hadamard(v[: len(signs)]) * signs
    return v


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(scale=1e-3, size=N).astype(np.float32)
    rng = np.random.default_rng(1)
    specs = ["q8", "q4", "q2", "q4:rotate"]
    cases = {"floor_read": lambda: _kernels.stream_read([x], threads=1)}
    for spec in specs:
        c = Compressor.parse(spec)
        enc = c.encode(x, 0, 1, 2, threads=1)
        cases[f"{spec} encode"] = lambda c=c: c.encode(x, 0, 1, 2, threads=1)
        cases[f"{spec} decode"] = lambda c=c, enc=enc: c.decode(enc, N, 0, 1, threads=1)
        cases[f"{spec} numpy encode"] = lambda c=c: numpy_encode(x, c.bits, c.rotate, rng)
        codes, lo, step = numpy_encode(x, c.bits, c.rotate, rng)
        signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=c.encoded_length(N)) if c.rotate else None
        cases[f"{spec} numpy decode"] = lambda c=c, a=(codes, lo, step, signs): numpy_decode(*a[:3], c.bits, a[3])
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved: a noisy neighbour slows every case alike
        for name, fn in cases.items():
            seconds[name].append(timed(fn))
    med = {name: statistics.median(v) for name, v in seconds.items()}
    floor = med["floor_read"]
    print(f"{'case':<18} {'native ms':>10} {'x floor':>8} {'numpy ms':>10} {'numpy/native':>13}")
    figures = {"floor_read_ms": floor * 1e3}
    for spec in specs:
        for what in ("encode", "decode"):
            native, numpy_s = med[f"{spec} {what}"], med[f"{spec} numpy {what}"]
            print(f"{spec + ' ' + what:<18} {native * 1e3:>10.2f} {native / floor:>8.2f} {numpy_s * 1e3:>10.1f} "
                  f"{numpy_s / native:>13.1f}")
            figures[f"{spec}_{what}_x_floor"] = native / floor
            figures[f"{spec}_{what}_numpy_x"] = numpy_s / native
    print(f"floor: a streaming read of {N * 4 / 1e6:.2f} MB at one thread, {floor * 1e3:.2f} ms")
    print(json.dumps({"benchmark": "compress", "n": N, **figures}))


if __name__ == "__main__":
    main()
