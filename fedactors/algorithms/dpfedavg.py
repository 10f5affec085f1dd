"""DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018): client-level (epsilon, delta)-differential privacy, with
an optional server optimizer on the noised average (DP-FedAvgM, DP-FedAdam, ...). The client half is the run's
default local update; the server half samples (Poisson), clips, sums, noises and accounts."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedactors.algorithms.base import Algorithm, Spec
from fedactors.algorithms.fedavg import FedAvg
from fedactors.algorithms.fedopt import OPTIMIZER_SETTINGS, ServerOptimizer, make_optimizer
from fedactors.privacy import dp_epsilon, next_clip, update_noise_multiplier

# DP-FedAvg's server optimizer's buffers and scalars in its state: "server-optimizer/m", "server-optimizer/v".
OPTIMIZER_PREFIX = "server-optimizer/"


@dataclass
class DPFedAvg(Algorithm):
    """DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018): client-level (epsilon, delta)-DP.

    Each round samples every client independently with probability q = --frac (Poisson
    sampling, what the accountant assumes; a round may have nobody). Each sampled client's
    update d_i = w_i - x is clipped to L2 norm S (--clip); the clipped updates are summed
    (one native call: _kernels.clipped_sum), Gaussian noise of standard deviation z*S
    (--noise-multiplier z) is added to the sum, and the sum is divided by q*K, the *expected*
    number of clients: the fixed-denominator estimator, unbiased, whose sensitivity to one
    client is S/(qK) whoever is sampled (dividing by the number actually sampled would leak
    it). Clients count alike, whatever their size. Who is sampled and the noise come from
    generators keyed by (`secret`, round): a secret drawn from the OS when the run starts (or
    --dp-seed, which gives the privacy away), kept in the run's checkpoints and nowhere else, so
    a resumed or retried round samples the same clients and adds the same noise. The noise
    exists only inside this step, never written anywhere but into the new weights. Epsilon at --delta after t
    rounds is Google's dp-accounting accountant (`accountant`: "pld" or "rdp") on t compositions of
    PoissonSampledDpEvent(q, GaussianDpEvent(z)).

    With `adaptive` (--clip adaptive) the clip S is state: it starts at `clip` (--initial-clip) and after each
    round moves toward the `target_quantile` of the update norms (fedactors.privacy.next_clip), from a count
    noised with std `count_noise` drawn from its own generator; the update's noise multiplier is then z_delta
    (fedactors.privacy.update_noise_multiplier) and the run is still accounted at z. The clip is a JSON float in
    the checkpoint (it round-trips exactly), so a resumed run clips as the uninterrupted one would.

    With an `optimizer` (--server-optimizer: DP-FedAvgM, McMahan et al. 2018's own setting; Andrew et al. 2021 run
    adaptive clipping under FedAvgM and FedAdam) the noised average above is that optimizer's round average: the
    pseudo-gradient is noised average - x, and its step (server lr, momentum, betas, tau) gives the new weights.
    That is post-processing of the DP release (the optimizer reads nothing else of the clients), so the run's
    epsilon is the accountant's for the same q, z, rounds and delta, as without it. Its buffers (momentum, moments)
    are this strategy's state under OPTIMIZER_PREFIX, so they resume bit-exactly and no other name is taken.
    """

    name: str = "dp-fedavg"
    needs_aggregate = False  # it sums the clipped updates itself
    clip: float = 1.0  # S; with `adaptive`, the clip of the next round (C_t)
    noise_multiplier: float = 1.0
    rate: float = 0.1
    num_clients: int = 100
    delta: float = 1e-5
    secret: int = 0  # keys the sampling and the noise; make_strategy draws it (see RunConfig.dp_seed)
    seed: int = 0  # the run's --seed: the key in checkpoints written before the secret was
    accountant: str = "rdp"
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise: float = 0.0  # sigma_b
    initial_clip: float = 0.1  # C_0, a setting (`clip` moves)
    rounds_accounted: int = 0
    last_norms: list[float] = field(default_factory=list)
    optimizer: ServerOptimizer | None = None  # --server-optimizer: its step on the noised average
    client: Algorithm | None = None  # --dp gaussian on another method: its client half (FedProx's), whose server
    #                                  step takes the average, so the noised average is the new model

    @property
    def update_noise_multiplier(self) -> float:
        """The noise multiplier of the update's sum: z, or z_delta when the clipped count takes its share."""
        return update_noise_multiplier(self.noise_multiplier, self.count_noise) if self.adaptive else self.noise_multiplier

    def step(self, weights, aggregate, updates, num_examples, round_idx):
        from fedactors import _kernels
        from fedactors.seeding import Purpose, generator

        clip = self.clip
        total, norms = _kernels.clipped_sum(list(updates), weights, clip=clip)
        self.last_norms = [float(v) for v in norms]
        std = np.float32(self.update_noise_multiplier * clip)
        if std > 0:
            total += std * generator(Purpose.DP_NOISE, self.secret, round_idx).standard_normal(len(weights), dtype=np.float32)
        if self.adaptive:  # the next round's clip, from this round's norms against this round's clip
            draw = self.count_noise * float(generator(Purpose.DP_CLIP_COUNT, self.secret, round_idx).standard_normal())
            self.clip = next_clip(clip, self.last_norms, draw, self.rate * self.num_clients, self.target_quantile,
                                  self.clip_lr)
        self.rounds_accounted = round_idx
        noised = weights + total / np.float32(self.rate * self.num_clients)  # the DP release
        if self.optimizer is None:
            return noised
        return self.optimizer.step(weights, noised, updates, num_examples, round_idx)

    def configure(self, client_id, round_idx, weights):
        return {} if self.client is None else self.client.configure(client_id, round_idx, weights)

    def local_update(self, client):
        return super().local_update(client) if self.client is None else self.client.local_update(client)

    def epsilon(self, rounds: int | None = None) -> float:
        """Epsilon at `delta` after `rounds` rounds (default: the rounds so far)."""
        return dp_epsilon(self.rate, self.noise_multiplier, self.rounds_accounted if rounds is None else rounds,
                          self.delta, self.accountant)

    def noise_to_clip(self, weights: int) -> float:
        """The norm of the noise on the average over that of the clip: sqrt(d) z / (q K), whatever the clip."""
        return math.sqrt(weights) * self.update_noise_multiplier / (self.rate * self.num_clients)

    def sample(self, round_idx: int) -> list[int]:
        """Round `round_idx`'s clients: each one independently with probability `rate` (Poisson sampling)."""
        from fedactors.seeding import sample_clients_poisson

        return sample_clients_poisson(self.secret, round_idx, self.num_clients, self.rate).tolist()

    def state(self):
        scalars = {"rounds_accounted": self.rounds_accounted, "secret": f"{self.secret:x}"}
        if self.adaptive:  # only then: a fixed clip is a setting, not state
            scalars["clip"] = self.clip
        if self.optimizer is None:
            return {}, scalars
        buffers, more = self.optimizer.state()
        return ({OPTIMIZER_PREFIX + name: b for name, b in buffers.items()},
                {**scalars, **{OPTIMIZER_PREFIX + name: v for name, v in more.items()}})

    def load_state(self, buffers, scalars):
        if self.optimizer is not None:
            self.optimizer.load_state(*({name[len(OPTIMIZER_PREFIX):]: v for name, v in part.items()
                                         if name.startswith(OPTIMIZER_PREFIX)} for part in (buffers, scalars)))
        self.rounds_accounted = int(scalars.get("rounds_accounted", 0))
        # A checkpoint written before there was a secret: its rounds were keyed by the run's --seed.
        self.secret = int(scalars["secret"], 16) if "secret" in scalars else self.seed
        if self.adaptive:
            self.clip = float(scalars["clip"])

    def settings(self):
        if not self.adaptive:  # as before adaptive clipping: every fixed-clip run's identity stays what it was
            out = {"clip": self.clip, "noise_multiplier": self.noise_multiplier, "rate": self.rate}
        else:
            out = {"clip": "adaptive", "initial_clip": self.initial_clip,
                   "noise_multiplier": self.noise_multiplier, "rate": self.rate,
                   "target_quantile": self.target_quantile, "clip_lr": self.clip_lr, "count_noise": self.count_noise}
        if self.optimizer is not None:  # only then, as fedbuff's: a run without one keeps its identity
            out["optimizer"] = {"name": self.optimizer.name, **self.optimizer.settings()}
        if self.client is not None:  # likewise: the method whose clients train under the DP stage
            out["client"] = {"name": self.client.name, **self.client.settings()}
        return out


