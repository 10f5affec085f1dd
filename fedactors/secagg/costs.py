"""What secure aggregation costs a round: bytes per client exactly, compute seconds by a calibrated count.

Bytes are what the protocol's messages hold (fedactors.secagg.protocol's sizes; the tests hold
these formulas to the bytes simulate_round counts), for the round's bytes_up and bytes_down.
Compute is dominated by few operations: whole-vector PRG expansions (AES-128-CTR, added into the
sum), X25519 agreements, Shamir splits and combines; `client_work` and `server_work` count them,
`calibrate` times one of each on this machine, and `estimate_seconds` multiplies: a --dry-run
preview of a round's client and server seconds without running it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedactors.secagg import shamir
from fedactors.secagg.protocol import (
    ID_BYTES,
    KEY_BYTES,
    KEY_SHARE_BYTES,
    PUBLIC_KEYS_BYTES,
    SEED_BYTES,
    SEED_SHARE_BYTES,
    SHARE_CIPHERTEXT_BYTES,
    VALUE_BYTES,
    MaskStream,
    agree,
    encode,
)


@dataclass(frozen=True)
class ClientBytes:
    """One client's bytes in a round, beyond the global model it receives as without secure aggregation."""

    up: int  # public keys, encrypted shares, the masked vector, unmasking shares (replaces the float32 update)
    down: int  # neighbours' public keys, shares held for them, the ids of neighbours that dropped


def client_bytes(neighbours: int, length: int, *, dropped_neighbours: int = 0, masked: bool = True,
                 unmasks: bool = True) -> ClientBytes:
    """A client's bytes with `neighbours` neighbours that all shared keys, `dropped_neighbours` of them then dropped
    before masking; `masked`: it sent its vector; `unmasks`: it answered the unmasking."""
    up = PUBLIC_KEYS_BYTES + neighbours * (ID_BYTES + SHARE_CIPHERTEXT_BYTES)
    down = neighbours * (ID_BYTES + PUBLIC_KEYS_BYTES) + neighbours * (ID_BYTES + SHARE_CIPHERTEXT_BYTES)
    if masked:
        up += VALUE_BYTES * length
    if masked and unmasks:
        down += ID_BYTES * dropped_neighbours
        up += ((neighbours - dropped_neighbours) * (ID_BYTES + SEED_SHARE_BYTES)
               + dropped_neighbours * (ID_BYTES + KEY_SHARE_BYTES))
    return ClientBytes(up=up, down=down)


@dataclass(frozen=True)
class Work:
    """Counts of the operations that take a round's time (the rest is bookkeeping)."""

    expansions: int = 0  # PRG streams of `length` uint64 added to or taken off a vector
    agreements: int = 0  # X25519 agreements, each followed by HKDF
    encodes: int = 0  # updates put on ExactSum's grid (one exact_add of a fresh accumulator)
    sums: int = 0  # masked vectors added into the server's sum
    splits: int = 0  # Shamir splits (k shares, threshold t) of a client's 48 bytes of secrets
    combines: int = 0  # Shamir combines of one secret from t shares


def client_work(neighbours: int) -> Work:
    """A client that goes through the whole round with all its neighbours: 2k agreements, k + 1 expansions."""
    return Work(expansions=neighbours + 1, agreements=2 * neighbours, encodes=1, splits=1)


def server_work(survivors: int, dropped_masked_pairs: int, dropped: int) -> Work:
    """The server's: a self mask per survivor, and for each dropped client each surviving neighbour's pairwise mask.

    dropped_masked_pairs: sum over the clients dropped before masking of their neighbours that sent
    vectors (for SecAgg's complete graph, dropped * survivors).
    """
    return Work(expansions=survivors + dropped_masked_pairs, agreements=dropped_masked_pairs, sums=survivors,
                combines=survivors + dropped)


@dataclass(frozen=True)
class Rates:
    """Seconds per operation on this machine, for one length, threshold and neighbour count."""

    expansion: float
    agreement: float
    encode: float
    sum: float
    split: float
    combine: float


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def calibrate(length: int, neighbours: int, threshold: int, *, repeats: int = 3) -> Rates:
    """Time one of each operation (the best of `repeats`): about (repeats * 5) whole-vector passes."""
    stream = MaskStream(length)
    acc = np.zeros(length, dtype=np.uint64)
    update = np.full(length, 0.01, dtype=np.float32)
    private = X25519PrivateKey.generate()
    public = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    secret = np.zeros(shamir.chunks_for(KEY_BYTES) + shamir.chunks_for(SEED_BYTES), dtype=np.int64)
    xs = np.arange(1, neighbours + 1, dtype=np.int64)
    coefficients = np.zeros((threshold - 1, len(secret)), dtype=np.int64)
    shares = shamir.split(secret, xs, threshold, coefficients)
    return Rates(
        expansion=_best(lambda: stream.add(acc, bytes(16), +1), repeats),
        agreement=_best(lambda: agree(private, public, b"calibrate", 0), 20 * repeats),
        encode=_best(lambda: encode(update, 1, 1), repeats),
        sum=_best(lambda: np.add(acc, acc, out=acc), repeats),
        split=_best(lambda: shamir.split(secret, xs, threshold, coefficients), repeats),
        combine=_best(lambda: shamir.combine(xs[:threshold], shares[:threshold, :shamir.chunks_for(SEED_BYTES)]),
                      repeats),
    )


def estimate_seconds(work: Work, rates: Rates) -> float:
    """The seconds `work` takes at `rates`."""
    return (work.expansions * rates.expansion + work.agreements * rates.agreement + work.encodes * rates.encode
            + work.sums * rates.sum + work.splits * rates.split + work.combines * rates.combine)
