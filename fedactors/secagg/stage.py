"""Secure aggregation as a stage of the synchronous round: what it composes with, a round's k and t, and its messages.

`--secure-aggregation secagg` is Bonawitz et al.'s complete graph (each client masks with, and shares its
secrets among, the n - 1 others); `secagg+` is Bell et al.'s graph of k neighbours. A round runs as
fedactors.secagg.protocol describes, split where a simulation's parties are:

- the coordinator (`SecureRound`) makes the round's RoundSpec over its sampled clients, runs the key
  exchange (steps 1 and 2: the clients' keys and shares made on their behalf from the run's secret,
  routed by the server), hands each client's host a `MaskJob`, adds the masked vectors it gets back
  (step 3), then asks the clients that still answer for their shares and unmasks (step 4): ExactSum's
  accumulator over the clients that sent a vector, so the round's result is plain FedAvg's bytes;
- the host that trained a client rebuilds its SecAggClient from the job and the run's secret (the same
  keys on any host, so a retry elsewhere masks the same way) and sends only the masked vector.

A client that failed, missed the deadline or went offline while training sent no vector: dropped
before masking, its pairwise masks taken off with its neighbours' key shares. On the virtual clock a
client whose online window closes after it sent its vector but before the round closes (when the
server unmasks) does not answer: dropped after masking, its self mask taken off with its neighbours'
seed shares. Nothing of a round is stored: a round interrupted anywhere runs again from the checkpoint
before it, with the same keys.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedactors.aggregate import ExactSum, all_finite
from fedactors.errors import ConfigError
from fedactors.secagg.costs import client_bytes
from fedactors.secagg.graph import check_params, secagg_plus_params, secagg_plus_threshold
from fedactors.secagg.protocol import RoundSpec, SecAggClient, SecAggError, SecAggServer, secret_from_seed

# The defaults' design point, Google fcp's (and bench/secagg.py's SecAgg+ column): up to 5% of a round's
# clients colluding with the server, up to a third dropping out.
ADVERSARIAL_RATE = 0.05
DROPOUT_RATE = 0.33


def refusal(config) -> str | None:
    """Why --secure-aggregation does not go with the rest of `config` (a RunConfig), in words, or None."""
    from fedactors.algorithms import builtin

    if config.aggregator != "fedavg":
        return (f"--aggregator {config.aggregator}: a robust aggregator compares the clients' updates one by one, "
                "and the server gets only their sum; use --aggregator fedavg")
    spec = builtin(config.strategy)
    if config.private:
        what = f"--dp {config.dp}" if config.dp else f"--strategy {config.strategy}"
        return (f"{what}: central DP clips each update on the server, which would see every update; distributed DP "
                "would need each client to clip its own update and add its share of discrete noise on the integer "
                "grid before masking (the distributed discrete Gaussian, Kairouz et al. 2021), accounted over the "
                "clients that survive: not implemented")
    if spec is None:
        return (f"--strategy {config.strategy}: a strategy of your own is handed every client's update (its "
                "aggregate()'s results), and the server gets only their sum")
    if spec.asynchronous:
        return (f"--strategy {config.strategy}: it is asynchronous, each update applied as it arrives (weighted by "
                "its staleness), so there is no round's cohort whose masks cancel in a sum")
    if spec.copies_up:
        return (f"--strategy {config.strategy}: its clients send more than their weights ({spec.client_state} "
                "each), which the masked sum does not cover: it would reach the server in the clear")
    if not spec.host_sums:  # the algorithm's server half reads more than the sum: each client's kept state
        return (f"--strategy {config.strategy}: it keeps {spec.client_state} of each client in the run's store, on "
                "the server's side, where secure aggregation would leave it on the client")
    if config.compress is not None:
        return (f"--compress {config.compress}: a masked update is 8 bytes a value on FedAvg's integer grid "
                "whatever it was encoded as (each client's quantization has its own scale, so compressed values "
                "cannot be summed under masks), so it would save nothing; and error feedback (topk, sign) would "
                "send each client's residual in the clear")
    return None


def check(config) -> None:
    """ConfigError, one line, unless `config`'s secure aggregation composes with the rest and its k and t fit the
    round's planned clients (RunConfig calls it when --secure-aggregation is given)."""
    mode = config.secure_aggregation
    if mode == "secagg" and config.secagg_neighbours is not None:
        raise ConfigError("--secagg-neighbours is for --secure-aggregation secagg+: secagg masks each client with "
                          "all the round's others (k = n - 1)")
    why = refusal(config)
    if why is not None:
        raise ConfigError(f"--secure-aggregation {mode} does not go with {why}")
    if config.clients is not None:  # None: a natural partition, checked again once its clients are counted
        round_params(mode, planned_cohort(config), config.secagg_neighbours, config.secagg_threshold)


