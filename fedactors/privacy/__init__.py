"""DP-FedAvg's arithmetic apart from the rounds: the accountant, adaptive clipping's update, and the pre-flight
that says before round 1 whether the noise will drown the updates. Pure functions and a frozen dataclass: no Ray,
no torch (the model's size is given).

    q K            the expected clients a round (q = --frac, K = --clients: Poisson sampling)
    z, S           --noise-multiplier and --clip: noise of std z S is added to the clipped sum
    z S / (q K)    the noise's standard deviation per weight on the average (the fixed-denominator estimator)
    sqrt(d) z S / (q K)   its expected L2 norm over the d weights that travel, against at most S of signal

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021) moves the clip C each round
toward the --target-quantile gamma of the clients' update norms: C <- C exp(-eta (b - gamma)), where b
is the noised fraction of the round's clients whose update norm was <= C. The count is released with
Gaussian noise of std sigma_b on the sum of (b_i - 1/2), whose sensitivity is 1/2; the update's sum
gets noise of multiplier z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2. The two Gaussian mechanisms on the one
sampled set of clients are together exactly one Gaussian mechanism of multiplier z (their Mahalanobis
sensitivities add in squares: 1/z_delta^2 + 1/(2 sigma_b)^2 = 1/z^2), so the run is accounted at z:
the count's release costs what the update's extra noise (z_delta > z) pays for.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

ACCOUNTANTS = ("pld", "rdp")
# PLD's grid of privacy-loss values. dp-accounting's default (1e-4) takes ~1.5 s for 200 rounds, this ~0.06 s (what
# RDP takes), and moves epsilon by < 1e-5 relative (9.97132 against 9.97128 at q = 0.1, z = 1, 200 rounds, delta
# 1e-5); the discretisation is pessimistic either way, so the reported epsilon stays an upper bound.
PLD_DISCRETIZATION = 1e-3
# Adaptive clipping's defaults, Andrew et al.'s: the median, eta_C = 0.2, C_0 = 0.1; sigma_b = (q K) / 20.
TARGET_QUANTILE, CLIP_LR, INITIAL_CLIP, COUNT_NOISE_PER_CLIENT = 0.5, 0.2, 0.1, 1 / 20


@functools.lru_cache(maxsize=1024)
def dp_epsilon(rate: float, noise_multiplier: float, rounds: int, delta: float, accountant: str) -> float:
    """Epsilon at `delta` of `rounds` Poisson-sampled (rate) Gaussian (noise_multiplier) steps, by dp-accounting's
    "rdp" (Renyi DP) or "pld" (privacy loss distributions: tighter) accountant.

    About 0.06-0.2 s a call either way; a run with --target-epsilon asks for each round's value three times (the
    round's own, and the budget's look one and two rounds ahead), hence the cache."""
    import logging

    import dp_accounting

    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    logging.getLogger("absl").setLevel(logging.ERROR)  # it warns of orders it cannot use, and uses the others
    if accountant == "rdp":
        from dp_accounting.rdp import rdp_privacy_accountant

        ledger = rdp_privacy_accountant.RdpAccountant()
    else:
        from dp_accounting.pld import pld_privacy_accountant

        ledger = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    ledger.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise_multiplier)), rounds))
    return float(ledger.get_epsilon(delta))


def update_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """z_delta: the update's share of z when the clipped count takes noise of std `count_noise` (sigma_b);
    ValueError unless 2 sigma_b > z (the count would need all the privacy and more)."""
    if noise_multiplier == 0:
        return 0.0
    if not 2 * count_noise > noise_multiplier:
        raise ValueError(f"the clipped count's noise sigma_b = {count_noise:g} must exceed z / 2 = {noise_multiplier / 2:g}")
    return (noise_multiplier ** -2 - (2 * count_noise) ** -2) ** -0.5


def next_clip(clip: float, norms: Sequence[float], count_noise_draw: float, expected_clients: float,
              target_quantile: float, clip_lr: float) -> float:
    """Adaptive clipping's geometric step: C exp(-eta (b - gamma)) with b the noised fraction of the round's clients
    whose update norm was <= C, estimated as (sum of ([norm <= C] - 1/2) + noise) / (q K) + 1/2.

    `count_noise_draw` is the noise itself (sigma_b times a standard normal). Centring the indicators at 1/2 halves
    the count's sensitivity (Andrew et al., section 3); dividing by the expected q K rather than the clients sampled
    keeps who took part out of it, as DP-FedAvg's average does."""
    below = sum(1 for norm in norms if norm <= clip)  # the kernel clips what is > clip: the rest are below
    fraction = (below - len(norms) / 2 + count_noise_draw) / expected_clients + 0.5
    return clip * math.exp(-clip_lr * (fraction - target_quantile))


