"""FedBN (Li et al., ICLR 2021, "FedBN: Federated Learning on Non-IID Features via Local Batch Normalization"): every
BatchNorm layer's affine parameters and running statistics stay with each client, the rest is FedAvg's. A task may
name another part (Task.personal); a model without BatchNorm and no such name is refused. --task mnist-cnn-bn is the
paper's CNN with BatchNorm after each convolution, for it."""

from __future__ import annotations

from dataclasses import dataclass

from fedactors.algorithms.base import Spec
from fedactors.algorithms.personal import DP_REFUSAL, LocalParts, batch_norms


@dataclass
class FedBN(LocalParts):
    """A client trains the whole model with its own BatchNorm layers put back, and keeps them."""

    name: str = "fedbn"
    default_part = "every BatchNorm layer (its weight, bias and running statistics)"

    def default(self, module):
        return batch_norms(module)


SPEC = Spec("fedbn", "clients keep their BatchNorm layers (weights and statistics) as their own; the rest is FedAvg "
                     "(Li et al., ICLR 2021); e.g. --task mnist-cnn-bn",
            make=lambda config: FedBN(), client_state="its batch-norm layers", refuses_dp=DP_REFUSAL)