def planned_cohort(config) -> int:
    """The clients a round samples, who all take part in its key exchange: m, or ceil(m (1 + --over-select))."""
    wanted = math.ceil(config.clients_per_round * (1 + (config.over_select or 0.0)) - 1e-9)
    return min(config.clients, wanted)


def round_params(mode: str, cohort: int, neighbours: int | None, threshold: int | None, *,
                 clamp: bool = False) -> tuple[int, int]:
    """(k, t) for a round of `cohort` clients, from --secagg-neighbours and --secagg-threshold (None: the defaults).

    secagg: k = n - 1, t = n/2 + 1 (at most k). secagg+: k and t from secagg_plus_params (fcp's, for
    ADVERSARIAL_RATE and DROPOUT_RATE), the complete graph with secagg's t where no k < n - 1 meets them;
    for a given k, t is fcp's for that k, else k/2 + 1. `clamp`: a given k past n - 1 becomes n - 1
    (a round on the clock that found fewer clients online than planned). ConfigError unless they fit.
    """
    if cohort < 2:
        check_params(cohort, 1, 1)  # its one line: secure aggregation needs at least 2 clients
    found = secagg_plus_params(cohort, ADVERSARIAL_RATE, DROPOUT_RATE) if mode == "secagg+" else None
    if mode == "secagg" or (neighbours is None and found is None):
        k = cohort - 1
    elif neighbours is None:
        k = found[0]
    else:
        k = min(neighbours, cohort - 1) if clamp else neighbours
    if threshold is not None:
        t = threshold
    elif k >= cohort - 1:
        t = min(cohort // 2 + 1, k)
    elif neighbours is None:
        t = found[1]
    else:
        t = secagg_plus_threshold(cohort, k, ADVERSARIAL_RATE, DROPOUT_RATE) or k // 2 + 1
    check_params(cohort, k, t)
    return k, t


def planned_neighbours(config) -> int | None:
    """k of a round of the planned cohort (for bytes before the round: the virtual clock, --dry-run); None without
    secure aggregation."""
    if config.secure_aggregation is None:
        return None
    return round_params(config.secure_aggregation, planned_cohort(config), config.secagg_neighbours,
                        config.secagg_threshold)[0]


def declined(update: np.ndarray) -> np.ndarray:
    """What a client sends in place of a masked vector when ExactSum would refuse its update: nothing of it but
    whether it held NaN or infinity (one NaN) or a value past the sum's range (empty), so the round can count it
    as plain FedAvg counts a refused update (rejected, or too large)."""
    return np.empty(0, np.float32) if all_finite(update) else np.full(1, np.nan, np.float32)


@dataclass(frozen=True)
class MaskJob:
    """What a client's host needs to mask its update: the round (RoundSpec's fields: its graph is made on the host,
    not sent) and the client's messages of the key exchange, its neighbours' public keys and the shares they sent."""

    spec: tuple
    neighbour_keys: dict[int, bytes]
    shares: dict[int, bytes]

    def mask(self, client: int, update: np.ndarray, num_examples: float, seed: int) -> np.ndarray:
        """Client `client`'s masked update (uint64), or `declined(update)`; its keys from the run's `seed`."""
        me = SecAggClient(RoundSpec(*self.spec), client, secret_from_seed(seed))
        me.share_keys(self.neighbour_keys)  # the same shares it made in the exchange; this learns its neighbours
        me.receive_shares(self.shares)  # whom it masks with: the neighbours whose shares it holds
        masked = me.mask(update, num_examples)
        return declined(update) if masked is None else masked


class SecureRound:
    """The coordinator's side of one round: the key exchange, the masked sum, the unmasking, and what they cost.

    After `finish`: `survivors` (sent a vector), `dropped` (shared keys, sent none), `silent` (sent a vector, did
    not answer the unmasking), `key_exchange_seconds` (the clients' steps 1, 2 and 4, made here on their behalf)
    and `server_seconds` (SecAggServer's, by phase).
    """

    def __init__(self, spec: RoundSpec, seed: int) -> None:
        start = time.perf_counter()
        self.spec = spec
        self.server = SecAggServer(spec)
        secret = secret_from_seed(seed)
        self._clients = {c: SecAggClient(spec, c, secret) for c in spec.clients}
        keys = self.server.neighbour_keys({c: client.public_keys() for c, client in self._clients.items()})
        shares = self.server.route_shares({c: self._clients[c].share_keys(keys[c]) for c in spec.clients})
        fields = (spec.round, spec.clients, spec.neighbours, spec.threshold, spec.length, spec.total, spec.seed)
        self.jobs = {c: MaskJob(fields, keys[c], shares.get(c, {})) for c in spec.clients}
        for c, client in self._clients.items():  # each client's own copy of what it holds, for step 4
            client.receive_shares(shares.get(c, {}))
        self.survivors: frozenset[int] = frozenset()
        self.dropped: frozenset[int] = frozenset()
        self.silent: frozenset[int] = frozenset()
        self.key_exchange_seconds = time.perf_counter() - start
        self.server_seconds: dict[str, float] = {}

    @classmethod
    def start(cls, config, round_idx: int, cohort: Sequence[int], length: int, total: float) -> SecureRound:
        """The round's key exchange over `cohort` (its sampled clients), for ExactSum(length, total)'s sum."""
        try:
            k, t = round_params(config.secure_aggregation, len(cohort), config.secagg_neighbours,
                                config.secagg_threshold, clamp=True)
        except ConfigError as exc:
            raise SecAggError(f"round {round_idx}: {len(cohort)} clients sampled: {exc}") from None
        spec = RoundSpec(round_idx, tuple(sorted(int(c) for c in cohort)), k, t, length, float(total), config.seed)
        return cls(spec, config.seed)

    def arguments(self, more: Callable[[int], tuple] | None) -> Callable[[int], tuple]:
        """client -> ClientHost.train's arguments after (weights, client, round): `more`'s (the names, then the
        arrays), and its MaskJob under ("secagg", "job")."""
        def arguments(client: int) -> tuple:
            names, *arrays = more(client) if more is not None else ((),)
            return ((*names, ("secagg", "job")), *arrays, self.jobs[client])

        return arguments

    def add(self, client: int, vector: np.ndarray, num_examples: float) -> bool:
        """A client's masked vector into the sum (True), or False for a client that declined (`declined`)."""
        if vector.dtype != np.uint64:
            return False
        self.server.add_masked(client, vector, num_examples)
        return True

    def finish(self, answers: Callable[[int], bool] | None = None) -> ExactSum:
        """Unmask from the shares of the survivors for which `answers(client)` (None: all of them): the ExactSum of the
        survivors' updates (SecAggError naming the round and a client if a secret has fewer than t shares)."""
        survivors, dropped = self.server.unmask_request()
        start = time.perf_counter()
        responses = {c: self._clients[c].unmask_shares(survivors, dropped) for c in sorted(survivors)
                     if answers is None or answers(c)}
        self.key_exchange_seconds += time.perf_counter() - start
        self.survivors, self.dropped = survivors, dropped
        self.silent = survivors - set(responses)
        exact = self.server.exact_sum(responses)
        self.server_seconds = dict(self.server.seconds.by_phase)
        return exact

    def report(self) -> dict:
        """What the round's metrics say of it: k and t, who sent a masked vector, who shared keys and sent none
        (dropped before masking), who sent one and did not answer the unmasking (after), and the seconds of the
        clients' steps (made here on their behalf) and of the server's."""
        return {"neighbours": self.spec.neighbours, "threshold": self.spec.threshold,
                "survivors": len(self.survivors), "dropped_before_masking": sorted(self.dropped),
                "dropped_after_masking": sorted(self.silent), "client_seconds": round(self.key_exchange_seconds, 6),
                "server_seconds": round(sum(self.server_seconds.values()), 6)}

    def traffic(self, model_down: int) -> tuple[int, int]:
        """The round's (bytes down, bytes up): `model_down` (the model to every sampled client) and the neighbours'
        keys and shares down; the keys, shares, masked vectors (in place of the updates) and unmasking answers up
        (fedactors.secagg.costs.client_bytes, per client as it took part)."""
        down, up = model_down, 0
        for c in self.spec.clients:
            neighbours = self.spec.graph[c]
            counted = client_bytes(len(neighbours), self.spec.length,
                                   dropped_neighbours=len(self.dropped.intersection(neighbours)),
                                   masked=c in self.survivors, unmasks=c in self.survivors and c not in self.silent)
            down, up = down + counted.down, up + counted.up
        return down, up
