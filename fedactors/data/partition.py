"""How the training examples are split among clients: seeded, deterministic, every client non-empty.

    iid         shuffle (seeded) and deal: every client n/K examples (n/K rounded, when K does not divide n)
    noniid      the paper's pathological split: sort by label (stable), cut into 2K shards, 2 at random to each
    shards      the same with --shards-per-client S (noniid is shards with S = 2)
    dirichlet   label skew after Hsu et al. 2019: each label's examples split among the clients in
                proportions drawn from Dirichlet(alpha); small alpha, few labels per client
    unbalanced  IID labels, client sizes proportional to log-normal(0, sigma) draws (at least 1 each)
    natural     the data's own: every owner of training examples (Arrays.client_train) is one client

Every draw comes from seeding.generator(PARTITION, seed), so a partition depends on the seed
and the labels alone. A scheme that would leave a client without examples is refused with one
line (dirichlet first redraws, up to MAX_DRAWS times, as most papers' code does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedactors.errors import ConfigError
from fedactors.seeding import Purpose, generator

SCHEMES = ("iid", "noniid", "shards", "dirichlet", "unbalanced", "natural")
MAX_DRAWS = 100


class Parts(Sequence):
    """The clients' training indices, compact: client k's are `indices[offsets[k]:offsets[k + 1]]`.

    Two arrays whatever K is, so a million clients travel to the hosts (and pickle) as two buffers
    rather than a million small arrays; `parts[k]` is a read-only view, `sizes` every client's count."""

    def __init__(self, indices: np.ndarray, offsets: np.ndarray) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.indices.flags.writeable = False
        self.offsets.flags.writeable = False

    @classmethod
    def of(cls, parts: Sequence[np.ndarray]) -> Parts:
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        indices = np.concatenate(parts) if len(parts) else np.empty(0, np.int64)
        return cls(indices, np.concatenate([[0], np.cumsum(sizes)]))

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(f"client {k} of {len(self)}")
        k %= len(self)
        return self.indices[self.offsets[k] : self.offsets[k + 1]]


