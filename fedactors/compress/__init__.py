"""Compressed updates (issue 27): what a client sends is its update d = w - x encoded in fewer bits.

    --compress q8 | q4 | q2          stochastic uniform quantization, blocks of BLOCK values
    --compress q4:rotate             the same after a randomized Hadamard rotation (Suresh et al. 2017)
    --compress topk:F                the largest fraction F of the coordinates, with error feedback
    --compress sign                  signSGD's signs times the mean magnitude, with error feedback

Top-k and sign are biased; error feedback (Stich et al. 2018; Karimireddy et al. 2019) makes up for
it: a client compresses its update plus the residual it kept from last time, and keeps what the
compression dropped as its new residual. Residuals are per-client state (fedactors.runtime.states:
"feedback/residual", in the run's store), handed to whichever host trains the client and written by
the checkpoints of the rounds it changed in, so a resume continues them exactly; each client seen
costs a float32 copy of the weights.

A block's values become levels between its min and max (2^bits of them), each rounded down or up
at random so that the decoded value is the original in expectation (unbiased); the block's min
and step travel as two float32. The rotation (chunks of CHUNK values, random signs then the
Walsh-Hadamard transform) spreads a few large coordinates over the chunk, so each block's range,
and with it the rounding error, shrinks; the server undoes it after decoding. The arithmetic is
native (fedactors._kernels.quantize, dequantize, hadamard).

Randomness is keyed, never drawn from a process's state: the rotation's signs by (seed, round),
the same for every client of a round so the server inverts one rotation; the rounding draws by
(seed, round, client). So a client's encoding is the same on any host, on a retry and after a
resume. Every client encodes and the server's decoding is deterministic, so the host that trained
a client decodes it on the server's behalf (exactly the bytes the server would get) before any
sum: FedAvg's exact sum, host sums, robust aggregators, server optimizers and DP-FedAvg (which
clips the decoded update, so its sensitivity stays bounded) all take decoded weights as before.
The bytes counted up are the encoded buffers' (fedactors.traffic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedactors.aggregate import all_finite
from fedactors.errors import ConfigError
from fedactors.seeding import Purpose, generator

BITS = (2, 4, 8)
BLOCK = 512  # values a block shares one min and step: 8 bytes, 1.6% over q8's codes, 6.3% over q2's
CHUNK = 4096  # values a rotation mixes (a power of 4: the 1/sqrt(CHUNK) scaling is exact)


@dataclass(frozen=True)
class Encoded:
    """What a client sends: the packed levels and each block's min and step."""

    codes: np.ndarray  # uint8
    lo: np.ndarray  # float32, one a block
    step: np.ndarray  # float32, one a block
    length: int  # values encoded (the update's, padded to whole CHUNKs when rotated)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.lo.nbytes + self.step.nbytes


SPECS = "q8, q4 or q2 (with :rotate for the Hadamard rotation), topk:F with F in (0, 1), or sign"


def parse(spec: str | None) -> Compressor | TopK | Sign | None:
    """The compressor `spec` names (None for None); ConfigError, one line, for anything else."""
    if spec is None:
        return None
    name, sep, option = str(spec).partition(":")
    if name == "topk":
        try:
            fraction = float(option)
        except ValueError:
            fraction = math.nan
        if not 0 < fraction < 1:
            raise ConfigError(f"--compress {spec}: topk keeps a fraction F of the coordinates, F in (0, 1)")
        return TopK(fraction)
    if name == "sign" and not sep:
        return Sign()
    if not (len(name) == 2 and name[0] == "q" and name[1].isdigit() and int(name[1]) in BITS):
        raise ConfigError(f"--compress must be {SPECS}, got {spec!r}")
    if sep and option != "rotate":
        raise ConfigError(f"--compress {spec}: the only option of {name} is :rotate, got {option!r}")
    return Compressor(bits=int(name[1]), rotate=bool(sep))


