"""Simulated faulty (Byzantine) clients: which clients they are, and what they send instead.

Pure NumPy, no Ray and no torch: a ClientHost calls `corrupt` on the weights a Byzantine
client would have returned. Every attack is expressed on the client's *update*, delta =
local - global, the quantity the server averages in effect:

- sign-flip: global - scale * delta (the update reversed and amplified; with scale > m/b - 1,
  b attackers among m sampled clients turn FedAvg's step uphill)
- gaussian:  global + N(0, scale^2) per coordinate (the update replaced by noise)
- nan:       every value NaN (a diverged or broken client)
"""

from __future__ import annotations

import numpy as np

from fedactors.config import ATTACKS
from fedactors.seeding import Purpose, generator


def byzantine_clients(seed: int, num_clients: int, num_byzantine: int) -> frozenset[int]:
    """The run's faulty clients: `num_byzantine` of `num_clients`, fixed for the whole run by `seed`."""
    if num_byzantine == 0:
        return frozenset()
    rng = generator(Purpose.BYZANTINE, seed)
    return frozenset(int(c) for c in rng.choice(num_clients, size=num_byzantine, replace=False))


def corrupt(
    attack: str,
    local: np.ndarray,
    global_weights: np.ndarray,
    *,
    scale: float,
    seed: int,
    round_idx: int,
    client_id: int,
) -> np.ndarray:
    """What Byzantine client `client_id` sends in round `round_idx` instead of `local` (a new float32 array)."""
    if attack == "sign-flip":
        delta = local - global_weights
        return global_weights - np.float32(scale) * delta  # float32 throughout
    if attack == "gaussian":
        rng = generator(Purpose.ATTACK, seed, round_idx, client_id)
        noise = rng.standard_normal(local.shape, dtype=np.float32)
        noise *= np.float32(scale)
        return global_weights + noise
    if attack == "nan":
        return np.full_like(local, np.nan)
    raise ValueError(f"unknown attack {attack!r}; expected one of {', '.join(ATTACKS)}")
