"""Compressed updates (issue 27): what a client sends is its update d = w - x encoded in fewer bits.

    --compress q8 | q4 | q2          stochastic uniform quantization, blocks of BLOCK values
    --compress q4:rotate             the same after a randomized Hadamard rotation (Suresh et al. 2017)

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

from dataclasses import dataclass

import numpy as np

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


@dataclass(frozen=True)
class Compressor:
    """One of the --compress schemes; `parse` makes it from its spec."""

    bits: int
    rotate: bool = False

    @classmethod
    def parse(cls, spec: str | None) -> Compressor | None:
        """The compressor `spec` names (None for None); ConfigError, one line, for anything else."""
        if spec is None:
            return None
        name, sep, option = str(spec).partition(":")
        if not (len(name) == 2 and name[0] == "q" and name[1].isdigit() and int(name[1]) in BITS):
            raise ConfigError(f"--compress must be q8, q4 or q2 (with :rotate for the Hadamard rotation), got {spec!r}")
        if sep and option != "rotate":
            raise ConfigError(f"--compress {spec}: the only option is :rotate, got {option!r}")
        return cls(bits=int(name[1]), rotate=bool(sep))

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

    def encode(self, update: np.ndarray, seed: int, round_idx: int, client_id: int, threads: int = 0) -> Encoded:
        """Client `client_id`'s update (float32) in round `round_idx`, encoded (OpenMP `threads`; 0: its default)."""
        from fedactors import _kernels

        values = np.ascontiguousarray(update, dtype=np.float32)
        if self.rotate:  # padded to whole chunks, rotated in place: a copy
            values = np.zeros(self.encoded_length(len(update)), dtype=np.float32)
            values[: len(update)] = update
            _kernels.hadamard(values, chunk=CHUNK, key=_key(Purpose.ROTATION, seed, round_idx), threads=threads)
        codes, lo, step = _kernels.quantize(values, bits=self.bits, block=BLOCK,
                                            key=_key(Purpose.QUANTIZE, seed, round_idx, client_id), threads=threads)
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

    def received(self, weights: np.ndarray, global_weights: np.ndarray, seed: int, round_idx: int,
                 client_id: int, threads: int = 0) -> np.ndarray:
        """The weights the server has of this client: global + decode(encode(weights - global)), float32."""
        update = np.subtract(weights, global_weights, dtype=np.float32)
        encoded = self.encode(update, seed, round_idx, client_id, threads)
        decoded = self.decode(encoded, len(update), seed, round_idx, threads)
        return np.add(global_weights, decoded, dtype=np.float32)


def _key(purpose: Purpose, seed: int, round_idx: int, client_id: int = 0) -> int:
    """A 64-bit key for the native kernels' counter-based draws, from fedactors.seeding's keyed streams."""
    return int(generator(purpose, seed, round_idx, client_id).integers(2**63))
