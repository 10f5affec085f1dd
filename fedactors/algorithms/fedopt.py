"""The server optimizers on the pseudo-gradient: FedAvgM (Hsu et al. 2019), FedAdagrad, FedAdam and FedYogi (Reddi et
al., ICLR 2021). The pseudo-gradient is the round's aggregate minus the global model; the step is one native pass
(fedactors._kernels.server_step), so `--aggregator median --strategy fedadam` is Adam on a robust pseudo-gradient.
The client half is the run's default local update."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedactors.algorithms.base import Algorithm, Spec

# --server-lr when not given, per optimizer: FedAvgM's 1 is Hsu et al.'s; the adaptive ones' come from Reddi et al.'s
# grids (their best server rates for the image tasks lie around these).
SERVER_LR = {"fedavgm": 1.0, "fedadagrad": 0.1, "fedadam": 0.01, "fedyogi": 0.01}
# The settings each reads, besides --server-lr.
HYPERPARAMETERS = {"fedavgm": ("server_momentum",), "fedadagrad": ("beta1", "tau"),
                   "fedadam": ("beta1", "beta2", "tau"), "fedyogi": ("beta1", "beta2", "tau")}
# Where --server-optimizer adds an optimizer's flags to a method that takes one (fedbuff, dp-fedavg).
OPTIMIZER_SETTINGS = ("server_optimizer", "server_lr", "server_momentum", "beta1", "beta2", "tau")


@dataclass
class ServerOptimizer(Algorithm):
    """FedAvgM, FedAdagrad, FedAdam or FedYogi on the pseudo-gradient, one native pass (see _kernels.server_step)."""

    name: str = "fedavgm"
    lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    m: np.ndarray | None = None
    v: np.ndarray | None = None

    def step(self, weights, aggregate, updates, num_examples, round_idx):
        from fedactors import _kernels

        if self.m is None:
            self.m = np.zeros_like(weights)
            self.v = None if self.name == "fedavgm" else np.zeros_like(weights)
        return _kernels.server_step(self.name, aggregate, weights, self.m, self.v, lr=self.lr, beta1=self.beta1,
                                    beta2=self.beta2, tau=self.tau)

    def state(self):
        buffers = {} if self.m is None else {"m": self.m}
        if self.v is not None:
            buffers["v"] = self.v
        return buffers, {}

    def load_state(self, buffers, scalars):
        self.m = np.array(buffers["m"]) if "m" in buffers else None
        self.v = np.array(buffers["v"]) if "v" in buffers else None

    def settings(self):
        keep = ("lr", "beta1") if self.name == "fedavgm" else ("lr", "beta1", "tau") if self.name == "fedadagrad" \
            else ("lr", "beta1", "beta2", "tau")
        return {k: getattr(self, k) for k in keep}


def server_step_reference(name: str, aggregate: np.ndarray, weights: np.ndarray, m: np.ndarray, v: np.ndarray | None,
                          *, lr: float, beta1: float, beta2: float = 0.99, tau: float = 1e-3) -> np.ndarray:
    """NumPy oracle of _kernels.server_step: the same float32 operations in the same order (m, v updated in place)."""
    f = np.float32
    d = aggregate - weights
    if name == "fedavgm":
        m[:] = f(beta1) * m + d
        return weights + f(lr) * m
    m[:] = f(beta1) * m + f(1 - f(beta1)) * d
    dd = d * d
    if name == "fedadagrad":
        v[:] = v + dd
    elif name == "fedadam":
        v[:] = f(beta2) * v + f(1 - f(beta2)) * dd
    elif name == "fedyogi":
        v[:] = v - f(1 - f(beta2)) * dd * np.sign(v - dd)
    else:
        raise ValueError(f"unknown server optimizer {name!r}")
    return weights + f(lr) * m / (np.sqrt(v) + f(tau))


def make_optimizer(name: str, config) -> ServerOptimizer:
    """Server optimizer `name` with the run's --server-lr (or `name`'s default) and hyper-parameters."""
    lr = config.server_lr if config.server_lr is not None else SERVER_LR[name]
    if name == "fedavgm":
        return ServerOptimizer("fedavgm", lr=lr, beta1=config.server_momentum)
    return ServerOptimizer(name, lr=lr, beta1=config.beta1, beta2=config.beta2, tau=config.tau)


_DESCRIPTIONS = {
    "fedavgm": "server momentum on the pseudo-gradient (Hsu et al. 2019)",
    "fedadagrad": "Adagrad on the pseudo-gradient (Reddi et al., ICLR 2021)",
    "fedadam": "Adam on the pseudo-gradient, no bias correction (Reddi et al., ICLR 2021)",
    "fedyogi": "Yogi on the pseudo-gradient (Reddi et al., ICLR 2021)",
}
# FedAdam's --lr default: the paper's 0.1 fails with it on the non-IID CNN within 100 rounds (issue 28, docs/runs/tune-*).
_CLIENT_LR = {"fedadam": 0.05}
SPECS = tuple(Spec(name, _DESCRIPTIONS[name], make=lambda config, name=name: make_optimizer(name, config),
                   settings=("server_lr", *HYPERPARAMETERS[name]), default_lr=_CLIENT_LR.get(name),
                   default_server_lr=SERVER_LR[name], host_sums=True)
              for name in SERVER_LR)
