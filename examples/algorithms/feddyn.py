"""FedDyn (Acar et al., ICLR 2021, Algorithm 1): dynamic regularization, in one file of fedactors' protocol.

    fedactors run --strategy examples/algorithms/feddyn.py:FedDyn ...

Client k, sent the global model x and its gradient state g_k (the gradient of its loss at its last local model; 0
before it first trains), minimizes by the run's default local update

    L_k(w) - <g_k, w> + (alpha/2) ||w - x||^2         each step's gradient gets alpha (w - x) - g_k added

and sends back its model y_k and its new state g_k <- g_k - alpha (y_k - x). The server keeps h (0 at first) and,
over the round's clients P,

    h <- h - (alpha / K) sum_{k in P} (y_k - x)         K: every client, trained this round or not
    x <- (1 / |P|) sum_{k in P} y_k - h / alpha          the paper's plain mean of the clients' models

so h is the mean of all K clients' g_k, and x steps past the round's mean by the clients' accumulated drift.
`--aggregator` is not used: the method's mean is its own. Only the trained parameters are regularized (a model's
float buffers, BatchNorm's statistics, are averaged and nothing more).

Every g_k lives in the server half, as SCAFFOLD's c_i do: whichever host trains client k (or retrains it after
another died) is sent the same g_k, and h and every g_k are in each checkpoint, so a resume is bit-exact. Each
client seen costs a float32 copy of the parameters (6.65 MB for the CNN: 665 MB at K = 100), in the coordinator
and in each checkpoint (checkpoint every 10 rounds or so for the CNN: --checkpoint-every 10).

K is a setting, num_clients, because the protocol does not tell an algorithm the run's --clients: the default 100
is the paper's MNIST setting and fedactors' default. A client id at or past it fails the round, naming it; a K
too large goes unnoticed. For another K or alpha, copy this file and change the defaults (the file --strategy
names travels to Ray's processes by value; a module it imports from beside it does not reach the coordinator).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedactors.algorithms import Algorithm, LocalClient, Reply


def dyn_hook(model, global_weights: np.ndarray, grad_state: np.ndarray | None, alpha: float):
    """Every step's gradient plus alpha (w - x) - g_k: the gradient of (alpha/2)||w - x||^2 - <g_k, w>."""
    import torch

    p = model.params.numel()
    anchor = torch.from_numpy(np.array(global_weights[:p])).to(model.params.device)
    state = None if grad_state is None else torch.from_numpy(np.array(grad_state)).to(model.params.device)
    scratch = torch.empty_like(anchor)

    def hook() -> None:
        torch.sub(model.params, anchor, out=scratch)
        model.grads.add_(scratch, alpha=alpha)
        if state is not None:  # 0 before the client first trains: the step is FedProx's with mu = alpha
            model.grads.sub_(state)

    return hook


@dataclass
class FedDyn(Algorithm):
    """FedDyn (Acar et al., ICLR 2021): each client's loss gets -<g_k, w> + (alpha/2)||w - x||^2; the server steps past the mean by h / alpha."""

    name: str = "feddyn"
    # 0.01: the authors' own code uses it for MNIST (and every other data set there), the middle of the paper's grid
    # {0.1, 0.01, 0.001}; at lr 0.1 its pull alpha (w - x) is FedProx's default mu = 0.01's, which trains here.
    alpha: float = 0.01
    num_clients: int = 100  # K, the run's --clients
    h: np.ndarray | None = field(default=None, init=False, repr=False)  # the server's, over the trained parameters
    grads: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)  # client -> g_k, likewise

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"FedDyn's alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.num_clients, bool) or not isinstance(self.num_clients, int) or self.num_clients < 1:
            raise ValueError(f"FedDyn's num_clients must be a positive integer, got {self.num_clients!r}")

    def configure(self, client_id, round_idx, weights):
        if client_id >= self.num_clients:
            raise ValueError(f"FedDyn(num_clients={self.num_clients}) was asked for client {client_id}: "
                             "its num_clients must be the run's --clients")
        state = self.grads.get(client_id)
        return {} if state is None else {"grad": state}  # nothing sent for a client not seen yet: its g_k is 0

    def local_update(self, client: LocalClient) -> Reply:
        state = client.received.get("grad")
        loss = client.train(dyn_hook(client.model, client.global_weights, state, self.alpha))
        p = client.model.params.numel()
        y = client.weights()[:p].astype(np.float64)
        drift = y - client.global_weights[:p]
        new = -self.alpha * drift if state is None else state - self.alpha * drift
        return Reply(loss, send={"grad": new.astype(np.float32)})

    def aggregate(self, weights, combined, results, round_idx):
        if not results:
            return weights
        p = len(results[0].sent["grad"])
        total = np.zeros(len(weights), np.float64)
        for u in results:  # sampled order: the same bytes whatever arrived first
            total += u.weights
        x = weights.astype(np.float64)
        h = np.zeros(p) if self.h is None else self.h.astype(np.float64)
        h -= (self.alpha / self.num_clients) * (total[:p] - len(results) * x[:p])
        new = total / len(results)
        new[:p] -= h / self.alpha
        self.h = h.astype(np.float32)
        self.grads.update({u.client_id: u.sent["grad"] for u in results})
        return new.astype(np.float32)

    def state(self):
        buffers = {} if self.h is None else {"h": self.h}
        buffers.update({f"g{cid}": g for cid, g in self.grads.items()})
        return buffers, {}

    def load_state(self, buffers, scalars):
        self.h = np.array(buffers["h"]) if "h" in buffers else None
        self.grads = {int(name[1:]): np.array(b) for name, b in buffers.items() if name != "h"}

    def settings(self):
        return {"alpha": self.alpha, "num_clients": self.num_clients}
