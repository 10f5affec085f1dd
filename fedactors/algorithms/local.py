"""The default local update: its loop (`local_update`), optimizer and learning rate, from the run's settings.

--client-optimizer sgd|momentum|adam (--client-momentum), --weight-decay, --lr-schedule (the
learning rate of round t) and --lr-warmup-steps (of step k within one local update). A client's
optimizer state (momentum buffers, Adam's moments) is made fresh for every local update and
dropped after it: nothing of it travels or is checkpointed (state kept per client is issue 36's).
The learning rate depends only on (round, step), so a resumed run trains as an uninterrupted one.

Plain SGD without weight decay is not a torch optimizer here: it stays FlatModel.sgd_step's fused
`params -= lr * grads`, the bytes of every run made before these settings existed.

torch is imported where it is used: config validates through this module, and the coordinator,
which imports config, never loads torch (see fedactors.runtime.client).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedactors.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from fedactors.config import RunConfig
    from fedactors.model import FlatModel

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULE_FORMS = "constant, exp:GAMMA, step:EVERY:GAMMA or cosine[:MIN_FRACTION]"

@dataclass(frozen=True)
class Schedule:
    """--lr-schedule: the learning rate of round t (t = 1, 2, ...) as a multiple of --lr."""

    kind: str = "constant"  # constant, exp, step or cosine
    gamma: float = 1.0  # exp, step: the factor
    every: int = 1  # step: rounds between two factors
    min_fraction: float = 0.0  # cosine: the fraction of --lr it decays to

    def factor(self, round_idx: int, rounds: int) -> float:
        """exp: gamma^(t-1); step: gamma^floor((t-1)/every); cosine over T rounds: f + (1-f)(1 + cos(pi (t-1)/T))/2."""
        t = round_idx - 1
        if self.kind == "exp":
            return self.gamma ** t
        if self.kind == "step":
            return self.gamma ** (t // self.every)
        if self.kind == "cosine":
            return self.min_fraction + (1.0 - self.min_fraction) * 0.5 * (1.0 + math.cos(math.pi * t / rounds))
        return 1.0


def parse_schedule(text: object) -> Schedule:
    """--lr-schedule's text as a Schedule; ConfigError naming what is wrong."""
    if not isinstance(text, str):
        raise ConfigError(f"--lr-schedule must be {SCHEDULE_FORMS}, got {text!r}")
    kind, *args = text.split(":")
    try:
        if kind == "constant" and not args:
            return Schedule()
        if kind == "exp" and len(args) == 1:
            return Schedule("exp", gamma=_gamma(text, args[0]))
        if kind == "step" and len(args) == 2:
            every = int(args[0])
            if every < 1:
                raise ConfigError(f"--lr-schedule {text}: EVERY must be a positive number of rounds, got {args[0]}")
            return Schedule("step", gamma=_gamma(text, args[1]), every=every)
        if kind == "cosine" and len(args) <= 1:
            low = float(args[0]) if args else 0.0
            if not 0.0 <= low <= 1.0:
                raise ConfigError(f"--lr-schedule {text}: MIN_FRACTION must be in [0, 1], got {args[0]}")
            return Schedule("cosine", min_fraction=low)
    except ValueError:
        pass
    raise ConfigError(f"--lr-schedule must be {SCHEDULE_FORMS}, got {text!r}")


def _gamma(text: str, value: str) -> float:
    gamma = float(value)
    if not 0.0 < gamma <= 1.0:  # also NaN
        raise ConfigError(f"--lr-schedule {text}: GAMMA must be in (0, 1], got {value}")
    return gamma


@dataclass(frozen=True)
class LocalSettings:
    """What the default local update is, from a RunConfig: its optimizer and its learning rate per (round, step)."""

    lr: float
    rounds: int
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Schedule = Schedule()
    warmup_steps: int = 0

    @classmethod
    def of(cls, config: RunConfig) -> LocalSettings:
        return cls(lr=config.lr, rounds=config.rounds, optimizer=config.client_optimizer,
                   momentum=config.client_momentum, weight_decay=config.weight_decay,
                   schedule=parse_schedule(config.lr_schedule), warmup_steps=config.lr_warmup_steps)

    def round_lr(self, round_idx: int) -> float:
        """Round `round_idx`'s learning rate (--lr itself under the constant schedule: not a byte moves)."""
        return self.lr if self.schedule.kind == "constant" else self.lr * self.schedule.factor(round_idx, self.rounds)

    def step_lr(self, round_idx: int, step: int) -> float:
        """The learning rate of step `step` (0, 1, ... over the whole local update) in round `round_idx`: the round's,
        ramped linearly over the first --lr-warmup-steps steps ((k + 1) / N of it at step k)."""
        lr = self.round_lr(round_idx)
        return lr if step >= self.warmup_steps else lr * (step + 1) / self.warmup_steps

    def rates(self, round_idx: int) -> Callable[[int], float]:
        """step -> learning rate, for client.local_update."""
        return lambda step: self.step_lr(round_idx, step)

    def lr_sum(self, round_idx: int, steps: int) -> float:
        """The learning rates of `steps` steps summed (SCAFFOLD divides the distance travelled by it): K lr_t unless
        warming up."""
        if self.warmup_steps == 0:
            return steps * self.round_lr(round_idx)
        return sum(self.step_lr(round_idx, k) for k in range(steps))

    @property
    def plain(self) -> bool:
        """Plain SGD: the model's own fused step, no torch optimizer."""
        return self.optimizer == "sgd" and self.weight_decay == 0

    def make_optimizer(self, model: FlatModel) -> torch.optim.Optimizer | None:
        """A fresh torch optimizer over the model's trained parameters (their .grad are views of model.grads), or
        None for plain SGD. Weight decay is L2 added to the gradient (torch's weight_decay), for Adam too."""
        import torch

        if self.plain:
            return None
        params = [p for p in model.module.parameters() if p.requires_grad]  # what FlatModel lays out in params
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        momentum = self.momentum if self.optimizer == "momentum" else 0.0
        return torch.optim.SGD(params, lr=self.lr, momentum=momentum, weight_decay=self.weight_decay)


