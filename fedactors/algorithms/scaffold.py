"""SCAFFOLD, option II (Karimireddy et al., ICML 2020), global learning rate 1: both halves in one file.

Server half: client i is sent the server's control variate c and its own c_i (`configure`); the model is the
aggregate of the clients' models (--aggregator fedavg: the example-weighted average, the paper's uniform one when
clients are equal in size), and c += (1/N) sum over the round's clients of (c_i+ - c_i) (`aggregate`).
Client half: every local step uses the gradient g + c - c_i; after its K steps the client's new control variate
is c_i+ = c_i - c + (x - y_i) / (K lr) (the steps' rates summed under a schedule), sent back with its update.

On the virtual clock (--client-speed, --deadline, --over-select, --client-trace) a client that does not finish in
time is one that did not participate: its c_i stays as it was and c moves by the finishers' changes only, over N.

The control variates live here, in the coordinator: whichever host trains a client, or retrains it after another
died, is sent the same c and c_i; they are part of every checkpoint. Each client seen costs one float32 copy of
the weights (6.65 MB for the CNN: 665 MB for K = 100, 6.65 GB for K = 1,000), held in the coordinator and written
into each checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
    client_c: dict[int, np.ndarray] = field(default_factory=dict)
    _zero: np.ndarray | None = field(default=None, repr=False, compare=False)  # c_i of the clients not seen yet

    def controls(self, client_id: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(c, c_i) for training client `client_id`: zeros for what has not been set yet."""
        if self.c is None:
            self.c = np.zeros(length, np.float32)
        if client_id in self.client_c:
            return self.c, self.client_c[client_id]
        if self._zero is None or len(self._zero) != length:
            self._zero = np.zeros(length, np.float32)  # one array for every client not seen yet, so it is put once a round
            self._zero.flags.writeable = False
        return self.c, self._zero

    def configure(self, client_id, round_idx, weights):
        c, c_i = self.controls(client_id, len(weights))
        return {"c": c, "c_i": c_i}

    def local_update(self, client: LocalClient) -> Reply:
        c, c_i = client.received["c"], client.received["c_i"]
        loss = client.train(scaffold_hook(client.model, c, c_i))
        # c_i+ = c_i - c + (x - y) / (K lr), over the parameters; a float buffer has no gradient. K lr is the sum of
        # the steps' learning rates under a schedule (the round's lr_t, a warm-up's ramp).
        weights, x = client.model.state, client.global_weights
        p = client.model.params.numel()
        y = weights[:p].detach().cpu().numpy()
        control = np.zeros(client.model.size, np.float32)
        scale = np.float32(1.0 / client.lr_sum())
        control[:p] = (c_i[:p] - c[:p]) + (x[:p] - y) * scale
        return Reply(loss, send={"control": control})

    def aggregate(self, weights, combined, results, round_idx):
        self.accept({u.client_id: u.sent["control"] for u in results})
        return combined

    def accept(self, new_controls: dict[int, np.ndarray]) -> None:
        """After the round: the accepted clients' c_i+, and c moved by (1/N) of their changes, clients in order."""
        if not new_controls:
            return
        total = np.zeros_like(self.c, dtype=np.float64)
        for cid in sorted(new_controls):
            new, previous = new_controls[cid].astype(np.float64), self.client_c.get(cid)
            total += new if previous is None else new - previous  # c_i was zero: new - 0 is new, no zeros made
            self.client_c[cid] = new_controls[cid]
        self.c = (self.c.astype(np.float64) + total / self.num_clients).astype(np.float32)

    def state(self):
        buffers = {} if self.c is None else {"c": self.c}
        buffers.update({f"c{cid}": c for cid, c in self.client_c.items()})
        return buffers, {}

    def load_state(self, buffers, scalars):
        self.c = np.array(buffers["c"]) if "c" in buffers else None
        self.client_c = {int(name[1:]): np.array(b) for name, b in buffers.items() if name != "c"}


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