def partition(labels: np.ndarray, num_clients: int | None, scheme: str, seed: int, *, shards_per_client: int = 2,
              alpha: float = 0.5, sigma: float = 1.0, owners: np.ndarray | None = None) -> Parts:
    """Client k's training indices (sorted), for every k < num_clients.

    `owners`: each example's owner as a client number 0..K-1 (fedactors.task.owner_numbers), which
    "natural" needs and the synthetic schemes ignore; num_clients is then K (or None)."""
    n = len(labels)
    if scheme == "natural":
        if owners is None:
            raise ConfigError("--partition natural needs data that says who owns each example (client_train in the "
                              "npz or the task's Arrays, or --data leaf:DIR)")
        parts = natural(owners)
        if num_clients is not None and num_clients != len(parts):
            raise ConfigError(f"--partition natural: the data has {len(parts)} owners, not {num_clients} clients "
                              "(leave the number of clients out: the owners are the clients)")
        return parts
    if num_clients > n:
        raise ConfigError(f"--clients {num_clients} is more than the {n} training examples")
    if scheme == "iid":
        parts = iid(n, num_clients, seed)
    elif scheme in ("noniid", "shards"):
        parts = shards(labels, num_clients, seed, 2 if scheme == "noniid" else shards_per_client)
    elif scheme == "dirichlet":
        parts = dirichlet(labels, num_clients, seed, alpha)
    elif scheme == "unbalanced":
        parts = unbalanced(n, num_clients, seed, sigma)
    else:
        raise ConfigError(f"--partition must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    return parts if isinstance(parts, Parts) else Parts.of(parts)


def natural(owners: np.ndarray) -> Parts:
    """Client k's examples are those `owners` gives to k (each client's in ascending order): one stable sort,
    so a million owners cost what sorting the examples costs."""
    owners = np.asarray(owners, dtype=np.int64)
    sizes = np.bincount(owners)
    if len(sizes) == 0 or (sizes == 0).any():
        raise ConfigError("--partition natural: owner numbers must run 0..K-1 with every owner holding an example")
    return Parts(np.argsort(owners, kind="stable"), np.concatenate([[0], np.cumsum(sizes)]))


def iid(num_examples: int, num_clients: int, seed: int) -> Parts:
    """Shuffle all indices (seeded) and deal them out in K runs of n/K (the first n mod K one longer), each sorted.

    (np.array_split's runs, each np.sort-ed, made in one vectorised sort: O(n log n) whatever K is.)"""
    order = generator(Purpose.PARTITION, seed).permutation(num_examples)
    base, extra = divmod(num_examples, num_clients)
    sizes = np.full(num_clients, base, dtype=np.int64)
    sizes[:extra] += 1
    owner = np.repeat(np.arange(num_clients), sizes)
    return Parts(order[np.lexsort((order, owner))], np.concatenate([[0], np.cumsum(sizes)]))


def shards(labels: np.ndarray, num_clients: int, seed: int, per_client: int = 2) -> list[np.ndarray]:
    """Sort by label (stable), cut into per_client * K shards of equal size (n/(S*K) rounded), deal S at random to each."""
    num_shards = per_client * num_clients
    if num_shards > len(labels):
        raise ConfigError(f"{num_shards} shards ({per_client} for each of {num_clients} clients) is more than the "
                          f"{len(labels)} training examples")
    by_label = np.argsort(labels, kind="stable")
    cut = np.array_split(by_label, num_shards)
    order = generator(Purpose.PARTITION, seed).permutation(num_shards)
    return [np.sort(np.concatenate([cut[order[per_client * k + j]] for j in range(per_client)]))
            for k in range(num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, seed: int, alpha: float) -> list[np.ndarray]:
    """Each label's examples (shuffled) split among the clients by proportions ~ Dirichlet(alpha, ..., alpha).

    Drawn again while some client gets nothing, up to MAX_DRAWS times (all draws from the one
    seeded generator, so the result is still a function of the seed); then refused.
    """
    if not alpha > 0:
        raise ConfigError(f"--alpha must be positive, got {alpha!r}")
    rng = generator(Purpose.PARTITION, seed)
    classes = np.unique(labels)
    members = {c: np.flatnonzero(labels == c) for c in classes}
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(members[c])
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
            for k, piece in enumerate(np.split(idx, cuts)):
                parts[k].append(piece)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if all(len(r) for r in result):
            return result
    raise ConfigError(f"--partition dirichlet --alpha {alpha:g} left some of the {num_clients} clients without examples "
                      f"in {MAX_DRAWS} draws; raise --alpha or lower --clients")


def unbalanced(num_examples: int, num_clients: int, seed: int, sigma: float) -> list[np.ndarray]:
    """IID labels; client k gets a share of the shuffled examples proportional to a log-normal(0, sigma) draw."""
    if not sigma >= 0:
        raise ConfigError(f"--sigma must be >= 0, got {sigma!r}")
    rng = generator(Purpose.PARTITION, seed)
    order = rng.permutation(num_examples)
    weights = rng.lognormal(0.0, sigma, num_clients)
    if not (np.isfinite(weights.sum()) and weights.sum() > 0):
        raise ConfigError(f"--sigma {sigma:g} is too large: the log-normal draws overflow; use a smaller one "
                          "(sigma 2 already gives some clients hundreds of times the examples of others)")
    sizes = 1 + np.floor(weights / weights.sum() * (num_examples - num_clients)).astype(np.int64)
    sizes[np.argsort(-weights, kind="stable")[: num_examples - sizes.sum()]] += 1  # deal the remainder to the largest
    return [np.sort(chunk) for chunk in np.split(order, np.cumsum(sizes)[:-1])]


HOLDOUT_FRACTION = 0.2  # --eval-clients: the share of a chosen client's examples kept for its own evaluation


def hold_out(parts: Parts, fraction: float, seed: int, *, examples: float | None = None) -> tuple[Parts, Parts]:
    """(training parts, evaluation parts): a seeded `fraction` of the clients (at least one) each keep
    `examples` of their examples (HOLDOUT_FRACTION, 20%, unless given: --client-test-fraction; rounded, at
    least one, never all) out of training, to be evaluated on; the other clients train on everything and
    are not evaluated on their own.

    Vectorised over the examples (a random key each, ranked within its client), so it costs the
    same for a million clients as one sort of the examples."""
    rng = generator(Purpose.EVAL_CLIENTS, seed)
    k = len(parts)
    chosen = np.zeros(k, dtype=bool)
    chosen[rng.choice(k, size=max(1, math.ceil(fraction * k - 1e-9)), replace=False)] = True
    sizes = parts.sizes
    share = HOLDOUT_FRACTION if examples is None else examples
    held = np.where(chosen & (sizes >= 2), np.clip(np.round(share * sizes), 1, sizes - 1), 0).astype(np.int64)
    owner = np.repeat(np.arange(k), sizes)
    order = np.lexsort((rng.random(len(owner)), owner))  # within each client, its examples in a random order
    rank = np.empty(len(owner), dtype=np.int64)
    rank[order] = np.arange(len(owner)) - parts.offsets[owner[order]]
    out = rank < held[owner]
    train = Parts(parts.indices[~out], np.concatenate([[0], np.cumsum(sizes - held)]))
    return train, Parts(parts.indices[out], np.concatenate([[0], np.cumsum(held)]))


SMALLEST_SHOWN = 5  # a natural partition's summary names this many of the owners with the fewest examples


def summary(parts: Parts, labels: np.ndarray, *, owners: np.ndarray | None = None, values: bool = False) -> dict:
    """Examples and distinct labels per client: min, median, max (for --dry-run and run.json).

    With `owners` (a natural partition: client k is owners[k]) it also names the owners with the
    fewest examples; with `values` (regression targets) there are no labels to count."""

    def spread(values: np.ndarray) -> dict:
        return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}

    sizes = parts.sizes
    out = {"clients": len(parts), "examples": spread(sizes)}
    if not values:
        owner = np.repeat(np.arange(len(parts)), sizes)
        pairs = np.unique(owner * (int(labels.max()) + 1) + labels[parts.indices])  # (client, label) present
        out["labels"] = spread(np.bincount(pairs // (int(labels.max()) + 1), minlength=len(parts)))
    if owners is not None:
        fewest = np.argsort(sizes, kind="stable")[:SMALLEST_SHOWN]
        out["fewest"] = [{"owner": _plain(owners[k]), "examples": int(sizes[k])} for k in fewest]
    return out


def _plain(value: object) -> object:
    """A NumPy scalar as the JSON-able Python value (an owner id for run.json)."""
    return value.item() if hasattr(value, "item") else value