def optimizer_step(model: FlatModel, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                   lr: float, grad_hook: Callable[[], None] | None = None) -> float:
    """One step of `optimizer` at `lr` on a minibatch; returns its mean loss.

    The forward and backward pass are FlatModel.sgd_step's (FlatModel.backward; tests/test_local.py holds this to
    its bytes with torch's plain SGD); `grad_hook` adjusts the gradient before the optimizer sees it, as it does there."""
    import torch

    loss = model.backward(images, labels, grad_hook)
    with torch.no_grad():
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    return loss.item()


def local_update(
    model: FlatModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int | None,
    lr: float | Callable[[int], float],
    rng: np.random.Generator,
    grad_hook: Callable[[], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> float:
    """E epochs of minibatch steps, reshuffled each epoch by `rng`; returns the last epoch's mean loss.

    `lr`: the learning rate, or step -> learning rate (steps counted from 0 over the whole update; see
    fedactors.algorithms.local). `optimizer`: a torch optimizer over the model's parameters (fedactors.algorithms.local); None is
    plain SGD, the model's own step. `grad_hook` adjusts the gradient of every step (FedProx, SCAFFOLD: see
    `prox_hook`, `scaffold_hook`)."""
    import torch

    n = len(images)
    step = n if batch_size is None else batch_size
    rate = lr if callable(lr) else (lambda _: lr)
    k = 0  # steps taken
    last_epoch_loss = 0.0
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        x_epoch, y_epoch = images[order], labels[order]
        losses = []
        for start in range(0, n, step):
            x, y = x_epoch[start : start + step], y_epoch[start : start + step]
            if optimizer is None:
                losses.append(model.sgd_step(x, y, rate(k), grad_hook))
            else:
                losses.append(optimizer_step(model, x, y, optimizer, rate(k), grad_hook))
            k += 1
        last_epoch_loss = float(np.mean(losses))
    return last_epoch_loss


def local_steps(num_examples: int, epochs: int, batch_size: int | None) -> int:
    """SGD steps a client takes: E * ceil(n / B)."""
    return epochs * (1 if batch_size is None else -(-num_examples // batch_size))


def check(config: RunConfig, *, plain_sgd_only: str | None = None, asynchronous: bool = False) -> None:
    """RunConfig's validation of these settings: ConfigError naming the first that is wrong or unsound.

    `plain_sgd_only`: why the algorithm needs plain SGD steps (its Spec's), if it does; `asynchronous`: whether it has
    no rounds to schedule the learning rate by."""
    if config.client_optimizer not in OPTIMIZERS:
        raise ConfigError(f"--client-optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.client_optimizer!r}")
    if not (_is_real(config.client_momentum) and 0 <= config.client_momentum < 1):
        raise ConfigError(f"--client-momentum must be in [0, 1), got {config.client_momentum!r}")
    if not (_is_real(config.weight_decay) and config.weight_decay >= 0):
        raise ConfigError(f"--weight-decay must be a number >= 0, got {config.weight_decay!r}")
    if isinstance(config.lr_warmup_steps, bool) or not isinstance(config.lr_warmup_steps, int) or config.lr_warmup_steps < 0:
        raise ConfigError(f"--lr-warmup-steps must be an integer >= 0, got {config.lr_warmup_steps!r}")
    schedule = parse_schedule(config.lr_schedule)
    if plain_sgd_only and config.client_optimizer != "sgd":
        raise ConfigError(f"--client-optimizer {config.client_optimizer} does not go with --strategy {config.strategy}: "
                          f"{plain_sgd_only}")
    if asynchronous and schedule.kind != "constant":
        raise ConfigError(f"--lr-schedule {config.lr_schedule} does not go with --strategy {config.strategy}: a client "
                          "there trains from a server version, not in a round, so there is no round to schedule by "
                          "(--lr-warmup-steps, within each local update, does go with it)")


def refuse_idle(given: set[str], values: dict) -> None:
    """A setting of these given where the others make it idle or undefined: ConfigError (config.refuse_idle_settings)."""
    if "client_momentum" in given and values.get("client_optimizer", "sgd") != "momentum":
        raise ConfigError(f"--client-momentum applies to --client-optimizer momentum only, not "
                          f"{values.get('client_optimizer', 'sgd')}")
    schedule = values.get("lr_schedule", "constant")
    if isinstance(schedule, str) and schedule.startswith("cosine") and "rounds" not in given:
        raise ConfigError(f"--lr-schedule {schedule} decays over the run's rounds: give --rounds")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
