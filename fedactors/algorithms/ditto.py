"""Ditto (Li, Hu, Beirami, Smith, ICML 2021, "Ditto: Fair and Robust Federated Learning Through Personalization"):
the global model is trained as FedAvg's, and each client also keeps a personal model v_k, trained on its own examples
to minimize F_k(v) + (lambda/2)||v - w||^2, pulled toward the round's global weights w with strength --ditto-lambda.

A client's local update first trains v_k (its state, "personal"; its first time: w) for the run's local update with
the proximal gradient lambda (v - w) added to every step (FedProx's hook), then trains w exactly as FedAvg's client
does (the same draws: the global model is FedAvg's to the byte) and sends that. personalize() judges a client by its
v_k. lambda = 0 is local training alone; a large lambda pulls v_k onto the global model. Each client seen keeps one
float32 copy of the weights in the store (issue 36's per-client state: the store, not the coordinator, holds it)."""

from __future__ import annotations

from dataclasses import dataclass

from fedactors.algorithms.base import Algorithm, LocalClient, Reply, Spec
from fedactors.algorithms.fedprox import prox_hook
from fedactors.algorithms.personal import DP_REFUSAL

KEPT = "personal"  # v_k, the client's personal model, in its state


@dataclass
class Ditto(Algorithm):
    """Each client's personal model v_k, pulled toward the global w; w itself is FedAvg's."""

    name: str = "ditto"
    lam: float = 0.1

    def local_update(self, client: LocalClient) -> Reply:
        personal = client.state.get(KEPT)
        if personal is not None:
            client.model.set_weights(personal)
        client.train(prox_hook(client.model, client.global_weights, self.lam) if self.lam > 0 else None)
        personal = client.weights()
        client.model.set_weights(client.global_weights)
        loss = client.train()  # FedAvg's local update of w: what the client sends
        return Reply(loss, keep={KEPT: personal})

    def personalize(self, client: LocalClient) -> None:
        """The client's model is its v_k (a client never trained has none: the global model, where v_k starts)."""
        personal = client.state.get(KEPT)
        if personal is not None:
            client.model.set_weights(personal)

    def settings(self):
        return {"lambda": self.lam}


def _label(config: dict) -> str:
    lam = config.get("ditto_lambda")
    return " ditto" + (f" lambda={lam:g}" if isinstance(lam, (int, float)) else "")


SPEC = Spec("ditto", "clients keep a personal model pulled toward the global one by (lambda/2)||v - w||^2; the global "
                     "model is FedAvg's (Li et al., ICML 2021)",
            make=lambda config: Ditto(lam=config.ditto_lambda), settings=("ditto_lambda",),
            state_per_client=1, client_state="a personal model", refuses_dp=DP_REFUSAL, label=_label)
