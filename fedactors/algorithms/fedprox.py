"""FedProx (Li et al., MLSys 2020): clients add (mu/2)||w - w_global||^2 to their loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedactors.algorithms.base import Algorithm, LocalClient, Reply, Spec

if TYPE_CHECKING:
    from fedactors.model import FlatModel


def prox_hook(model: FlatModel, global_weights: np.ndarray, mu: float) -> Callable[[], None]:
    """The gradient of (mu/2)||w - w_global||^2, mu (w - w_global), added to every step's."""
    import torch

    anchor = torch.from_numpy(np.array(global_weights[: model.params.numel()])).to(model.params.device)
    scratch = torch.empty_like(anchor)

    def hook() -> None:
        torch.sub(model.params, anchor, out=scratch)
        model.grads.add_(scratch, alpha=mu)

    return hook


@dataclass
class FedProx(Algorithm):
    """FedAvg whose clients' every step adds the proximal gradient mu (w - w_global); the server takes the aggregate."""

    name: str = "fedprox"
    mu: float = 0.01

    def local_update(self, client: LocalClient) -> Reply:
        hook = prox_hook(client.model, client.global_weights, self.mu) if self.mu > 0 else None
        return Reply(client.train(hook))

    def settings(self):
        return {"mu": self.mu}


def _label(config: dict) -> str:
    def num(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)  # as fedactors.results.report writes numbers

    label = " fedprox"
    if config.get("server_lr") is not None:  # refused with fedprox today; a stored run may still hold one
        label += f" server_lr={num(config['server_lr'])}"
    return label + (f" mu={num(config['mu'])}" if config.get("mu") is not None else "")


SPEC = Spec("fedprox", "clients add (mu/2)||w - w_global||^2 to their loss (Li et al., MLSys 2020)",
            make=lambda config: FedProx(mu=config.mu), settings=("mu",), host_sums=True, label=_label)
