"""Samplers: who a round trains, decided before anyone does, one interface for both loops (issue 35 item 3).

    Uniform     m = max(round(C K), 1) clients without replacement, seeded by (seed, round)       the paper's
    Poisson     each client with probability q, keyed by the DP secret (the accountant's sampling) DP-FedAvg, --dp
    Clock       ceil(m (1 + F)) of the clients online, the first m to finish inside the deadline  --client-speed, ...
    Buffered    the next --buffer arrivals of the asynchronous schedule, each from its start version  fedbuff, fedasync

Each `draw(round_idx, now)` returns a `Draw`: the clients the round reports as sampled, the jobs to train (client ids,
or (client, start batch) for an asynchronous buffer, where a fast client may arrive twice), how many usable results
the round needs (--min-fit-fraction of its jobs, or the paper's rule), and what the clock says of it. The loops
(fedactors.runtime.coordinator) then collect the jobs the one way fedactors.runtime.collect does.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from fedactors.errors import RoundFailed
from fedactors.seeding import sample_clients
from fedactors.runtime.systems import RoundPlan, Systems, plan_round


@dataclass
class Draw:
    """What a sampler decided for one round (or one asynchronous buffer)."""

    clients: list[int]  # the round's sampled clients (a buffer's arriving ones), in the order the round reports them
    jobs: list[Hashable]  # what trains: client ids, or (client, start batch)
    required: int  # the fewest usable results the round may be aggregated from
    plan: RoundPlan | None = None  # on the clock: who was late or went offline, and the round's virtual length
    arrivals: list = field(default_factory=list)  # asynchronous: the Flights of `jobs`, in arrival order
    lost: list = field(default_factory=list)  # asynchronous: the flights that went offline meanwhile
    freed: int = 0  # asynchronous: the slots to start once the update is applied


def _fraction(min_fit_fraction: float, jobs: int) -> int:
    return math.ceil(min_fit_fraction * jobs - 1e-9)


@dataclass
class Uniform:
    """The paper's: m clients without replacement, seeded by (seed, round); --min-fit-fraction of m required."""

    seed: int
    num_clients: int
    per_round: int
    required: int
    pool: np.ndarray | None = None  # --holdout-clients: the clients that may train (sorted); None: all of them

    def draw(self, round_idx: int, now: float = 0.0) -> Draw:
        if self.pool is None:
            sampled = sample_clients(self.seed, round_idx, self.num_clients, self.per_round).tolist()
        else:
            sampled = self.pool[sample_clients(self.seed, round_idx, len(self.pool), self.per_round)].tolist()
        return Draw(sampled, sampled, self.required)


@dataclass
class Poisson:
    """Each client independently with probability q, keyed by the DP secret (`sample(round_idx)`: the algorithm's)."""

    sample: object  # round -> client ids
    min_fit_fraction: float

    def draw(self, round_idx: int, now: float = 0.0) -> Draw:
        sampled = self.sample(round_idx)
        return Draw(sampled, sampled, _fraction(self.min_fit_fraction, len(sampled)))


@dataclass
class Clock:
    """On the virtual clock: who is online at the round's start, who finishes inside the deadline (systems.plan_round)."""

    systems: Systems
    seed: int
    per_round: int
    over_select: float
    deadline: float | None
    work: object  # each client's examples processed in one local training
    bytes_down: int
    bytes_up: int
    min_fit_fraction: float

    def draw(self, round_idx: int, now: float = 0.0) -> Draw:
        try:
            plan = plan_round(self.systems, now, seed=self.seed, round_idx=round_idx, m=self.per_round,
                              over_select=self.over_select, deadline=self.deadline, work=self.work,
                              bytes_down=self.bytes_down, bytes_up=self.bytes_up)
        except RuntimeError as exc:
            raise RoundFailed(f"round {round_idx}: {exc}") from None
        return Draw(plan.sampled, plan.kept, _fraction(self.min_fit_fraction, len(plan.kept)), plan=plan)


@dataclass
class Buffered:
    """FedBuff's and FedAsync's: the asynchronous schedule's next --buffer arrivals (fedactors.runtime.asynchronous.Schedule)."""

    schedule: object
    min_fit_fraction: float

    def draw(self, round_idx: int, now: float = 0.0) -> Draw:
        try:
            arrivals, lost, freed = self.schedule.next_buffer()
        except RuntimeError as exc:
            raise RoundFailed(f"round {round_idx}: {exc}") from None
        jobs = list({(a.client, a.batch): a for a in arrivals})  # (client, start batch): a fast client may arrive twice
        return Draw([a.client for a in arrivals], jobs, _fraction(self.min_fit_fraction, len(arrivals)),
                    arrivals=arrivals, lost=lost, freed=freed)
