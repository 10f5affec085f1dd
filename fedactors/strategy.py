"""Strategies: what happens around the average. Server optimizers, FedProx, SCAFFOLD, or your own.

How `--aggregator` and `--strategy` compose: the aggregator (fedavg, median, trimmed-mean, krum,
multi-krum) turns a round's client updates into one model, the *aggregate*; the strategy
decides what the clients train and what the server does with the aggregate:

    fedavg      the aggregate is the new global model (McMahan et al. 2017): the default
    fedavgm     server momentum on the pseudo-gradient (Hsu et al. 2019)          --server-lr --server-momentum
    fedadagrad  Adagrad on the pseudo-gradient (Reddi et al., ICLR 2021)          --server-lr --beta1 --tau
    fedadam     Adam on the pseudo-gradient, no bias correction (Reddi et al.)    --server-lr --beta1 --beta2 --tau
    fedyogi     Yogi on the pseudo-gradient (Reddi et al.)                        --server-lr --beta1 --beta2 --tau
    fedprox     clients add (mu/2)||w - w_global||^2 to their loss (Li et al., MLSys 2020)    --mu
    scaffold    clients correct each step by c - c_i, control variates (Karimireddy et al., ICML 2020)
    dp-fedavg   client-level differential privacy (McMahan et al., ICLR 2018)    --clip --noise-multiplier --delta
                with --server-optimizer, that optimizer's step on the noised average (DP-FedAvgM, DP-FedAdam, ...)

The pseudo-gradient is the global model minus the aggregate; the server optimizers' step is one
native pass (fedactors._kernels.server_step), so e.g. `--aggregator median --strategy fedadam`
is Adam on a robust pseudo-gradient. SCAFFOLD needs the plain average (--aggregator fedavg).

A strategy of your own is any object with the methods of `Strategy` below (a class is enough,
no base class needed), named by `--strategy package.module:attr` or `file.py:attr` (the
attribute is the strategy, or a function returning one), or given to fedactors.run(strategy=...).
Each round it receives the global weights (its own copy: it may change them in place), the
aggregate, and the round's accepted updates with their example counts (the framework's, maybe
read-only), and returns the new global weights; its state is named float32 buffers (any names) plus
JSON-able scalars, which every checkpoint stores (no pickle, checksummed),
so it resumes bit-exactly. A user's strategy is server-side: the client-side methods are FedProx's and
SCAFFOLD's, built in.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from fedactors.config import OFF_THE_CLOCK, SERVER_LR, STRATEGIES
from fedactors.errors import ConfigError, RoundFailed
from fedactors.privacy import dp_epsilon, next_clip, update_noise_multiplier

SERVER_OPTIMIZERS = tuple(SERVER_LR)  # fedavgm, fedadagrad, fedadam, fedyogi
# One line each, for `fedactors strategies` (the table above, without the flags: config.STRATEGY_SETTINGS has them).
DESCRIPTIONS = {
    "fedavg": "the aggregate is the new global model (McMahan et al. 2017): the default",
    "fedavgm": "server momentum on the pseudo-gradient (Hsu et al. 2019)",
    "fedadagrad": "Adagrad on the pseudo-gradient (Reddi et al., ICLR 2021)",
    "fedadam": "Adam on the pseudo-gradient, no bias correction (Reddi et al., ICLR 2021)",
    "fedyogi": "Yogi on the pseudo-gradient (Reddi et al., ICLR 2021)",
    "fedprox": "clients add (mu/2)||w - w_global||^2 to their loss (Li et al., MLSys 2020)",
    "scaffold": "clients correct each step by c - c_i, control variates (Karimireddy et al., ICML 2020); --aggregator fedavg",
    "dp-fedavg": "client-level differential privacy (McMahan et al., ICLR 2018); --aggregator fedavg; "
                 "--server-optimizer fedavgm|fedadagrad|fedadam|fedyogi steps on the noised average (same epsilon)",
    "fedbuff": "asynchronous: an update every --buffer arrivals, weighted by staleness (Nguyen et al., AISTATS 2022)",
    "fedasync": "asynchronous: each arrival mixed into the model at once (Xie et al. 2019)",
}
OBJECT_PREFIX = "python:"  # config.strategy of a run given a strategy object (fedactors.run(strategy=...))
# DP-FedAvg's server optimizer's buffers and scalars in its state: "server-optimizer/m", "server-optimizer/v".
OPTIMIZER_PREFIX = "server-optimizer/"


@runtime_checkable
class Strategy(Protocol):
    """The protocol: what a strategy receives each round, what it keeps, how it is checkpointed."""

    name: str

    def step(self, weights: np.ndarray, aggregate: np.ndarray, updates: Sequence[np.ndarray],
             num_examples: Sequence[int], round_idx: int) -> np.ndarray:
        """The new global weights (float32, the weights' length), from the round's aggregate and updates.

        `weights` is the strategy's own copy of the global model: it may change it in place and return it.
        `aggregate` and `updates` are the framework's and may be read-only (NumPy refuses to write them):
        copy one before changing it."""

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(named float32 buffers, JSON-able scalars): everything the next round depends on.

        Any names: the checkpoint keeps them under the algorithm's own stage, apart from the framework's."""

    def load_state(self, buffers: dict[str, np.ndarray], scalars: dict) -> None:
        """Become what `state` described (on resume)."""

    def settings(self) -> dict:
        """The hyper-parameters, JSON-able: part of the run's fingerprint."""


@dataclass
class FedAvg:
    """The aggregate is the new global model."""

    name: str = "fedavg"

    def step(self, weights, aggregate, updates, num_examples, round_idx):
        return aggregate

    def state(self):
        return {}, {}

    def load_state(self, buffers, scalars):
        pass

    def settings(self):
        return {}


@dataclass
class ServerOptimizer:
    """FedAvgM, FedAdagrad, FedAdam or FedYogi on the pseudo-gradient, one native pass (see _kernels.server_step)."""

    name: str
    lr: float
    beta1: float
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


@dataclass
class FedProx(FedAvg):
    """FedAvg whose clients add (mu/2)||w - w_global||^2 to their loss: a gradient of mu (w - w_global)."""

    name: str = "fedprox"
    mu: float = 0.01

    def settings(self):
        return {"mu": self.mu}


@dataclass
class Scaffold:
    """SCAFFOLD, option II (Karimireddy et al. 2020), global learning rate 1.

    Every local step of client i uses the gradient g + c - c_i; after its K steps of rate lr the
    client's new control variate is c_i+ = c_i - c + (x - y_i) / (K lr). The server's model is
    the aggregate of the y_i (--aggregator fedavg: the example-weighted average, the paper's
    uniform one when clients are equal in size), and c += (1/N) sum over the round's clients of
    (c_i+ - c_i). The control variates live here, in the coordinator: a host is handed c and
    c_i with the client, and whichever host trains it, or retrains it after another died,
    gets the same; they are part of every checkpoint. Each client seen costs one float32 copy
    of the weights (6.65 MB for the CNN: 665 MB for K = 100, 6.65 GB for K = 1,000), held in
    the coordinator and written into each checkpoint.
    """

    name: str = "scaffold"
    num_clients: int = 0
    c: np.ndarray | None = None
    client_c: dict[int, np.ndarray] = field(default_factory=dict)
    _zero: np.ndarray | None = field(default=None, repr=False, compare=False)  # c_i of the clients not seen yet

    def controls(self, client_id: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(c, c_i) for training client `client_id`: zeros for what has not been set yet."""
        if self.c is None:
            self.c = np.zeros(length, np.float32)
        if client_id in self.client_c:
            return self.c, self.client_c[client_id]
        if self._zero is None or len(self._zero) != length:
            self._zero = np.zeros(length, np.float32)  # one array for every client not seen yet, so it is put once a round
            self._zero.flags.writeable = False
        return self.c, self._zero

    def step(self, weights, aggregate, updates, num_examples, round_idx):
        return aggregate

    def accept(self, new_controls: dict[int, np.ndarray]) -> None:
        """After the round: the accepted clients' c_i+, and c moved by (1/N) of their changes, clients in order."""
        if not new_controls:
            return
        total = np.zeros_like(self.c, dtype=np.float64)
        for cid in sorted(new_controls):
            new, previous = new_controls[cid].astype(np.float64), self.client_c.get(cid)
            total += new if previous is None else new - previous  # c_i was zero: new - 0 is new, no zeros made
            self.client_c[cid] = new_controls[cid]
        self.c = (self.c.astype(np.float64) + total / self.num_clients).astype(np.float32)

    def state(self):
        buffers = {} if self.c is None else {"c": self.c}
        buffers.update({f"c{cid}": c for cid, c in self.client_c.items()})
        return buffers, {}

    def load_state(self, buffers, scalars):
        self.c = np.array(buffers["c"]) if "c" in buffers else None
        self.client_c = {int(name[1:]): np.array(b) for name, b in buffers.items() if name != "c"}

    def settings(self):
        return {}


@dataclass
class DPFedAvg:
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
        return out


@dataclass
class Asynchronous:
    """fedbuff and fedasync: their server step is the coordinator's (fedactors.asynchronous), taken in virtual time;
    this object carries their settings into the run's identity."""

    name: str
    concurrency: int
    buffer: int
    staleness: str
    rate: float  # fedbuff's server learning rate, fedasync's mixing weight
    optimizer: ServerOptimizer | None = None  # fedbuff --server-optimizer: its step on the buffer's average

    def step(self, weights, aggregate, updates, num_examples, round_idx):
        """fedbuff with a server optimizer: its step from the buffer's average (the coordinator's run_async)."""
        if self.optimizer is None:
            raise TypeError(f"{self.name} has no synchronous round")
        return self.optimizer.step(weights, aggregate, updates, num_examples, round_idx)

    def state(self):
        return self.optimizer.state() if self.optimizer is not None else ({}, {})

    def load_state(self, buffers, scalars):
        if self.optimizer is not None:
            self.optimizer.load_state(buffers, scalars)

    def settings(self):
        out = {"concurrency": self.concurrency, "buffer": self.buffer, "staleness": self.staleness,
               "server_lr" if self.name == "fedbuff" else "mixing": self.rate}
        if self.optimizer is not None:
            out["optimizer"] = {"name": self.optimizer.name, **self.optimizer.settings()}
        return out


# The built-ins' classes: run by name (make_strategy), since their clients and sampling follow the name.
BUILTIN_CLASSES = (FedAvg, ServerOptimizer, FedProx, Scaffold, DPFedAvg, Asynchronous)


def clipped_sum_reference(updates: Sequence[np.ndarray], weights: np.ndarray, clip: float,
                          norms: Sequence[float]) -> np.ndarray:
    """NumPy oracle of _kernels.clipped_sum's sum, given its norms: clients in order, float32, one rounding a term."""
    total = np.zeros_like(weights)
    for w, norm in zip(updates, norms, strict=True):
        total = total + np.float32(clip / norm if norm > clip else 1.0) * (w - weights)
    return total


def make_strategy(config) -> Strategy:
    """The run's strategy object, from its configuration (a built-in name or an import spec)."""
    name = config.strategy
    if name == "fedavg":
        return FedAvg()
    if name == "fedavgm":
        return ServerOptimizer("fedavgm", lr=config.server_lr_value, beta1=config.server_momentum)
    if name in SERVER_OPTIMIZERS:
        return ServerOptimizer(name, lr=config.server_lr_value, beta1=config.beta1, beta2=config.beta2, tau=config.tau)
    if name == "fedprox":
        return FedProx(mu=config.mu)
    if name == "scaffold":
        return Scaffold(num_clients=config.clients)
    if name in ("fedbuff", "fedasync"):
        from fedactors.asynchronous import ASYNC_DEFAULTS

        optimizer = None
        if name == "fedbuff" and config.server_optimizer is not None:
            optimizer = make_strategy(dataclasses.replace(config, strategy=config.server_optimizer,
                                                          server_optimizer=None))
        return Asynchronous(name, config.concurrency_value, config.buffer_value,
                            config.staleness or ASYNC_DEFAULTS["staleness"],
                            config.server_lr_value if name == "fedbuff" else _or(config.mixing, ASYNC_DEFAULTS["mixing"]),
                            optimizer)
    if name == "dp-fedavg":
        import secrets

        from fedactors.privacy import CLIP_LR, TARGET_QUANTILE

        if config.server_optimizer is not None:
            extra = {"optimizer": make_strategy(dataclasses.replace(config, strategy=config.server_optimizer,
                                                                    server_optimizer=None))}
        else:
            extra = {}
        adaptive = config.clip == "adaptive"
        extra |= {} if not adaptive else {
            "adaptive": True, "target_quantile": _or(config.target_quantile, TARGET_QUANTILE),
            "clip_lr": _or(config.clip_lr, CLIP_LR), "count_noise": config.clip_count_noise_value,
            "initial_clip": config.initial_clip_value}
        return DPFedAvg(clip=config.initial_clip_value if adaptive else config.clip,
                        noise_multiplier=config.noise_multiplier, rate=config.frac, num_clients=config.clients,
                        delta=config.delta, seed=config.seed, accountant=config.accountant,
                        secret=config.dp_seed if config.dp_seed is not None else secrets.randbits(128), **extra)
    strategy = load_user_strategy(name)
    # The coordinator treats a subclass of DP-FedAvg or SCAFFOLD as one (Poisson sampling, control variates), so the
    # settings refused to the built-in by name are refused to it by kind, before anything runs.
    for kind in (DPFedAvg, Scaffold):
        if config.simulates_systems and isinstance(strategy, kind):
            raise ConfigError(f"--strategy {name} is a {kind.__name__} ({kind.name}), which does not run on the virtual "
                              f"clock (--client-speed, --client-trace, --deadline, --over-select): "
                              f"{OFF_THE_CLOCK[kind.name]}")
    return strategy


def _or(value, default):
    return default if value is None else value


def load_user_strategy(spec: str) -> Strategy:
    """A user's strategy from `module:attr` or `file.py:attr` (the object, or a function returning it)."""
    from fedactors.data.registry import import_spec

    if spec.startswith(OBJECT_PREFIX):
        raise ConfigError(f"this run's strategy was a Python object ({spec[len(OBJECT_PREFIX):]}): resume it from Python, "
                          "fedactors.resume(..., strategy=the same object)")
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"--strategy {spec}: not one of {', '.join(STRATEGIES)}, nor module:attr or file.py:attr")
    module = import_spec(where, spec, flag="--strategy")
    if not hasattr(module, attr):
        raise ConfigError(f"--strategy {spec}: {where} has no attribute {attr!r}")
    value = getattr(module, attr)
    if isinstance(value, type) or (callable(value) and not isinstance(value, Strategy)):
        try:
            value = value()
        except Exception as exc:
            raise ConfigError(f"--strategy {spec}: calling {attr}() failed: {type(exc).__name__}: {exc}") from None
    missing = [m for m in ("name", "step", "state", "load_state", "settings") if not hasattr(value, m)]
    if missing:
        raise ConfigError(f"--strategy {spec}: {attr} lacks {', '.join(missing)} (see fedactors.strategy.Strategy)")
    try:
        json.dumps(value.settings())
    except (TypeError, ValueError):
        raise ConfigError(f"--strategy {spec}: settings() must return JSON-able values") from None
    return value


def checked_step(strategy: Strategy, weights: np.ndarray, aggregate: np.ndarray, updates, num_examples,
                 round_idx: int) -> np.ndarray:
    """strategy.step, refused loudly when it returns what cannot be the next global model."""
    from fedactors.aggregate import all_finite

    builtin = isinstance(strategy, BUILTIN_CLASSES)
    # A user's step may change `weights` in place (the protocol says so), while the framework's array may be
    # read-only (the object store's) and is the old model the pool has put by identity: a copy of it, about
    # 1 ms for the CNN's 1.66 M floats once a round. The built-ins never write it: they get the array itself.
    new = strategy.step(weights if builtin else weights.copy(), aggregate, updates, num_examples, round_idx)
    if not isinstance(new, np.ndarray) or new.dtype != np.float32 or new.shape != weights.shape:
        got = f"{new.dtype} {new.shape}" if isinstance(new, np.ndarray) else type(new).__name__
        raise RoundFailed(f"round {round_idx}: strategy {strategy.name} returned {got}, expected float32 {weights.shape}")
    if not all_finite(new):
        raise RoundFailed(f"round {round_idx}: strategy {strategy.name} returned weights holding NaN or infinity")
    if not builtin:
        problem = state_problem(strategy.state())
        if problem:
            raise RoundFailed(f"round {round_idx}: strategy {strategy.name}'s state() {problem}; a checkpoint holds "
                              "1-D float32 buffers named by strings and JSON scalars")
    return np.ascontiguousarray(new)


def state_problem(state: object) -> str | None:
    """What makes a strategy's state() unfit for a checkpoint, or None."""
    if not (isinstance(state, tuple) and len(state) == 2 and all(isinstance(part, dict) for part in state)):
        return f"returned a {type(state).__name__}, not (buffers, scalars), two dicts"
    buffers, scalars = state
    for name, buf in buffers.items():
        if not isinstance(name, str) or not name:
            return f"names a buffer {name!r}"
        if not (isinstance(buf, np.ndarray) and buf.dtype == np.float32 and buf.ndim == 1):
            got = f"{buf.dtype} {buf.shape}" if isinstance(buf, np.ndarray) else type(buf).__name__
            return f"holds buffer {name!r} as {got}"
    if not all(isinstance(name, str) for name in scalars):
        return f"names scalars {[n for n in scalars if not isinstance(n, str)]!r}, not by strings"
    try:
        json.dumps(scalars, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"holds scalars JSON cannot write ({exc})"
    return None
