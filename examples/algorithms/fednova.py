"""FedNova (Wang et al., NeurIPS 2020) with plain local SGD, in one file of fedactors' protocol.

    fedactors run --strategy examples/algorithms/fednova.py:FedNova ...

Client i trains by the run's default local update and reports its number of local steps tau_i = E ceil(n_i / B)
(Reply.metrics). The server averages the normalized updates and steps by the clients' mean step count:

    d_i = (x - y_i) / tau_i,   p_i = n_i / sum_j n_j,   tau_eff = sum_i p_i tau_i,   x <- x - tau_eff sum_i p_i d_i

(float64 throughout, rounded to float32 once). FedAvg's x - sum_i p_i (x - y_i) lets a client that took more
steps pull the model further towards its own optimum; FedNova counts every client's progress per step. When
every client takes the same number of steps (equal sizes, as the paper's pathological non-IID MNIST: 600
examples, 60 steps at B = 10) the two are the same method. `--aggregator` is not used.

Plain SGD only: with momentum, weight decay or a warm-up within the update, a client's progress is not tau_i
equal steps (the paper's a_i then has other entries), so such a run fails its first round saying so. A
per-round schedule (--lr-schedule) is fine: every client of a round has the same rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedactors.algorithms import Algorithm, LocalClient, Reply


@dataclass
class FedNova(Algorithm):
    """FedNova (Wang et al., NeurIPS 2020): the clients' updates normalized by their local step counts, then stepped by the mean count."""

    name: str = "fednova"

    def local_update(self, client: LocalClient) -> Reply:
        local = client.local
        if not local.plain or local.warmup_steps:
            raise ValueError("fednova normalizes by the number of plain SGD steps: it takes --client-optimizer sgd "
                             "without --weight-decay or --lr-warmup-steps")
        return Reply(client.train(), metrics={"steps": float(client.steps)})

    def aggregate(self, weights, combined, results, round_idx):
        if not results:
            return weights
        n = np.array([u.num_examples for u in results], np.float64)
        p = n / n.sum()
        tau = np.array([u.metrics["steps"] for u in results], np.float64)
        x = weights.astype(np.float64)
        d = np.zeros_like(x)
        for p_i, tau_i, u in zip(p, tau, results):  # sampled order: the same bytes whatever arrived first
            d += (p_i / tau_i) * (x - u.weights)
        return (x - float(p @ tau) * d).astype(np.float32)
