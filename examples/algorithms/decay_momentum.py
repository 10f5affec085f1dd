"""FedAvg with a decaying server learning rate and client momentum, in one file of fedactors' protocol.

    fedactors run --lr 0.01 --strategy examples/algorithms/decay_momentum.py:DecayMomentum ...

Server half: round t moves the model by eta_t of the way to the round's aggregate (--aggregator's),

    x <- x + eta_t (aggregate - x),   eta_t = eta0 gamma^(t-1)

(float64, rounded once), so the late rounds, whose clients pull apart on non-IID data, move the model less.
Client half: its own training loop, SGD with heavy-ball momentum (torch.optim.SGD, made fresh for every local
update and dropped after it: no state kept between rounds). The step size is the run's (--lr, --lr-schedule,
--lr-warmup-steps, --weight-decay); momentum m makes each step about lr / (1 - m) in the long run, so give it a
tenth of plain SGD's rate at m = 0.9. It draws the same minibatches as the run's default loop (the run's seeded
order, below), so with eta0 = gamma = 1 it is FedAvg with --client-optimizer momentum, to the byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedactors.algorithms import Algorithm, LocalClient, Reply

# The keys of the run's seeded streams (fedactors.seeding.Purpose): the minibatch order and torch's generator.
SHUFFLE, TORCH = 3, 8


def stream(purpose: int, client: LocalClient) -> np.random.Generator:
    """The run's generator for `purpose`, this client and round: a function of the seeds, whichever host trains it."""
    return np.random.default_rng(np.random.SeedSequence([purpose, client.seed, client.round_idx, client.client_id]))


def momentum_update(client: LocalClient, momentum: float) -> float:
    """E epochs of minibatch SGD with momentum on the client's examples; returns the last epoch's mean loss."""
    import torch

    model = client.model
    # Seeded as the default loop seeds it: a model with dropout draws the same masks on any host.
    seed = int(stream(TORCH, client).integers(2**63 - 1))
    if model.state.device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)
    params = [p for p in model.module.parameters() if p.requires_grad]  # their .grad are views of model.grads
    optimizer = torch.optim.SGD(params, lr=client.local.lr, momentum=momentum, weight_decay=client.local.weight_decay)
    shuffle = stream(SHUFFLE, client)
    n = client.num_examples
    size = n if client.batch_size is None else client.batch_size
    step, loss = 0, 0.0
    for _ in range(client.epochs):
        order = torch.from_numpy(shuffle.permutation(n))
        images, labels = client.images[order], client.labels[order]
        losses = []
        for start in range(0, n, size):
            batch_loss = model.backward(images[start : start + size], labels[start : start + size])
            with torch.no_grad():
                for group in optimizer.param_groups:
                    group["lr"] = client.local.step_lr(client.round_idx, step)
                optimizer.step()
            losses.append(batch_loss.item())
            step += 1
        loss = float(np.mean(losses))
    return loss


@dataclass
class DecayMomentum(Algorithm):
    """FedAvg with a server learning rate eta0 gamma^(t-1) and SGD with momentum on the clients."""

    name: str = "decay-momentum"
    eta0: float = 1.0  # round 1 takes the aggregate itself, as FedAvg
    gamma: float = 0.99  # a hundredth less each round: 0.37 by round 100, 0.05 by round 300
    momentum: float = 0.9  # the usual heavy-ball coefficient

    def __post_init__(self) -> None:
        for name, ok, bounds in (("eta0", lambda v: v > 0, "> 0"), ("gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
                                 ("momentum", lambda v: 0 <= v < 1, "in [0, 1)")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ValueError(f"DecayMomentum's {name} must be {bounds}, got {value!r}")

    def local_update(self, client: LocalClient) -> Reply:
        return Reply(momentum_update(client, self.momentum))

    def aggregate(self, weights, combined, results, round_idx):
        eta = self.eta0 * self.gamma ** (round_idx - 1)
        x = weights.astype(np.float64)
        return (x + eta * (combined - x)).astype(np.float32)

    def settings(self):
        return {"eta0": self.eta0, "gamma": self.gamma, "momentum": self.momentum}
