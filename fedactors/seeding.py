"""The only source of randomness: a NumPy generator per (purpose, seed, round, client).

Every random draw in a run comes from `generator(...)` keyed by what it is for, never from a
process-global RNG or from execution order. So the same seed gives the same run whichever
host trains which client, in whatever order results arrive, and whether or not the run was
stopped and resumed: resuming needs no saved RNG state, only the round number.
"""

import math
from enum import IntEnum

import numpy as np


class Purpose(IntEnum):
    """Separate streams, so that adding a draw for one purpose never shifts another."""

    PARTITION = 1
    SAMPLE = 2
    SHUFFLE = 3
    INIT = 4
    BYZANTINE = 5
    ATTACK = 6
    DP_NOISE = 7
    TORCH = 8  # torch's own generator during a client's training (dropout and other random layers)
    EVAL_CLIENTS = 9  # --eval-clients: which clients hold out a share of their examples, and which examples
    DP_CLIP_COUNT = 10  # --clip adaptive: the noise on the count of clients whose update the clip left whole
    # Numbered apart from the ones above so that purposes added beside them (11, 12, ...) never collide.
    ROTATION = 20  # --compress ...:rotate: a round's random signs (the same for all its clients)
    QUANTIZE = 21  # --compress: a client's rounding draws in a round
    SPEED = 22  # --client-speed lognormal: every client's speed (fedactors.runtime.systems)
    ASYNC_START = 23  # fedbuff, fedasync: the client a freed slot starts (fedactors.runtime.asynchronous)
    FINETUNE = 24  # --finetune-steps, LocalClient.finetune: a client's minibatches and torch draws before it is judged
    SECAGG_GRAPH = 25  # secure aggregation: a round's SecAgg+ neighbour graph (fedactors.secagg.graph)
    HOLDOUT_CLIENTS = 26  # --holdout-clients: which clients never train (judged after fine-tuning only)
    QUANTIZE_DOWN = 27  # --compress-down: the rounding draws of the model a client is sent in a round


def generator(purpose: Purpose, seed: int, round_idx: int = 0, client_id: int = 0) -> np.random.Generator:
    """A fresh generator whose stream depends only on its four keys."""
    if seed < 0 or round_idx < 0 or client_id < 0:
        raise ValueError(f"seed, round and client id must be >= 0, got {seed}, {round_idx}, {client_id}")
    return np.random.default_rng(np.random.SeedSequence([int(purpose), seed, round_idx, client_id]))


def sample_clients(seed: int, round_idx: int, num_clients: int, num_sampled: int) -> np.ndarray:
    """Round `round_idx`'s clients: `num_sampled` of `num_clients`, uniform without replacement, sorted."""
    rng = generator(Purpose.SAMPLE, seed, round_idx)
    return np.sort(rng.choice(num_clients, size=num_sampled, replace=False))


def holdout_clients(seed: int, num_clients: int, fraction: float) -> np.ndarray:
    """--holdout-clients: a seeded `fraction` of the clients (at least one, never all), sorted, that never train."""
    size = min(max(1, math.ceil(fraction * num_clients - 1e-9)), num_clients - 1)
    return np.sort(generator(Purpose.HOLDOUT_CLIENTS, seed).choice(num_clients, size=size, replace=False))


def sample_clients_poisson(seed: int, round_idx: int, num_clients: int, rate: float) -> np.ndarray:
    """Round `round_idx`'s clients under Poisson sampling: each one independently with probability `rate`, sorted.

    What DP-FedAvg's privacy accounting assumes (a round may sample nobody)."""
    rng = generator(Purpose.SAMPLE, seed, round_idx)
    return np.flatnonzero(rng.random(num_clients) < rate)


def client_torch_seed(seed: int, round_idx: int, client_id: int) -> int:
    """The seed of torch's generator while client `client_id` trains in round `round_idx`: a model's own
    randomness (dropout) then depends on the keys alone, not on which host trained it or what it ran before."""
    return int(generator(Purpose.TORCH, seed, round_idx, client_id).integers(2**63 - 1))


def torch_seed(seed: int) -> int:
    """A 63-bit seed for torch's model initialisation, derived from the run seed."""
    return int(generator(Purpose.INIT, seed).integers(2**63 - 1))
