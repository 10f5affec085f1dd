"""RunConfig: one frozen dataclass holding a run's resolved settings, validated on construction."""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fedactors.algorithms import BUILTINS, builtin
from fedactors.algorithms.fedopt import SERVER_LR
from fedactors.errors import ConfigError

DATA_KINDS = ("npz", "leaf", "hf")  # --data KIND:PATH (fedactors.task.load_arrays)
PARTITIONS = ("iid", "noniid", "shards", "dirichlet", "unbalanced", "natural")  # fedactors.data.partition implements them
AGGREGATORS = ("fedavg", "median", "trimmed-mean", "krum", "multi-krum")
# The built-in algorithms, each described by the module that defines it (fedactors.algorithms: Spec); the tables
# below are read off those descriptions, so no name is listed here.
STRATEGIES = tuple(BUILTINS)
ASYNC_STRATEGIES = tuple(name for name, spec in BUILTINS.items() if spec.asynchronous)  # fedactors.runtime.asynchronous
# --lr when not given: the paper's 0.1 (FedAvg's), except for the algorithms whose Spec says otherwise (those that fail
# with it on the paper's non-IID CNN, E=1, B=10, C=0.1, within 100 rounds: issue 28, the runs in docs/runs/tune-*).
CLIENT_LR = {name: spec.default_lr for name, spec in BUILTINS.items() if spec.default_lr is not None}
DEFAULT_LR = 0.1
# The algorithms that take a server optimizer (--server-optimizer) on what they make of a round: FedBuff on its buffer's
# average, DP-FedAvg on its noised average (post-processing: the accountant's epsilon is the same).
OPTIMIZED_STRATEGIES = tuple(name for name, spec in BUILTINS.items() if spec.takes_server_optimizer)
# Each algorithm setting (a RunConfig field) and the built-ins that read it; for another, it is refused.
STRATEGY_SETTINGS = {name: tuple(s for s, spec in BUILTINS.items() if name in spec.settings)
                     for name in dict.fromkeys(f for spec in BUILTINS.values() for f in spec.settings)}
# Adaptive clipping's settings (--clip adaptive): None is the paper's default (fedactors.privacy).
ADAPTIVE_CLIP_SETTINGS = ("target_quantile", "clip_lr", "initial_clip", "clip_count_noise")
ACCOUNTANTS = ("pld", "rdp")  # fedactors.privacy.dp_epsilon's
# The algorithms that need only the round's average, so that hosts may sum their clients (host_sums_apply).
HOST_SUM_STRATEGIES = tuple(name for name, spec in BUILTINS.items() if spec.host_sums)
ATTACKS = ("sign-flip", "gaussian", "nan")  # fedactors.attacks implements them
PRECISIONS = ("fp32", "bf16")
SECURE_AGGREGATIONS = ("secagg", "secagg+")  # fedactors.secagg.stage: the complete graph, k neighbours

# Fields that change what a run computes. Two runs agreeing on these produce the same weights
# round for round; the others (how many rounds, where, with how many hosts) do not.
EXPERIMENT_FIELDS = (
    "task", "data", "clients", "frac", "epochs", "batch_size", "lr", "partition", "shards_per_client", "alpha",
    "sigma", "seed", "aggregator", "trim_fraction", "krum_f", "byzantine", "attack", "attack_scale", "precision",
    "strategy", "server_lr", "server_momentum", "beta1", "beta2", "tau", "mu", "clip", "noise_multiplier",
)

# Fields that change what a run computes when set, counted in its fingerprint only then (so the runs
# made before they existed keep theirs).
OPTIONAL_EXPERIMENT_FIELDS = ("partition_by", "input_column", "label_column", "dp", "dp_seed", "eval_clients",
                              "client_test_fraction", "holdout_clients", "compress", "compress_down", *ADAPTIVE_CLIP_SETTINGS, "client_speed",
                              "client_trace", "deadline", "over_select", "concurrency", "buffer", "staleness", "mixing",
                              "server_optimizer", "secure_aggregation", "secagg_neighbours", "secagg_threshold")
# Fields that change what a run computes, counted in its fingerprint only when not at these defaults (the runs made
# before they existed computed with the default): the default local update's settings (fedactors.algorithms.local).
DEFAULTED_EXPERIMENT_FIELDS = {"client_optimizer": "sgd", "client_momentum": 0.9, "weight_decay": 0.0,
                               "lr_schedule": "constant", "lr_warmup_steps": 0, "finetune_steps": 0,
                               "ditto_lambda": 0.1, "head_epochs": 10}
