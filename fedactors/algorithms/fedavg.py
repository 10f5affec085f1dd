"""FedAvg (McMahan et al., AISTATS 2017): each client trains from the global model, the aggregate is the new one."""

from __future__ import annotations

from dataclasses import dataclass

from fedactors.algorithms.base import Algorithm, Spec


@dataclass
class FedAvg(Algorithm):
    """The aggregate is the new global model; the client half is the run's default local update."""

    name: str = "fedavg"


SPEC = Spec("fedavg", "the aggregate is the new global model (McMahan et al. 2017): the default",
            make=lambda config: FedAvg(), host_sums=True)
