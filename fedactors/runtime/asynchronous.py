"""Asynchronous FedBuff and FedAsync, deterministic in virtual time (issue 26).

`--concurrency C` clients train at once, each from the model version current when it started.
Their arrivals are ordered by the virtual clock (fedactors.runtime.systems: each client's duration
follows from its speed, its work and the bytes it moves), ties by client id and start version,
never by which host finished first. Every `--buffer K` arrivals the server applies one update:

    z_k = y_k                                      if the update is fresh (tau_k = 0)
    z_k = w + s(tau_k) (y_k - w_start_k)           otherwise (tau_k = versions since its start)
    w  <- w + eta (exact example-weighted average of z - w)      (fedbuff; eta = --server-lr, 1 by default)
    w  <- (1 - a s(tau)) w + a s(tau) y            (fedasync: buffer 1, a = --mixing)

with s the staleness weight (`--staleness constant|polynomial:A|hinge:A,B`: 1, (1 + tau)^-A, and 1
up to B then 1 / (A (tau - B) + 1)). A freed slot starts a new client at once; clients freed at
the same virtual instant start together, from the version current after that instant's update,
drawn as one sample of the clients online then and not training (a fast client may so arrive
twice in one buffer). A start batch's number keys its clients' training seeds, as a round's does. So with every client equally
fast, C = K = m and eta 1, FedBuff is synchronous FedAvg, to the byte: its first test.

Training is lazy: an arrival is trained when its update is applied, from the weights of its
start version (kept while a client in flight needs them), so a checkpoint after any update
holds the whole schedule (the clients in flight, their start versions and finish times, the
older weights they need) and nothing half-trained: a resume continues to the same bytes.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import astuple, dataclass

import numpy as np

from fedactors.errors import ConfigError
from fedactors.runtime.systems import Systems, sample_available

ASYNC_DEFAULTS = {"staleness": "polynomial:0.5", "mixing": 0.6}  # FedBuff's and FedAsync's papers use these


def parse_staleness(spec: str | None) -> tuple[str, float, float]:
    """--staleness as (kind, a, b); None is the default, polynomial:0.5. ConfigError for anything else."""
    text = ASYNC_DEFAULTS["staleness"] if spec is None else spec
    kind, _, args = text.partition(":")
    bad = ConfigError(f"--staleness must be constant, polynomial:A (A >= 0) or hinge:A,B (A >= 0, B >= 0), got {spec!r}")
    try:
        values = [float(v) for v in args.split(",")] if args else []
    except ValueError:
        raise bad from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise bad
    if kind == "constant" and not values:
        return kind, 0.0, 0.0
    if kind == "polynomial" and len(values) == 1:
        return kind, values[0], 0.0
    if kind == "hinge" and len(values) == 2:
        return kind, values[0], values[1]
    raise bad


def staleness_weight(staleness: tuple[str, float, float], tau: int) -> float:
    """s(tau); s(0) is 1 for every kind."""
    kind, a, b = staleness
    if kind == "polynomial":
        return float((1.0 + tau) ** -a)
    if kind == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    return 1.0


@dataclass(order=True)
class Flight:
    """One client training: it arrives (or, `lost`, goes offline) at `finish`. client -1 is an idle slot waking."""

    finish: float
    client: int
    version: int
    start: float
    lost: bool = False
    batch: int = 0  # the start batch it was drawn in: its training's seed key (a synchronous round's number)


class Schedule:
    """Who trains, from which version, and when each arrives: a function of the seed and the profiles alone."""

    def __init__(self, *, seed: int, concurrency: int, buffer: int, systems: Systems, work: np.ndarray,
                 bytes_down: int, bytes_up: int, state: dict | None = None) -> None:
        """`work`: each client's examples processed in one local training (epochs x its examples)."""
        self.seed, self.concurrency, self.buffer = seed, concurrency, buffer
        self.systems, self.work = systems, work
        self.bytes_down, self.bytes_up = bytes_down, bytes_up
        self.now = 0.0
        self.version = 0  # server updates applied so far
        self.batches = 0  # start batches drawn so far: the key of the next one's sample
        self.parked = 0  # slots with nobody to start until the next update
        self.flights: list[Flight] = []  # a heap
        if state is None:
            self._start(concurrency)
        else:
            self.load_state(state)

    # ---- the clock -------------------------------------------------------------------------------

    def next_buffer(self) -> tuple[list[Flight], list[Flight], int]:
        """Advance the clock to the next server update: (the `buffer` arrivals it applies, in arrival order; the
        clients that went offline before finishing meanwhile; the slots freed by the last instant, to start once
        the update is applied). Raises RuntimeError when no client will ever arrive again."""
        arrivals: list[Flight] = []
        lost: list[Flight] = []
        while True:
            if not self.flights:
                raise RuntimeError(f"no client is training or can come online after virtual second {self.now:g}, "
                                   f"with {len(arrivals)} of the buffer's {self.buffer} arrivals in")
            self.now = self.flights[0].finish
            freed = 0
            while self.flights and self.flights[0].finish == self.now and len(arrivals) < self.buffer:
                flight = heapq.heappop(self.flights)
                freed += 1
                if flight.client < 0:
                    continue
                (lost if flight.lost else arrivals).append(flight)
            if len(arrivals) == self.buffer:
                return arrivals, lost, freed
            self._start(freed)

    def applied(self, freed: int) -> None:
        """The server applied an update: the next version, and the freed slots (and parked ones) start from it."""
        self.version += 1
        count, self.parked = freed + self.parked, 0
        self._start(count)

    def staleness(self, flight: Flight) -> int:
        """tau of an arrival applied in the next update: the versions applied since it started. The one place it is
        computed: the server step weights by it and the round's row reports it."""
        return self.version - flight.version

    def needed_versions(self) -> set[int]:
        """The versions whose weights a client in flight will train from."""
        return {f.version for f in self.flights if f.client >= 0}

    def _start(self, count: int) -> None:
        if count <= 0:
            return
        busy = {f.client for f in self.flights}
        online = self.systems.available(self.now)
        candidates = online[~np.isin(online, np.fromiter(busy, dtype=np.int64, count=len(busy)))] if busy else online
        n = min(count, len(candidates))
        if n:
            self.batches += 1
            for client in sample_available(self.seed, self.batches, candidates, n).tolist():
                duration = self.systems.duration(client, int(self.work[client]), self.bytes_down, self.bytes_up)
                until = self.systems.online_until(client, self.now)
                lost = self.now + duration > until
                heapq.heappush(self.flights, Flight(until if lost else self.now + duration, client, self.version,
                                                    self.now, lost, self.batches))
        wake = self.systems.next_online(self.now)
        for _ in range(count - n):  # nobody to start now: wake when someone comes online, or after the next update
            if wake is not None:
                heapq.heappush(self.flights, Flight(wake, -1, self.version, self.now))
            else:
                self.parked += 1

    # ---- checkpoints -----------------------------------------------------------------------------

    def state(self) -> dict:
        return {"now": self.now, "version": self.version, "batches": self.batches, "parked": self.parked,
                "flights": [list(astuple(f)) for f in sorted(self.flights)]}

    def load_state(self, state: dict) -> None:
        self.now, self.version = float(state["now"]), int(state["version"])
        self.batches, self.parked = int(state["batches"]), int(state["parked"])
        self.flights = [Flight(float(f), int(c), int(v), float(s), bool(lost), int(b))
                        for f, c, v, s, lost, b in state["flights"]]
        heapq.heapify(self.flights)