def clipped_sum_reference(updates: Sequence[np.ndarray], weights: np.ndarray, clip: float,
                          norms: Sequence[float]) -> np.ndarray:
    """NumPy oracle of _kernels.clipped_sum's sum, given its norms: clients in order, float32, one rounding a term."""
    total = np.zeros_like(weights)
    for w, norm in zip(updates, norms, strict=True):
        total = total + np.float32(clip / norm if norm > clip else 1.0) * (w - weights)
    return total


def make(config) -> DPFedAvg:
    """The run's DP-FedAvg; its secret drawn from the OS unless --dp-seed gives it."""
    import secrets

    from fedactors.privacy import CLIP_LR, TARGET_QUANTILE

    extra = {} if config.server_optimizer is None else {"optimizer": make_optimizer(config.server_optimizer, config)}
    adaptive = config.clip == "adaptive"
    extra |= {} if not adaptive else {
        "adaptive": True, "target_quantile": _or(config.target_quantile, TARGET_QUANTILE),
        "clip_lr": _or(config.clip_lr, CLIP_LR), "count_noise": config.clip_count_noise_value,
        "initial_clip": config.initial_clip_value}
    return DPFedAvg(clip=config.initial_clip_value if adaptive else config.clip,
                    noise_multiplier=config.noise_multiplier, rate=config.frac, num_clients=config.clients,
                    delta=config.delta, seed=config.seed, accountant=config.accountant,
                    secret=config.dp_seed if config.dp_seed is not None else secrets.randbits(128), **extra)