@dataclass(frozen=True)
class Compressor:
    """Stochastic uniform quantization (q8, q4, q2), optionally after the rotation; `parse` makes it from its spec."""

    bits: int
    rotate: bool = False
    feedback = False  # unbiased: no error feedback

    @classmethod
    def parse(cls, spec: str | None) -> Compressor | TopK | Sign | None:
        return parse(spec)

    @property
    def spec(self) -> str:
        return f"q{self.bits}" + (":rotate" if self.rotate else "")

    def encoded_length(self, n: int) -> int:
        """Values encoded for an update of n: n, or n padded to whole rotation chunks."""
        return -(-n // CHUNK) * CHUNK if self.rotate else n

    def encoded_bytes(self, n: int) -> int:
        """Bytes an update of n float32 values is sent in: the codes of every block, then two float32 a block."""
        blocks = -(-self.encoded_length(n) // BLOCK)
        return blocks * (BLOCK * self.bits // 8) + 8 * blocks

    def encode(self, update: np.ndarray, seed: int, round_idx: int, client_id: int, threads: int = 0,
               purpose: Purpose = Purpose.QUANTIZE) -> Encoded:
        """Client `client_id`'s update (float32) in round `round_idx`, encoded (OpenMP `threads`; 0: its default).
        `purpose` keys the rounding draws: the uplink's, or QUANTIZE_DOWN for what the server sends it."""
        from fedactors import _kernels

        values = _finite(update)
        if self.rotate:  # padded to whole chunks, rotated in place: a copy
            values = np.zeros(self.encoded_length(len(update)), dtype=np.float32)
            values[: len(update)] = update
            _kernels.hadamard(values, chunk=CHUNK, key=_key(Purpose.ROTATION, seed, round_idx), threads=threads)
        codes, lo, step = _kernels.quantize(values, bits=self.bits, block=BLOCK,
                                            key=_key(purpose, seed, round_idx, client_id), threads=threads)
        return Encoded(codes, lo, step, len(values))

    def decode(self, encoded: Encoded, length: int, seed: int, round_idx: int, threads: int = 0) -> np.ndarray:
        """The update (float32, `length` values) the server reads from `encoded`."""
        from fedactors import _kernels

        values = _kernels.dequantize(encoded.codes, encoded.lo, encoded.step, n=encoded.length, bits=self.bits,
                                     block=BLOCK, threads=threads)
        if self.rotate:
            _kernels.hadamard(values, chunk=CHUNK, key=_key(Purpose.ROTATION, seed, round_idx), inverse=True,
                              threads=threads)
        return values[:length]


@dataclass(frozen=True)
class Sparse:
    """Top-k's message: the kept coordinates' indices (uint32) and values (float32)."""

    index: np.ndarray
    values: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.values.nbytes


@dataclass(frozen=True)
class TopK:
    """The largest fraction of the update's coordinates by magnitude (ties: the lower index), with error feedback."""

    fraction: float
    feedback = True

    @property
    def spec(self) -> str:
        return f"topk:{self.fraction:g}"

    def kept(self, n: int) -> int:
        return max(1, math.ceil(self.fraction * n - 1e-9))

    def encoded_bytes(self, n: int) -> int:
        return 8 * self.kept(n)  # a uint32 index and a float32 value each

    def encode(self, update: np.ndarray, seed: int = 0, round_idx: int = 0, client_id: int = 0,
               threads: int = 0) -> Sparse:
        """The k largest |values| (deterministic: no draws); ValueError if one is NaN or infinite."""
        update = _finite(update)
        k = self.kept(len(update))
        # A stable sort of -|v| (ties by index): introselect's order could depend on NumPy's version, this cannot.
        index = np.sort(np.argsort(-np.abs(update), kind="stable")[:k]).astype(np.uint32)
        return Sparse(index, update[index].astype(np.float32))

    def decode(self, encoded: Sparse, length: int, seed: int = 0, round_idx: int = 0, threads: int = 0) -> np.ndarray:
        out = np.zeros(length, np.float32)
        out[encoded.index] = encoded.values
        return out


@dataclass(frozen=True)
class Signs:
    """Sign's message: one bit a coordinate (packed) and the mean magnitude."""

    bits: np.ndarray
    scale: np.float32

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes + 4


@dataclass(frozen=True)
class Sign:
    """signSGD with error feedback (Karimireddy et al., ICML 2019): sign(v) * mean(|v|)."""

    feedback = True
    spec = "sign"

    def encoded_bytes(self, n: int) -> int:
        return -(-n // 8) + 4

    def encode(self, update: np.ndarray, seed: int = 0, round_idx: int = 0, client_id: int = 0,
               threads: int = 0) -> Signs:
        """The signs (>= 0 as +) and the mean magnitude (deterministic: no draws); ValueError if one is NaN or infinite."""
        update = _finite(update)
        scale = np.float32(np.abs(update, dtype=np.float64).mean())
        return Signs(np.packbits(update >= 0), scale)

    def decode(self, encoded: Signs, length: int, seed: int = 0, round_idx: int = 0, threads: int = 0) -> np.ndarray:
        positive = np.unpackbits(encoded.bits, count=length).astype(bool)
        return np.where(positive, encoded.scale, -encoded.scale).astype(np.float32)


def send(compressor: Compressor | TopK | Sign, weights: np.ndarray, global_weights: np.ndarray, seed: int,
         round_idx: int, client_id: int, residual: np.ndarray | None = None,
         threads: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(the weights the server has of this client, the client's new residual or None).

    The client sends encode(w - x + residual) (no residual without error feedback); the server
    has x + decode of it; with error feedback the client keeps (w - x + residual) - decoded.
    An update holding NaN or infinity is not encoded: the server has x + it, which holds them too,
    so it rejects the client as an uncompressed one (not a failure to retry: its seeds give it
    again), and there is no new residual (top-k would have dropped the NaN into it, for good)."""
    update = np.subtract(weights, global_weights, dtype=np.float32)
    if compressor.feedback and residual is not None:
        update += residual
    if not all_finite(update):
        return np.add(global_weights, update, dtype=np.float32), None
    encoded = compressor.encode(update, seed, round_idx, client_id, threads=threads)
    decoded = compressor.decode(encoded, len(update), seed, round_idx, threads=threads)
    new_residual = np.subtract(update, decoded, dtype=np.float32) if compressor.feedback else None
    return np.add(global_weights, decoded, dtype=np.float32), new_residual


RESIDUAL_PREFIX = "residual"  # a residual's buffer name in a checkpoint written before per-client state


def old_residuals(buffers: dict[str, np.ndarray]) -> tuple[dict[int, np.ndarray], dict[str, np.ndarray]]:
    """({client: its residual} among a checkpoint's buffers as fedactors wrote them before per-client state,
    "residual<k>"; the rest, the strategy's). Copies: a checkpoint's arrays are read-only views."""
    mine = {int(k[len(RESIDUAL_PREFIX):]): np.array(v) for k, v in buffers.items() if k.startswith(RESIDUAL_PREFIX)}
    return mine, {k: v for k, v in buffers.items() if not k.startswith(RESIDUAL_PREFIX)}


def first_nonfinite(update: np.ndarray) -> int | None:
    """The index of the update's first NaN or infinite value, or None (a native scan, ~0.1 ms for 1.66 M values)."""
    from fedactors import _kernels

    if _kernels.count_nonfinite(update) == 0:
        return None
    return int(np.flatnonzero(~np.isfinite(update))[0])


def _finite(update: np.ndarray) -> np.ndarray:
    """`update`, float32 and contiguous, if every value is finite; else ValueError naming the first that is not."""
    values = np.ascontiguousarray(update, dtype=np.float32)
    at = first_nonfinite(values)
    if at is not None:
        raise ValueError(f"the update holds NaN or infinity (values[{at}] is {values[at]}): it cannot be encoded")
    return values


def _key(purpose: Purpose, seed: int, round_idx: int, client_id: int = 0) -> int:
    """A 64-bit key for the native kernels' counter-based draws, from fedactors.seeding's keyed streams."""
    return int(generator(purpose, seed, round_idx, client_id).integers(2**63))
