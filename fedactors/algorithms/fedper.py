"""FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers"): the base layers are FedAvg's,
the personalization layers stay with each client. Here the personal layers are the task's (Task.personal), else the
last layer (a classifier's weight and bias); the client half and the rest are fedactors.algorithms.personal's."""

from __future__ import annotations

from dataclasses import dataclass

from fedactors.algorithms.base import Spec
from fedactors.algorithms.personal import DP_REFUSAL, LocalParts


@dataclass
class FedPer(LocalParts):
    """A client trains the whole model from the global base and its own head, keeps its head, sends the rest."""

    name: str = "fedper"


SPEC = Spec("fedper", "clients keep the last layer (or the task's personal parameters) as their own; the rest is "
                      "FedAvg (Arivazhagan et al. 2019)",
            make=lambda config: FedPer(), client_state="a personal head", refuses_dp=DP_REFUSAL)
