"""FedRep (Collins, Hassani, Mokhtari, Shakkottai, ICML 2021, "Exploiting Shared Representations for Personalized
Federated Learning"): each client first trains its own head with the shared body (the representation) frozen, for
--head-epochs (10, the paper's), then the body with its head frozen, for --epochs; it keeps its head and the server
averages the bodies (FedAvg over the whole weights: the global head is the clients' aggregate, which only a client's
first start uses). The head is the task's personal parameters (Task.personal), else the last layer.

Freezing is requires_grad off for the round's phase, so the optimizer (any --client-optimizer, --weight-decay too)
sees only what trains; both phases are the run's default local update, with its shuffling draws."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedactors.algorithms.base import LocalClient, Reply, Spec
from fedactors.algorithms.personal import DP_REFUSAL, KEPT, LocalParts, Parts
from fedactors.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


@contextmanager
def trains_only(module: nn.Module, names: tuple[str, ...], inside: bool) -> Iterator[None]:
    """Within it, of the parameters that train, only those among `names` (inside) or only the others (not inside)."""
    chosen = set(names)
    switched = [p for name, p in module.named_parameters() if p.requires_grad and (name in chosen) != inside]
    for p in switched:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in switched:
            p.requires_grad_(True)


@dataclass
class FedRep(LocalParts):
    """The head's epochs with the body frozen, then the body's with the head frozen."""

    name: str = "fedrep"
    head_epochs: int = 10

    def check(self, parts: Parts, where: str) -> None:
        if not parts.trained:
            raise ConfigError(f"{where} {', '.join(parts.names)} holds no parameter the model trains: there is no "
                              "head to train")

    def local_update(self, client: LocalClient) -> Reply:
        parts = self.restore(client)
        module = client.model.module
        with trains_only(module, parts.trained, inside=True):
            dataclasses.replace(client, epochs=self.head_epochs).train()
        with trains_only(module, parts.trained, inside=False):
            loss = client.train()
        return Reply(loss, keep={KEPT: parts.take_from(client.model)})

    def settings(self):
        return {"head_epochs": self.head_epochs}


def _label(config: dict) -> str:
    head = config.get("head_epochs")
    return " fedrep" + (f" head_epochs={head}" if head is not None else "")


SPEC = Spec("fedrep", "clients train their own head (the last layer, or the task's personal parameters) with the body "
                      "frozen, then the shared body (Collins et al., ICML 2021)",
            make=lambda config: FedRep(head_epochs=config.head_epochs), settings=("head_epochs",),
            client_state="a personal head", refuses_dp=DP_REFUSAL, label=_label)
