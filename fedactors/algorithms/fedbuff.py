"""The asynchronous methods: FedBuff (Nguyen et al., AISTATS 2022) and FedAsync (Xie et al. 2019).

They have no rounds: clients train from whichever server version was current when they started, in virtual time
(fedactors.runtime.asynchronous.Schedule), and the server updates every --buffer arrivals (FedAsync: every arrival), each
arrival weighted by its staleness. The client half is the run's default local update; the server half is
`server_update`, which the asynchronous loop calls with each buffer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedactors.algorithms.base import Algorithm, Spec
from fedactors.algorithms.fedopt import OPTIMIZER_SETTINGS, ServerOptimizer, make_optimizer


@dataclass
class Asynchronous(Algorithm):
    """fedbuff or fedasync: their settings (part of the run's identity) and their server update."""

    name: str = "fedbuff"
    concurrency: int = 10
    buffer: int = 10
    staleness: str = "polynomial:0.5"
    rate: float = 1.0  # fedbuff's server learning rate, fedasync's mixing weight
    optimizer: ServerOptimizer | None = None  # fedbuff --server-optimizer: its step on the buffer's average

    def server_update(self, weights: np.ndarray, arrivals: list[tuple[np.ndarray, int, int, np.ndarray]],
                      round_idx: int) -> tuple[np.ndarray | None, list[int]]:
        """(the next version's weights, the indices of the arrivals left out) from a buffer of (client weights,
        examples, staleness, the weights it started from) in arrival order; None if every arrival was left out
        (fedactors.runtime.asynchronous.buffered_update)."""
        from fedactors.runtime.asynchronous import buffered_update, mixed_update, parse_staleness

        staleness = parse_staleness(self.staleness)
        if self.name == "fedasync":
            y, _, tau, _ = arrivals[0]
            return mixed_update(weights, y, tau, staleness, self.rate), []
        new, left_out = buffered_update(weights, arrivals, staleness, 1.0 if self.optimizer is not None else self.rate)
        if new is not None and self.optimizer is not None:  # its step on the pseudo-gradient, from the buffer's average
            new = self.optimizer.step(weights, new, [], [], round_idx)
        return new, left_out

    def step(self, weights, aggregate, updates, num_examples, round_idx):
        raise TypeError(f"{self.name} has no synchronous round")

    def state(self):
        return self.optimizer.state() if self.optimizer is not None else ({}, {})

    def load_state(self, buffers, scalars):
        if self.optimizer is not None:
            self.optimizer.load_state(buffers, scalars)

    def settings(self):
        out = {"concurrency": self.concurrency, "buffer": self.buffer, "staleness": self.staleness,
               "server_lr" if self.name == "fedbuff" else "mixing": self.rate}
        if self.optimizer is not None:
            out["optimizer"] = {"name": self.optimizer.name, **self.optimizer.settings()}
        return out


def make(name: str, config) -> Asynchronous:
    from fedactors.runtime.asynchronous import ASYNC_DEFAULTS

    optimizer = None
    if name == "fedbuff" and config.server_optimizer is not None:
        optimizer = make_optimizer(config.server_optimizer, config)
    # fedbuff's own rate is --server-lr or the optimizer's default (unused beside an optimizer, but in its settings)
    rate = config.server_lr_value if name == "fedbuff" else (
        config.mixing if config.mixing is not None else ASYNC_DEFAULTS["mixing"])
    return Asynchronous(name, config.concurrency_value, config.buffer_value,
                        config.staleness or ASYNC_DEFAULTS["staleness"], rate, optimizer)


_CLOCK = dict(asynchronous=True, needs_fedavg="averages its buffer itself",
              refuses_dp="the accountant composes Poisson-sampled synchronous rounds, and it has none")
SPECS = (
    Spec("fedbuff", "asynchronous: an update every --buffer arrivals, weighted by staleness (Nguyen et al., AISTATS "
                    "2022)", make=lambda config: make("fedbuff", config),
         settings=("concurrency", "buffer", "staleness", *OPTIMIZER_SETTINGS), takes_server_optimizer=True,
         optimizer_settings=OPTIMIZER_SETTINGS[2:], **_CLOCK),  # --server-lr is its own step's rate too
    Spec("fedasync", "asynchronous: each arrival mixed into the model at once (Xie et al. 2019)",
         make=lambda config: make("fedasync", config), settings=("concurrency", "staleness", "mixing"),
         fixed_buffer=1, **_CLOCK),
)