# The settings that put clients on a virtual clock (fedactors.runtime.systems): any of them, or an asynchronous strategy.
SYSTEMS_SETTINGS = ("client_speed", "client_trace", "deadline", "over_select")
# The algorithms that do not run on the virtual clock, and why: refused by name here, and a user's algorithm of
# their kind (a subclass) by algorithms.make_algorithm.
OFF_THE_CLOCK = {name: spec.off_the_clock for name, spec in BUILTINS.items() if spec.off_the_clock}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know. `batch_size=None` means B = inf (full batch)."""

    task: str = "mnist-cnn"  # a built-in name, module:attr or file.py:attr (fedactors.task)
    data: str | None = None  # npz:PATH, leaf:DIR or hf:DIR: arrays in place of the task's own data
    # --data hf:DIR (fedactors.data.hf): one client per value of this column (with --partition natural), and the
    # columns holding the examples and the labels. None: no owners; `image` or the one column left; `label`.
    partition_by: str | None = None
    input_column: str | None = None
    label_column: str | None = None
    clients: int | None = 100  # None only with partition "natural" until the data is read: one client per owner
    frac: float = 0.1
    rounds: int = 200
    epochs: int = 5
    batch_size: int | None = 10
    lr: float | None = None  # None: CLIENT_LR's for the strategy, else DEFAULT_LR (resolved on construction)
    partition: str = "noniid"
    shards_per_client: int = 2  # shards: label-sorted shards each client gets (noniid is 2)
    alpha: float = 0.5  # dirichlet: concentration; small is skewed
    sigma: float = 1.0  # unbalanced: spread of the log-normal client sizes
    seed: int = 0
    eval_every: int = 1
    target: float = 0.99
    # What --target is a value of: accuracy, "loss", or a task's own metric (fedactors.task.Task.metrics).
    target_metric: str = "accuracy"
    hosts: int | None = None
    address: str | None = None
    data_dir: str | None = None
    checkpoint_every: int = 1
    keep: int = 2
    cpus_per_host: float = 1.0
    gpus_per_host: float = 0.0
    min_fit_fraction: float = 1.0
    round_timeout: float | None = None  # seconds; None waits as long as training takes
    aggregator: str = "fedavg"
    # FedAvg's sum made on the hosts: each returns one exact partial sum of its clients a round instead
    # of each client's weights (fedactors.runtime.coordinator); the bytes are the same either way.
    host_sums: bool = True
    trim_fraction: float = 0.1  # beta of the trimmed mean: drop floor(beta * m) at each end
    krum_f: int = 1  # Krum's assumed number of faulty clients among a round's m
    strategy: str = "fedavg"  # a built-in (STRATEGIES) or module:attr / file.py:attr (fedactors.strategy)
    server_lr: float | None = None  # server optimizers' learning rate; None: SERVER_LR's
    server_momentum: float = 0.9  # fedavgm's momentum
    beta1: float = 0.9  # fedadagrad, fedadam, fedyogi: first-moment decay (Reddi et al.)
    beta2: float = 0.99  # fedadam, fedyogi: second-moment decay (Reddi et al.)
    tau: float = 1e-3  # adaptivity (the denominator's epsilon); Reddi et al. tune it in 1e-5..1e-1
    mu: float = 0.01  # fedprox: the proximal term's weight
    ditto_lambda: float = 0.1  # ditto: the pull (lambda/2)||v - w||^2 of each client's personal model toward the global
    head_epochs: int = 10  # fedrep: epochs of a client's own head (the body frozen) before --epochs of the body (the paper's)
    clip: float | str = 1.0  # dp-fedavg: each client update's L2 norm is clipped to this (S), or "adaptive"
    noise_multiplier: float = 1.0  # dp-fedavg: the noise on the sum has standard deviation noise_multiplier * clip (z)
    delta: float = 1e-5  # dp-fedavg: epsilon is reported at this delta
    target_epsilon: float | None = None  # dp-fedavg: stop before the round that would spend more
    # dp-fedavg: who is sampled and the noise come from a secret drawn from the OS when the run
    # starts, kept only in its checkpoints; dp_seed derives them from this number instead, which
    # makes the run reproducible and its privacy void (anyone with the seed can take the noise off).
    dp_seed: int | None = None
    # --clip adaptive (Andrew et al. 2021): the clip follows this quantile of the update norms (gamma), at this
    # rate (eta), from this clip (C_0), the clipped count noised with this std (sigma_b); None: the paper's.
    target_quantile: float | None = None
    clip_lr: float | None = None
    initial_clip: float | None = None
    clip_count_noise: float | None = None
    # dp-fedavg: "pld" or "rdp". Not part of what a run computes, so not of its fingerprint; a checkpoint written
    # before it existed holds none and resumes with "rdp", what it reported then (api.resumed_config).
    accountant: str = "pld"
    strict_dp_check: bool = False  # dp-fedavg: noise on the average of a larger norm than the clip is an error
    # The DP stage on another method (--dp gaussian): DP-FedAvg's sampling, clipping, noise and accountant around the
    # --strategy's client half and server step (fedactors.algorithms.dpfedavg.stage); the settings above apply.
    dp: str | None = None
    byzantine: int = 0  # faulty clients, fixed for the run by the seed (fedactors.attacks)
    attack: str = "sign-flip"
    attack_scale: float = 10.0
    precision: str = "fp32"  # bf16: bfloat16 compute, float32 master weights
    # A seeded fraction of the clients keeps a share of its examples out of training and is evaluated on it
    # every evaluated round (fedactors.data.partition.hold_out). None: only clients with test data of their own
    # (a natural partition's client_test) are evaluated one by one.
    eval_clients: float | None = None
    # Every client keeps this seeded fraction of its examples out of training as its own test split (the same draw
    # as --eval-clients, for all clients): each evaluation judges the global model, and each client's personalized
    # one (an algorithm's personalize(), --finetune-steps), on every client's split.
    client_test_fraction: float | None = None
    # Before a client's personalized model is judged: this many plain SGD steps on its own training examples (after
    # the algorithm's personalize(), if it has one): FedAvg + fine-tuning. 0: none.
    finetune_steps: int = 0
    # A seeded fraction of the clients never trains: judged on their own splits after --finetune-steps from the
    # global model, beside the clients that trained (the participation gap: Yuan et al., ICLR 2022).
    holdout_clients: float | None = None
    # What a client's update is sent as (fedactors.compress): q8, q4 or q2, optionally :rotate. None: float32.
    compress: str | None = None
    # What the server sends each client (issue 37 item 5): the global model as a delta from the model that client
    # last received, quantized (q8, q4 or q2, optionally :rotate); a client never sent one has the round-0 model.
    # None: the float32 weights.
    compress_down: str | None = None
    # Secure aggregation (fedactors.secagg.stage): each client's update masked so that the server learns only the
    # round's sum, FedAvg's bytes all the same: secagg (the complete graph) or secagg+ (k neighbours), and its k and
    # Shamir threshold t (None: the defaults for the round's clients). None: updates travel as they are.
    secure_aggregation: str | None = None
    secagg_neighbours: int | None = None
    secagg_threshold: int | None = None
    # Uneven clients in virtual time (fedactors.runtime.systems): lognormal:SIGMA speeds, a CSV trace of speeds and online
    # windows (its path; its digest is in the run's identity), a round's deadline in virtual seconds, and the
    # fraction sampled beyond m (the first m to finish are kept). None: every client alike, no clock.
    client_speed: str | None = None
    client_trace: str | None = None
    deadline: float | None = None
    over_select: float | None = None
    # fedbuff / fedasync (fedactors.runtime.asynchronous): clients training at once, arrivals per server update (fedbuff),
    # the staleness weighting, and fedasync's mixing weight. None: their defaults (ASYNC_DEFAULTS).
    concurrency: int | None = None
    buffer: int | None = None
    staleness: str | None = None
    mixing: float | None = None
    # fedbuff: a server optimizer (fedavgm, fedadagrad, fedadam, fedyogi) on the buffer's pseudo-gradient in place of
    # its plain step w + eta (average - w); dp-fedavg: on the noised average's (DP-FedAvgM, DP-FedAdam, ...). None (or
    # "fedavg", which becomes None): the plain step.
    server_optimizer: str | None = None
    # The default local update (fedactors.algorithms.local): its optimizer (sgd, momentum, adam), momentum, L2 weight decay, the
    # learning rate by round (constant, exp:GAMMA, step:EVERY:GAMMA, cosine[:MIN_FRACTION]) and its warm-up in steps.
    client_optimizer: str = "sgd"
    client_momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.server_optimizer == "fedavg":  # FedAvg's step is the plain one: stored as None, every fingerprint as before
            object.__setattr__(self, "server_optimizer", None)
        if self.lr is None:  # resolved here, so a run's stored configuration and fingerprint hold the number
            object.__setattr__(self, "lr", CLIENT_LR.get(self.strategy, DEFAULT_LR)
                               if isinstance(self.strategy, str) else DEFAULT_LR)
        if not isinstance(self.task, str) or not self.task.strip():
            raise ConfigError(f"--task must name a task, got {self.task!r}")
        if self.data is not None and not (isinstance(self.data, str) and self.data.partition(":")[0] in DATA_KINDS
                                          and self.data.partition(":")[2]):
            raise ConfigError(f"--data must be npz:PATH, leaf:DIR or hf:DIR, got {self.data!r}")
        for name in ("partition_by", "input_column", "label_column"):
            value = getattr(self, name)
            if value is None:
                continue
            if not (isinstance(value, str) and value.strip()):
                raise ConfigError(f"--{name.replace('_', '-')} must name a column, got {value!r}")
            if not (isinstance(self.data, str) and self.data.startswith("hf:")):
                raise ConfigError(f"--{name.replace('_', '-')} applies to --data hf:DIR only")
        if self.partition_by is not None and self.partition != "natural":
            raise ConfigError(f"--partition-by {self.partition_by} makes one client per value of that column: it "
                              f"goes with --partition natural, not {self.partition}")
        if self.clients is None:  # natural: the data decides, and experiment.run fills it in before anything uses it
            if self.partition != "natural":
                raise ConfigError(f"--clients is needed with --partition {self.partition}")
        else:
            _positive_int("--clients", self.clients)
        _positive_int("--shards-per-client", self.shards_per_client)
        if not (_is_real(self.alpha) and self.alpha > 0):
            raise ConfigError(f"--alpha must be a positive number, got {self.alpha!r}")
        if not (_is_real(self.sigma) and self.sigma >= 0):
            raise ConfigError(f"--sigma must be a number >= 0, got {self.sigma!r}")
        _positive_int("--rounds", self.rounds)
        _positive_int("--epochs", self.epochs)
        _positive_int("--eval-every", self.eval_every)
        _positive_int("--checkpoint-every", self.checkpoint_every)
        _positive_int("--keep", self.keep)
        if self.batch_size is not None:
            _positive_int("--batch-size", self.batch_size)
        if self.hosts is not None:
            _positive_int("--hosts", self.hosts)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be an integer in [0, 2**32), got {self.seed!r}")
        if not (_is_real(self.frac) and 0.0 < self.frac <= 1.0):
            raise ConfigError(f"--frac must be in (0, 1], got {self.frac!r}")
        if not (_is_real(self.lr) and self.lr > 0.0):
            raise ConfigError(f"--lr must be a positive finite number, got {self.lr!r}")
        if not isinstance(self.target_metric, str) or not self.target_metric.strip():
            raise ConfigError(f"--target-metric must name a metric, got {self.target_metric!r}")
        if self.target_metric == "accuracy" and not (_is_real(self.target) and 0.0 < self.target <= 1.0):
            raise ConfigError(f"--target must be an accuracy in (0, 1], got {self.target!r}")
        if not _is_real(self.target):
            raise ConfigError(f"--target must be a finite number, got {self.target!r}")
        if not (_is_real(self.cpus_per_host) and self.cpus_per_host > 0):
            raise ConfigError(f"--cpus-per-host must be positive, got {self.cpus_per_host!r}")
        if not (_is_real(self.gpus_per_host) and self.gpus_per_host >= 0):
            raise ConfigError(f"--gpus-per-host must be >= 0, got {self.gpus_per_host!r}")
        if self.gpus_per_host > 1 and self.gpus_per_host != int(self.gpus_per_host):
            raise ConfigError(f"--gpus-per-host above 1 must be a whole number, got {self.gpus_per_host!r}")
        if not (_is_real(self.min_fit_fraction) and 0.0 < self.min_fit_fraction <= 1.0):
            raise ConfigError(f"--min-fit-fraction must be in (0, 1], got {self.min_fit_fraction!r}")
        if self.round_timeout is not None and not (_is_real(self.round_timeout) and self.round_timeout > 0):
            raise ConfigError(f"--round-timeout must be a positive number of seconds, got {self.round_timeout!r}")
        if self.aggregator not in AGGREGATORS:
            raise ConfigError(f"--aggregator must be one of {', '.join(AGGREGATORS)}, got {self.aggregator!r}")
        if not (_is_real(self.trim_fraction) and 0.0 <= self.trim_fraction < 0.5):
            raise ConfigError(f"--trim-fraction must be in [0, 0.5), got {self.trim_fraction!r}")
        if isinstance(self.byzantine, bool) or not isinstance(self.byzantine, int) or not (
                0 <= self.byzantine < (self.clients if self.clients is not None else 2**63)):
            raise ConfigError(f"--byzantine must be an integer in [0, --clients), got {self.byzantine!r}")
        if self.attack not in ATTACKS:
            raise ConfigError(f"--attack must be one of {', '.join(ATTACKS)}, got {self.attack!r}")
        if not (_is_real(self.attack_scale) and self.attack_scale > 0):
            raise ConfigError(f"--attack-scale must be a positive finite number, got {self.attack_scale!r}")
        if not isinstance(self.host_sums, bool):
            raise ConfigError(f"host_sums must be true or false, got {self.host_sums!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.eval_clients is not None and not (_is_real(self.eval_clients) and 0 < self.eval_clients <= 1):
            raise ConfigError(f"--eval-clients must be a fraction in (0, 1], got {self.eval_clients!r}")
        if self.client_test_fraction is not None:
            if not (_is_real(self.client_test_fraction) and 0 < self.client_test_fraction < 1):
                raise ConfigError(f"--client-test-fraction must be a fraction in (0, 1), got {self.client_test_fraction!r}")
            if self.eval_clients is not None:
                raise ConfigError("--client-test-fraction and --eval-clients both hold examples out for per-client "
                                  "evaluation: give one (--client-test-fraction holds out of every client)")
        if self.holdout_clients is not None:
            if not (_is_real(self.holdout_clients) and 0 < self.holdout_clients < 1):
                raise ConfigError(f"--holdout-clients must be a fraction in (0, 1), got {self.holdout_clients!r}")
            if self.eval_clients is not None:
                raise ConfigError("--holdout-clients judges clients on their own splits: give --client-test-fraction F "
                                  "(every client's split), not --eval-clients")
            sampler = ("--strategy " + self.strategy + " samples by Poisson" if self.private else
                       "the virtual clock samples the clients online" if self.simulates_systems or self.asynchronous
                       else None)
            if sampler:
                raise ConfigError(f"--holdout-clients keeps clients out of the paper's uniform sampling; {sampler}")
            if self.clients is not None:
                from fedactors.seeding import holdout_clients

                left = self.clients - len(holdout_clients(self.seed, self.clients, self.holdout_clients))
                if left < self.clients_per_round:
                    raise ConfigError(f"--holdout-clients {self.holdout_clients:g} leaves {left} of {self.clients} "
                                      f"clients to train, fewer than a round's {self.clients_per_round}")
        if isinstance(self.finetune_steps, bool) or not isinstance(self.finetune_steps, int) or self.finetune_steps < 0:
            raise ConfigError(f"--finetune-steps must be an integer >= 0, got {self.finetune_steps!r}")
        if self.compress is not None:
            from fedactors.compress import parse

            parse(self.compress)
        if self.compress_down is not None:
            from fedactors.compress import parse

            down = parse(self.compress_down)
            if down.feedback:
                raise ConfigError(f"--compress-down {self.compress_down}: the model a client is sent is quantized "
                                  "(q8, q4 or q2, optionally :rotate); top-k and sign need error feedback, which a "
                                  "broadcast has no place for")
            if self.asynchronous:
                raise ConfigError(f"--compress-down does not go with --strategy {self.strategy}: its clients start "
                                  "from older versions of the model, not the one a round sends")
        self._check_systems()
        if self.partition not in PARTITIONS:
            raise ConfigError(f"--partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        self._check_strategy()
        self._check_secure_aggregation()
        from fedactors.algorithms.local import check

        spec = builtin(self.strategy)
        check(self, plain_sgd_only=spec.plain_sgd_only if spec else None, asynchronous=self.asynchronous)

    def _check_strategy(self) -> None:
        if not isinstance(self.strategy, str) or not self.strategy.strip():
            raise ConfigError(f"--strategy must name a strategy, got {self.strategy!r}")
        if self.strategy not in STRATEGIES and ":" not in self.strategy:
            raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, or module:attr / file.py:attr, "
                              f"got {self.strategy!r}")
        if self.dp is not None:
            self._check_dp_stage()
        if self.server_lr is not None and not (_is_real(self.server_lr) and self.server_lr > 0):
            raise ConfigError(f"--server-lr must be a positive number, got {self.server_lr!r}")
        for flag, value in (("--server-momentum", self.server_momentum), ("--beta1", self.beta1), ("--beta2", self.beta2)):
            if not (_is_real(value) and 0 <= value < 1):
                raise ConfigError(f"{flag} must be in [0, 1), got {value!r}")
        if not (_is_real(self.tau) and self.tau > 0):
            raise ConfigError(f"--tau must be a positive number, got {self.tau!r}")
        if not (_is_real(self.mu) and self.mu >= 0):
            raise ConfigError(f"--mu must be a number >= 0, got {self.mu!r}")
        if not (_is_real(self.ditto_lambda) and self.ditto_lambda >= 0):
            raise ConfigError(f"--ditto-lambda must be a number >= 0, got {self.ditto_lambda!r}")
        _positive_int("--head-epochs", self.head_epochs)
        if isinstance(self.krum_f, bool) or not isinstance(self.krum_f, int) or self.krum_f < 0:
            raise ConfigError(f"--krum-f must be an integer >= 0, got {self.krum_f!r}")
        m = self.clients_per_round if self.clients is not None else None
        if self.aggregator in ("krum", "multi-krum") and m is not None and m < 2 * self.krum_f + 3:
            raise ConfigError(f"--aggregator {self.aggregator} with --krum-f {self.krum_f} needs at least "
                              f"{2 * self.krum_f + 3} clients a round (m > 2f + 2), and m is {m}")
        if not (self.clip == "adaptive" or (_is_real(self.clip) and self.clip > 0)):
            raise ConfigError(f"--clip must be a positive number or 'adaptive', got {self.clip!r}")
        self._check_adaptive_clip()
        if not (_is_real(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(f"--noise-multiplier must be a number >= 0, got {self.noise_multiplier!r}")
        if not (_is_real(self.delta) and 0 < self.delta < 1):
            raise ConfigError(f"--delta must be in (0, 1), got {self.delta!r}")
        if self.target_epsilon is not None and not (_is_real(self.target_epsilon) and self.target_epsilon > 0):
            raise ConfigError(f"--target-epsilon must be a positive number, got {self.target_epsilon!r}")
        if self.dp_seed is not None and (isinstance(self.dp_seed, bool) or not isinstance(self.dp_seed, int)
                                         or self.dp_seed < 0):
            raise ConfigError(f"--dp-seed must be an integer >= 0, got {self.dp_seed!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")
        if not isinstance(self.strict_dp_check, bool):
            raise ConfigError(f"strict_dp_check must be true or false, got {self.strict_dp_check!r}")
        spec = builtin(self.strategy)
        if spec is not None and spec.needs_fedavg and not spec.asynchronous and self.aggregator != "fedavg":
            raise ConfigError(f"--strategy {self.strategy} {spec.needs_fedavg}: it needs --aggregator fedavg, "
                              f"not {self.aggregator}")

    def _check_dp_stage(self) -> None:
        from fedactors.algorithms.dpfedavg import MECHANISMS, NEEDS_FEDAVG

        if self.dp not in MECHANISMS:
            raise ConfigError(f"--dp must be one of {', '.join(MECHANISMS)}, got {self.dp!r}")
        spec = builtin(self.strategy)
        if spec is None:
            takes = ", ".join(name for name, s in BUILTINS.items() if s.refuses_dp is None)
            raise ConfigError(f"--dp {self.dp} composes with the built-in methods whose server step reads only the "
                              f"average ({takes}), not your own --strategy {self.strategy}: subclass "
                              "fedactors.algorithms.DPFedAvg to privatize it")
        if spec.refuses_dp:
            raise ConfigError(f"--dp {self.dp} does not go with --strategy {self.strategy}: {spec.refuses_dp}")
        if self.server_optimizer is not None:
            raise ConfigError(f"--server-optimizer does not go with --dp: name the optimizer as the method, e.g. "
                              f"--strategy {self.server_optimizer} --dp {self.dp}")
        if self.aggregator != "fedavg":
            raise ConfigError(f"--dp {self.dp} {NEEDS_FEDAVG}: it needs --aggregator fedavg, not {self.aggregator}")

    def _check_secure_aggregation(self) -> None:
        for flag, value in (("--secagg-neighbours", self.secagg_neighbours), ("--secagg-threshold", self.secagg_threshold)):
            if value is not None:
                _positive_int(flag, value)
                if self.secure_aggregation is None:
                    raise ConfigError(f"{flag} needs --secure-aggregation secagg+ (or secagg)")
        if self.secure_aggregation is None:
            return
        if self.secure_aggregation not in SECURE_AGGREGATIONS:
            raise ConfigError(f"--secure-aggregation must be one of {', '.join(SECURE_AGGREGATIONS)}, "
                              f"got {self.secure_aggregation!r}")
        from fedactors.secagg.stage import check

        check(self)

    @property
    def private(self) -> bool:
        """Whether the run is differentially private: DP-FedAvg, or the DP stage (--dp) on another method."""
        spec = builtin(self.strategy)
        return self.dp is not None or (spec is not None and spec.private)

    def _check_systems(self) -> None:
        from fedactors.runtime.asynchronous import parse_staleness
        from fedactors.runtime.systems import parse_speed

        parse_speed(self.client_speed)
        if self.client_trace is not None and not (isinstance(self.client_trace, str) and self.client_trace.strip()):
            raise ConfigError(f"--client-trace must be a CSV file's path, got {self.client_trace!r}")
        if self.deadline is not None and not (_is_real(self.deadline) and self.deadline > 0):
            raise ConfigError(f"--deadline must be a positive number of virtual seconds, got {self.deadline!r}")
        if self.over_select is not None and not (_is_real(self.over_select) and self.over_select >= 0):
            raise ConfigError(f"--over-select must be a fraction >= 0, got {self.over_select!r}")
        for flag, value in (("--concurrency", self.concurrency), ("--buffer", self.buffer)):
            if value is not None:
                _positive_int(flag, value)
        parse_staleness(self.staleness)
        if self.server_optimizer is not None and self.server_optimizer not in SERVER_LR:
            raise ConfigError(f"--server-optimizer must be one of {', '.join(SERVER_LR)}, got {self.server_optimizer!r}")
        if self.mixing is not None and not (_is_real(self.mixing) and 0 < self.mixing <= 1):
            raise ConfigError(f"--mixing must be in (0, 1], got {self.mixing!r}")
        spec = builtin(self.strategy)
        if spec is not None and spec.asynchronous:
            for name in ("deadline", "over_select"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"--{name.replace('_', '-')} is for synchronous rounds; --strategy "
                                      f"{self.strategy} has no rounds to close (a client's update counts whenever "
                                      "it arrives, weighted by its staleness)")
            if (spec.fixed_buffer is None and self.buffer is not None and self.clients is not None
                    and self.buffer > self.concurrency_value):
                raise ConfigError(f"--buffer {self.buffer} is more than the {self.concurrency_value} clients training at "
                                  "once (--concurrency): a buffer fills from the clients in flight")
            if self.aggregator != "fedavg":
                raise ConfigError(f"--strategy {self.strategy} {spec.needs_fedavg}: it needs --aggregator "
                                  f"fedavg, not {self.aggregator}")
        if self.simulates_systems and self.dp is not None and not self.asynchronous:  # (that one: _check_dp_stage)
            from fedactors.algorithms.dpfedavg import OFF_THE_CLOCK as DP_OFF_THE_CLOCK

            raise ConfigError(f"--dp {self.dp} does not run on the virtual clock (--client-speed, --client-trace, "
                              f"--deadline, --over-select): {DP_OFF_THE_CLOCK}")
        if self.simulates_systems and self.strategy in OFF_THE_CLOCK:
            raise ConfigError(f"--strategy {self.strategy} does not run on the virtual clock (--client-speed, "
                              f"--client-trace, --deadline, --over-select): {OFF_THE_CLOCK[self.strategy]}")

    @property
    def simulates_systems(self) -> bool:
        """Whether clients run on a virtual clock: a systems setting is given or the strategy is asynchronous."""
        return self.asynchronous or any(getattr(self, n) is not None for n in SYSTEMS_SETTINGS)

    @property
    def asynchronous(self) -> bool:
        """Whether the algorithm has no rounds (fedbuff, fedasync: fedactors.runtime.asynchronous)."""
        spec = builtin(self.strategy)
        return spec is not None and spec.asynchronous

    @property
    def concurrency_value(self) -> int:
        """fedbuff/fedasync: clients training at once; default m (as many as a synchronous round samples)."""
        return self.concurrency if self.concurrency is not None else self.clients_per_round

    @property
    def buffer_value(self) -> int:
        """fedbuff: arrivals per server update, default min(10, concurrency); fedasync: 1."""
        spec = builtin(self.strategy)
        if spec is not None and spec.fixed_buffer is not None:
            return spec.fixed_buffer
        return self.buffer if self.buffer is not None else min(10, self.concurrency_value)

    def _check_adaptive_clip(self) -> None:
        given = [name for name in ADAPTIVE_CLIP_SETTINGS if getattr(self, name) is not None]
        if given and self.clip != "adaptive":
            raise ConfigError(f"--{given[0].replace('_', '-')} applies to --clip adaptive only, not --clip {self.clip}")
        for flag, value, ok, what in (
                ("--target-quantile", self.target_quantile, lambda v: 0 < v < 1, "in (0, 1)"),
                ("--clip-lr", self.clip_lr, lambda v: v > 0, "a positive number"),
                ("--initial-clip", self.initial_clip, lambda v: v > 0, "a positive number"),
                ("--clip-count-noise", self.clip_count_noise, lambda v: v > 0, "a positive number")):
            if value is not None and not (_is_real(value) and ok(value)):
                raise ConfigError(f"{flag} must be {what}, got {value!r}")
        if (self.clip == "adaptive" and self.clients is not None and _is_real(self.noise_multiplier)
                and self.noise_multiplier > 0 and not 2 * self.clip_count_noise_value > self.noise_multiplier):
            source = ("--clip-count-noise" if self.clip_count_noise is not None
                      else f"its default q K / 20 = {self.frac:g} x {self.clients} / 20")
            raise ConfigError(f"--clip adaptive: the clipped count's noise sigma_b ({source}) is "
                              f"{self.clip_count_noise_value:g}, and must exceed z / 2 = {self.noise_multiplier / 2:g} "
                              "(the update's noise is (z^-2 - (2 sigma_b)^-2)^-1/2); give a larger --clip-count-noise "
                              "or more clients a round")

    @property
    def clip_count_noise_value(self) -> float:
        """sigma_b: --clip-count-noise, or Andrew et al.'s (q K) / 20 (clients known)."""
        from fedactors.privacy import COUNT_NOISE_PER_CLIENT

        if self.clip_count_noise is not None:
            return self.clip_count_noise
        return self.frac * self.clients * COUNT_NOISE_PER_CLIENT

    @property
    def initial_clip_value(self) -> float:
        from fedactors.privacy import INITIAL_CLIP

        return self.initial_clip if self.initial_clip is not None else INITIAL_CLIP

    @property
    def server_lr_value(self) -> float:
        """--server-lr, or the default for the strategy's optimizer."""
        if self.server_lr is not None:
            return self.server_lr
        spec = builtin(self.strategy)
        if spec is not None and spec.takes_server_optimizer:
            spec = builtin(self.server_optimizer)
        return spec.default_server_lr if spec is not None and spec.default_server_lr is not None else 1.0

    @property
    def clients_per_round(self) -> int:
        """m = max(round(C * K), 1), rounding halves up (not Python's banker's rounding)."""
        return max(int(math.floor(self.frac * self.clients + 0.5)), 1)

    @property
    def min_updates(self) -> int:
        """Fewest updates a round may be averaged from: ceil(min_fit_fraction * m)."""
        return max(1, math.ceil(self.min_fit_fraction * self.clients_per_round - 1e-9))

    @property
    def threads_per_host(self) -> int:
        """Torch threads of a CPU host: its whole-CPU share, at least one."""
        return max(1, int(self.cpus_per_host + 1e-9))

    def to_dict(self) -> dict:
        """JSON-ready: B = inf is written as the string "inf"."""
        d = asdict(self)
        d["batch_size"] = "inf" if self.batch_size is None else self.batch_size
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """Inverse of to_dict; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        d = dict(d)
        if d.get("batch_size") == "inf":
            d["batch_size"] = None
        return cls(**d)

    def experiment(self) -> dict:
        """The fields that define what is computed (see EXPERIMENT_FIELDS)."""
        full = self.to_dict()
        fields = {k: full[k] for k in EXPERIMENT_FIELDS}
        for name in OPTIONAL_EXPERIMENT_FIELDS:  # only when set: the fingerprints of every other run stay what they were
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        for name, default in DEFAULTED_EXPERIMENT_FIELDS.items():
            if getattr(self, name) != default:
                fields[name] = getattr(self, name)
        if self.lr_schedule.startswith("cosine"):  # its learning rates depend on how many rounds there are
            fields["rounds"] = self.rounds
        return fields

    def fingerprint(self, identity: dict) -> str:
        """sha256 over the experiment-defining fields and `identity`: what the run found its task and data to be
        (the model's parameter shapes, the prepared data's digest; experiment.run computes it)."""
        ident = {**self.experiment(), "identity": identity}
        if self.aggregator == "fedavg":  # FedAvg's sum is exact (one rounding) since host sums: older checkpoints sum otherwise
            ident["sum"] = "exact-2^-32"
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


# The settings in RunConfig's order (its flags' order in --help), whichever algorithm declared one first.
STRATEGY_SETTINGS = {f.name: STRATEGY_SETTINGS[f.name] for f in fields(RunConfig) if f.name in STRATEGY_SETTINGS}


def host_sums_apply(aggregator: str, strategy: str, compress: str | None = None, dp: str | None = None) -> bool:
    """Whether hosts may sum their clients' weights: FedAvg's average with a built-in strategy that needs only
    it. A strategy of your own (an import spec, or a Python object's "python:" name) is handed every update, and
    so is a compressor with error feedback (each client's residual comes back with its update)."""
    feedback = compress is not None and compress.partition(":")[0] in ("topk", "sign")
    return aggregator == "fedavg" and strategy in HOST_SUM_STRATEGIES and not feedback and dp is None


def natural_clients(settings: dict) -> dict:
    """`settings` with clients None under --partition natural: the data's owners are the clients, counted when it is
    read (refuse_idle_settings refuses a clients given with it). Shared by the command line, the API and sweeps."""
    return {**settings, "clients": None} if settings.get("partition") == "natural" else settings


def refuse_idle_settings(given: set[str], values: dict) -> None:
    """A setting given (`given`: its names) that the other `values` switch off is a mistake: ConfigError saying so.

    Shared by the command line (the flags it was given) and the Python API (the keywords it was called with)."""
    from fedactors.algorithms.local import refuse_idle

    refuse_idle(given, values)
    if values.get("partition") == "natural" and "clients" in given:
        raise ConfigError("--clients does not go with --partition natural: every owner in the data is one client")
    if "trim_fraction" in given and values["aggregator"] != "trimmed-mean":
        raise ConfigError(f"--trim-fraction applies to --aggregator trimmed-mean only, not {values['aggregator']}")
    for name in ("attack", "attack_scale"):
        if name in given and values["byzantine"] == 0:
            raise ConfigError(f"--{name.replace('_', '-')} needs --byzantine N (how many clients attack)")
    for name, scheme in (("shards_per_client", "shards"), ("alpha", "dirichlet"), ("sigma", "unbalanced")):
        if name in given and values["partition"] != scheme:
            raise ConfigError(f"--{name.replace('_', '-')} applies to --partition {scheme} only, not {values['partition']}")
    if values.get("dp") and "host_sums" in given and values.get("host_sums"):
        raise ConfigError(f"--host-sums does not go with --dp {values['dp']}: each client's update is clipped on its own")
    if values.get("secure_aggregation") and "host_sums" in given and values.get("host_sums"):
        raise ConfigError(f"--host-sums does not go with --secure-aggregation {values['secure_aggregation']}: each "
                          "client masks its own update, and the server sums the masked ones")
    if values.get("host_sums") and "host_sums" in given and not host_sums_apply(values["aggregator"], values["strategy"],
                                                                                 values.get("compress")):
        if host_sums_apply(values["aggregator"], values["strategy"]):  # only the compressor stands in the way
            raise ConfigError(f"--host-sums does not go with --compress {values['compress']}: each client's "
                              "error-feedback residual comes back with its update")
        raise ConfigError(f"--host-sums applies to --aggregator fedavg with --strategy {', '.join(HOST_SUM_STRATEGIES)}, "
                          f"not --aggregator {values['aggregator']} --strategy {values['strategy']} (which sends each "
                          "client's weights)")
    if "krum_f" in given and values["aggregator"] not in ("krum", "multi-krum"):
        raise ConfigError(f"--krum-f applies to --aggregator krum or multi-krum only, not {values['aggregator']}")
    optimizer = values.get("server_optimizer")
    # FedBuff's --server-lr is its own step's rate too; DP-FedAvg has no server rate but its optimizer's.
    for name in ("server_lr", "server_momentum", "beta1", "beta2", "tau"):
        users = STRATEGY_SETTINGS[name]
        strategy = values["strategy"]
        spec = builtin(strategy)
        if (name in given and spec is not None and name in spec.optimizer_settings and optimizer not in users):
            raise ConfigError(f"--{name.replace('_', '-')} with --strategy {strategy} needs --server-optimizer "
                              f"{' or '.join(u for u in users if u not in OPTIMIZED_STRATEGIES)}")
    if "server_optimizer" in given and ":" in str(values["strategy"]):
        raise ConfigError(f"--server-optimizer applies to --strategy {' or '.join(OPTIMIZED_STRATEGIES)} only: a "
                          f"strategy of your own ({values['strategy']}) takes its own step")
    from fedactors.algorithms.dpfedavg import DP_SETTINGS

    for name, strategies in STRATEGY_SETTINGS.items():
        if values.get("dp") and name in DP_SETTINGS:  # the DP stage's, on whichever method it wraps
            continue
        if name in given and values["strategy"] not in strategies and ":" not in str(values["strategy"]):
            also = " (or --dp gaussian on another method)" if name in DP_SETTINGS else ""
            raise ConfigError(f"--{name.replace('_', '-')} applies to --strategy {' or '.join(strategies)}{also} only, "
                              f"not {values['strategy']}")


def parse_batch_size(value: object, name: str = "--batch-size") -> int | None:
    """B = inf ('inf', 'infinity' or 'full' in any case, float('inf'), None) -> None; else a positive integer.

    Takes a flag's text as well as a TOML value, so the command line and sweep files agree.
    """
    if value is None or (isinstance(value, float) and math.isinf(value) and value > 0):
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "infinity", "full"):
            return None
        try:
            value = int(value)
        except ValueError:
            pass
    if not is_positive_int(value):
        raise ConfigError(f"{name} must be a positive integer or 'inf', got {value!r}")
    return value


def parse_clip(value: object) -> float | str:
    """--clip's text: "adaptive" (any case), or the number it spells (RunConfig checks that it is positive)."""
    if isinstance(value, str):
        if value.strip().lower() == "adaptive":
            return "adaptive"
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"--clip must be a positive number or 'adaptive', got {value!r}") from None
    return value  # type: ignore[return-value]


def is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def read_toml(path: str | Path, what: str) -> dict:
    """A TOML file as a dict; ConfigError naming `what` (e.g. "--config x.toml") when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} is not valid TOML: {exc}") from None


def _positive_int(flag: str, value: object) -> None:
    if not is_positive_int(value):
        raise ConfigError(f"{flag} must be a positive integer, got {value!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def stored_experiment(config: dict) -> dict:
    """RunConfig.experiment of a stored configuration (run.json's "config"), a field it lacks at its default: the
    settings that define what a run computed, optional and defaulted ones only where set, as the fingerprint has them.
    For telling runs apart by what they computed (report's methods, a sweep's finished cells)."""
    defaults = RunConfig().to_dict()

    def get(name: str):
        return config.get(name, defaults[name])

    fields = {k: get(k) for k in EXPERIMENT_FIELDS}
    fields.update({k: get(k) for k in OPTIONAL_EXPERIMENT_FIELDS if get(k) is not None})
    fields.update({k: get(k) for k, default in DEFAULTED_EXPERIMENT_FIELDS.items() if get(k) != default})
    if str(get("lr_schedule")).startswith("cosine"):
        fields["rounds"] = get("rounds")
    return fields