def buffered_update(weights: np.ndarray, arrivals: list[tuple[np.ndarray, int, int, np.ndarray]],
                    staleness: tuple[str, float, float], server_lr: float) -> tuple[np.ndarray | None, list[int]]:
    """FedBuff's server step: `arrivals` are (client weights y, examples, staleness tau (Schedule.staleness),
    weights at its start).
    Fresh updates enter the exact average as themselves, so a buffer of fresh ones is FedAvg's average.

    Returns (the new weights, the indices of the arrivals left out). An arrival whose z holds a value FedAvg's
    exact sum cannot (|share x value| >= 2^18) is left out, as a synchronous round rejects such a client, and the
    others are averaged over their own examples; the weights are None if every arrival was left out."""
    from fedactors import aggregate

    exact = aggregate.ExactSum(len(weights), sum(n for _, n, _, _ in arrivals))
    left_out = []
    for i, (y, n, tau, w_start) in enumerate(arrivals):
        if tau == 0:
            z = y
        else:
            s = np.float32(staleness_weight(staleness, tau))
            z = weights + s * (y - w_start)
        if not exact.add(np.ascontiguousarray(z, dtype=np.float32), n):
            left_out.append(i)
    if len(left_out) == len(arrivals):
        return None, left_out
    average = exact.result()
    if server_lr == 1.0:
        return average, left_out
    return (weights + np.float32(server_lr) * (average - weights)).astype(np.float32), left_out


def mixed_update(weights: np.ndarray, y: np.ndarray, tau: int, staleness: tuple[str, float, float],
                 mixing: float) -> np.ndarray:
    """FedAsync's server step: w <- (1 - a s(tau)) w + a s(tau) y, in float64, rounded once to float32."""
    a = mixing * staleness_weight(staleness, tau)
    return ((1.0 - a) * weights.astype(np.float64) + a * y.astype(np.float64)).astype(np.float32)