def stage(config, inner: Algorithm) -> DPFedAvg:
    """--dp gaussian around `inner`, the run's --strategy (a built-in whose Spec does not refuse it): a server optimizer
    steps on the noised average, as --strategy dp-fedavg --server-optimizer does (the same bytes); FedAvg's or
    FedProx's server step takes the noised average, and FedProx's clients train as FedProx's."""
    dp = make(dataclasses.replace(config, server_optimizer=None))
    if isinstance(inner, ServerOptimizer):
        dp.optimizer = inner
    elif type(inner) is not FedAvg:
        dp.client = inner
    return dp


def _or(value, default):
    return default if value is None else value


def _label(config: dict) -> str:
    """E.g. " dp(S=1,z=1)+fedavgm server_lr=0.5": the clip and noise multiplier, and a server optimizer if any."""
    label = f" dp(S={_num(config.get('clip'))},z={_num(config.get('noise_multiplier'))})"
    if config.get("server_optimizer"):  # DP-FedAvgM, DP-FedAdam, ...: another method at the same epsilon
        label += f"+{config['server_optimizer']}"
        if config.get("server_lr") is not None:
            label += f" server_lr={_num(config['server_lr'])}"
    return label


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)  # as fedactors.results.report writes numbers


def _banner(c) -> str:
    clip = (f"adaptive:q={c.target_quantile if c.target_quantile is not None else 0.5:g}" if c.clip == "adaptive"
            else f"{c.clip:g}")
    return f"dp-fedavg(clip={clip},z={c.noise_multiplier:g},delta={c.delta:g})"


OFF_THE_CLOCK = "its privacy accounting assumes every sampled client reports"
NEEDS_FEDAVG = "clips and sums the updates itself"
# The DP stage's own settings (besides a server optimizer's): given with --dp gaussian on any method that takes it.
DP_SETTINGS = ("clip", "noise_multiplier", "delta", "target_epsilon", "dp_seed", "accountant", "strict_dp_check",
               "target_quantile", "clip_lr", "initial_clip", "clip_count_noise")
MECHANISMS = ("gaussian",)  # --dp


SPEC = Spec("dp-fedavg", "client-level differential privacy (McMahan et al., ICLR 2018); --aggregator fedavg; "
                         "--server-optimizer fedavgm|fedadagrad|fedadam|fedyogi steps on the noised average (same epsilon)",
            make=make,
            settings=(*OPTIMIZER_SETTINGS, *DP_SETTINGS),
            off_the_clock=OFF_THE_CLOCK, needs_fedavg=NEEDS_FEDAVG, takes_server_optimizer=True, private=True,
            refuses_dp="it is DP-FedAvg already (the same as --strategy fedavg --dp gaussian)",
            optimizer_settings=OPTIMIZER_SETTINGS[1:], label=_label, banner=_banner,
            means={"server_optimizer": "none (the noised average itself)",
                   "server_lr": "the optimizer's (fedavgm 1, fedadam 0.01, ...)"})
