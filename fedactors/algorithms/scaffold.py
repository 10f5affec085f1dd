"""SCAFFOLD, option II (Karimireddy et al., ICML 2020), global learning rate 1: both halves in one file.

Server half: every client is sent the server's control variate c (`configure`); the model is the aggregate of
the clients' models (--aggregator fedavg: the example-weighted average, the paper's uniform one when clients are
equal in size), and c += (1/N) sum over the round's clients of (c_i+ - c_i) (`aggregate`).
Client half: the client's own c_i is its state (zeros at first); every local step uses the gradient g + c - c_i;
after its K steps its new control variate is c_i+ = c_i - c + (x - y_i) / (K lr) (the steps' rates summed under a
schedule), which it keeps (Reply.keep) and sends back with c_i, so that the server adds c_i+ - c_i in float64 as
it always has (a deployment sends the one difference; the bytes counted are that one copy).

On the virtual clock (--client-speed, --deadline, --over-select, --client-trace) a client that does not finish in
time is one that did not participate: its c_i stays as it was and c moves by the finishers' changes only, over N.

The clients' control variates are per-client state (fedactors.runtime.states): in the run's store, sent to
whichever host trains a client, and written by a checkpoint only for the clients whose c_i changed. Each client
seen costs one float32 copy of the weights (6.65 MB for the CNN: 6.65 GB for K = 1,000) in the store, not in the
coordinator, which holds c and the round's clients' c_i.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedactors.algorithms.base import Algorithm, LocalClient, Reply, Spec

if TYPE_CHECKING:
    from fedactors.model import FlatModel


def scaffold_hook(model: FlatModel, c: np.ndarray, c_i: np.ndarray) -> Callable[[], None]:
    """Every step's gradient corrected by c - c_i."""
    import torch

    p = model.params.numel()
    correction = torch.from_numpy(np.subtract(c[:p], c_i[:p])).to(model.params.device)

    def hook() -> None:
        model.grads.add_(correction)

    return hook


@dataclass
class Scaffold(Algorithm):
    """SCAFFOLD's control variates on both sides (see the module's docstring)."""

    name: str = "scaffold"
    num_clients: int = 0
    c: np.ndarray | None = None

    def configure(self, client_id, round_idx, weights):
        if self.c is None:
            self.c = np.zeros(len(weights), np.float32)
        return {"c": self.c}  # one array for the round's clients: it travels once

    def local_update(self, client: LocalClient) -> Reply:
        c = client.received["c"]
        c_i = client.state.get("c_i")
        if c_i is None:  # not trained before
            c_i = np.zeros(client.model.size, np.float32)
        loss = client.train(scaffold_hook(client.model, c, c_i))
        # c_i+ = c_i - c + (x - y) / (K lr), over the parameters; a float buffer has no gradient. K lr is the sum of
        # the steps' learning rates under a schedule (the round's lr_t, a warm-up's ramp).
        weights, x = client.model.state, client.global_weights
        p = client.model.params.numel()
        y = weights[:p].detach().cpu().numpy()
        control = np.zeros(client.model.size, np.float32)
        scale = np.float32(1.0 / client.lr_sum())
        control[:p] = (c_i[:p] - c[:p]) + (x[:p] - y) * scale
        return Reply(loss, send={"control": control, "previous": c_i}, keep={"c_i": control})

    def aggregate(self, weights, combined, results, round_idx):
        self.accept({u.client_id: (u.sent["control"], u.sent["previous"]) for u in results})
        return combined

    def accept(self, controls: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        """After the round: c moved by (1/N) of the accepted clients' changes (c_i+, c_i), clients in order."""
        if not controls:
            return
        total = np.zeros_like(self.c, dtype=np.float64)
        for cid in sorted(controls):
            new, previous = controls[cid]
            total += new.astype(np.float64) - previous  # exact: a difference of float32s in float64
        self.c = (self.c.astype(np.float64) + total / self.num_clients).astype(np.float32)

    def state(self):
        return ({} if self.c is None else {"c": self.c}), {}

    def load_state(self, buffers, scalars):
        self.c = np.array(buffers["c"]) if "c" in buffers else None

    def client_state_from(self, buffers):
        """A checkpoint written before per-client state held each client's c_i as the buffer c<k>."""
        own = {name: b for name, b in buffers.items() if not (name[:1] == "c" and name[1:].isdigit())}
        clients = {int(name[1:]): {"c_i": np.array(b)} for name, b in buffers.items() if name not in own}
        return own, clients


SPEC = Spec("scaffold", "clients correct each step by c - c_i, control variates (Karimireddy et al., ICML 2020); "
                        "--aggregator fedavg",
            make=lambda config: Scaffold(num_clients=config.clients),
            default_lr=0.02,  # the paper's 0.1 fails on the non-IID CNN within 100 rounds (issue 28, docs/runs/tune-*)
            needs_fedavg="averages its clients' models and control variates",
            plain_sgd_only="its control variate c_i+ = c_i - c + (x - y) / (K lr) is the mean corrected gradient "
                           "only when the K local steps are plain SGD steps",
            copies_down=1, copies_up=1, state_per_client=1, client_state="a control variate",
            refuses_dp="its clients send their control variates to the server unclipped and without noise (the DP "
                       "stage privatizes the model's updates only)")