@dataclass(frozen=True)
class Preflight:
    """What the noise does to the average, before round 1; `lines` for the header, `warning` when it drowns S."""

    expected_clients: float  # q K
    clip: float  # S, or adaptive clipping's initial C
    adaptive: bool
    noise_multiplier: float  # z: what the run is accounted at
    update_noise_multiplier: float  # the update's: z, or z_delta with adaptive clipping
    weights: int  # d: the floats that travel
    rounds: int
    epsilon: float
    delta: float
    accountant: str

    @property
    def noise_std(self) -> float:
        """Per weight, on the average: z S / (q K)."""
        return self.update_noise_multiplier * self.clip / self.expected_clients

    @property
    def noise_norm(self) -> float:
        """The noise vector's expected L2 norm on the average: sqrt(d) z S / (q K)."""
        return math.sqrt(self.weights) * self.noise_std

    @property
    def noise_to_clip(self) -> float:
        """noise_norm / S = sqrt(d) z / (q K): the same whatever S (the noise scales with the clip, adaptive or not)."""
        return self.noise_norm / self.clip

    def to_dict(self) -> dict:
        return {**asdict(self), "noise_std": self.noise_std, "noise_norm": self.noise_norm,
                "noise_to_clip": self.noise_to_clip}

    def lines(self) -> list[str]:
        clip = f"clip C = {self.clip:g} at first (adaptive)" if self.adaptive else f"clip S = {self.clip:g}"
        z = (f"z = {self.noise_multiplier:g} (the update's z_delta = {self.update_noise_multiplier:.4g})" if self.adaptive
             else f"z = {self.noise_multiplier:g}")
        return [
            f"privacy: about {self.expected_clients:g} clients a round (q K); {z}; noise on the average: std "
            f"{self.noise_std:.3g} a weight, norm ~{self.noise_norm:.3g} over {self.weights:,} weights, against the "
            f"{clip} ({self.noise_to_clip:.3g}x)",
            f"privacy: the {self.rounds} rounds would spend epsilon {self.epsilon:.3f} at delta {self.delta:g} "
            f"({self.accountant.upper()} accountant)",
        ]

    def warning(self) -> str | None:
        """One line when the noise's norm exceeds the clip, naming what would help; None when it does not. (The noise is
        spread over every direction and the signal is not, so a few times the clip may still train: the 2NN of docs/privacy.md
        does at 4.5x; the default CNN's 129x does not.)"""
        if self.noise_to_clip <= 1:
            return None
        needed = math.sqrt(self.weights) * self.update_noise_multiplier
        return (f"DP noise outweighs the updates: the noise added to the average has norm ~{self.noise_norm:.3g}, "
                f"{self.noise_to_clip:.3g}x the clip {self.clip:g} that bounds a client's update (std "
                f"{self.noise_std:.3g} over {self.weights:,} weights); it falls as 1/(q K): more clients a round "
                f"(q K = {self.expected_clients:g} now, ~{needed:,.0f} would bring it to the clip), a smaller "
                f"--noise-multiplier (z = {self.noise_multiplier:g}; epsilon grows) or a smaller model would help "
                "(--strict-dp-check makes this an error)")


def preflight(config, weights: int) -> Preflight:
    """The pre-flight of `config` (a dp-fedavg RunConfig whose clients are known) for a model of `weights` floats."""
    expected = config.frac * config.clients
    adaptive = config.clip == "adaptive"
    return Preflight(
        expected_clients=expected, clip=config.initial_clip_value if adaptive else config.clip, adaptive=adaptive,
        noise_multiplier=config.noise_multiplier,
        update_noise_multiplier=(update_noise_multiplier(config.noise_multiplier, config.clip_count_noise_value)
                                 if adaptive else config.noise_multiplier),
        weights=weights, rounds=config.rounds,
        epsilon=dp_epsilon(config.frac, config.noise_multiplier, config.rounds, config.delta, config.accountant),
        delta=config.delta, accountant=config.accountant)


def divergence_hint(noise_to_clip: float) -> str:
    """What a DP round failure adds when the clients diverged from noised weights."""
    return (f"; DP noise is the likely cause: each round adds noise of {noise_to_clip:.3g}x the clip's norm to the "
            "average (noise-to-clip ratio sqrt(d) z / (q K)), which drives the model to values its clients cannot "
            "train from; more clients a round, a smaller --noise-multiplier or a smaller model would help")
