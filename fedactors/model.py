"""Any torch module with every parameter (and gradient) a view into one flat float32 buffer; the paper's CNN.

FlatModel(factory) builds the module and re-points its parameters at slices of `params`, and
their gradients at slices of `grads`, so reading or writing the weights is one memcpy and an
SGD step is one fused `params -= lr * grads` over the whole buffer, not a Python loop over
layers. Float buffers (BatchNorm's running statistics) follow the parameters in `state`, the
buffer that travels: weights = trainable parameters then float buffers. A frozen parameter
(requires_grad=False) is not in it: it stays an ordinary tensor of the module, made by the
factory in every host (seeded with the run's seed, so the same everywhere), never sent,
averaged or checkpointed. See fedactors.task for what is refused. The CNN (conv 5x5x32 + ReLU + 2x2 max-pool, conv 5x5x64 + ReLU + 2x2 max-pool, fc 512
+ ReLU, fc 10, 'same' padding: 1,663,370 parameters) is the default task's model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedactors.config import PRECISIONS
from fedactors.errors import ConfigError, DataError, first_line

NUM_PARAMETERS = 1_663_370
# Test images per forward pass when evaluating. bench/evaluate.py (one thread, 5,000 images, a
# Zen 4 EPYC): batch 100 takes 0.55-0.57x the time of batch 1000, 50-128 are as fast, 200 and
# more lose it (0.8-1.08x). The correct counts are the same at any batch; loss sums move in the
# last bits (summation order).
EVAL_BATCH = 100

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 7, 7)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 512)
        return self.fc2(x)  # (B, 10) logits; softmax lives in the loss


def build(factory: Callable[[], nn.Module], init_seed: int | None = None) -> nn.Module:
    """factory(), with torch's default initialisation seeded by `init_seed` (global RNG state untouched)."""
    if init_seed is None:
        return _checked(_made(factory))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return _checked(_made(factory))


def _made(factory: Callable[[], nn.Module]) -> object:
    """factory(); a user's factory that raises is one ConfigError line, not a traceback."""
    try:
        return factory()
    except (ConfigError, DataError):
        raise
    except Exception as exc:  # noqa: BLE001 - any error of a user's code, named
        raise ConfigError(f"the task's model factory failed: {type(exc).__name__}: {first_line(exc)}") from None


def _checked(module: object) -> nn.Module:
    """The module, if fedactors can train it; ConfigError naming what it cannot."""
    if not isinstance(module, nn.Module):
        raise ConfigError(f"the task's model factory returned a {type(module).__name__}, not a torch.nn.Module")
    params = list(module.named_parameters())
    if not params:
        raise ConfigError("the task's model has no parameters to train")
    params = [(name, p) for name, p in params if p.requires_grad]
    if not params:
        raise ConfigError("the task's model has no parameters to train: every one is frozen (requires_grad=False); "
                          "leave at least one trainable")
    # Only trainable parameters travel in the float32 buffer; a frozen one stays as the factory made it.
    wrong = [name for name, p in params if p.dtype != torch.float32]
    if wrong:
        raise ConfigError(f"the task's model has parameters that are not float32 ({', '.join(wrong[:3])}); "
                          "weights travel as one float32 buffer")
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats and sub.momentum is None:
            raise ConfigError(f"the task's model has BatchNorm {name} with momentum=None (a cumulative average "
                              "counted by an integer buffer that cannot be averaged across clients); give it a momentum")
    for name, buf in module.named_buffers():
        if buf.dtype == torch.float32 or _batchnorm_counter(module, name):
            continue
        raise ConfigError(f"the task's model has a {buf.dtype} buffer {name}: only float32 buffers (averaged with "
                          "the weights) and BatchNorm's num_batches_tracked are supported")
    return module


def _batchnorm_counter(module: nn.Module, name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    return leaf == "num_batches_tracked" and isinstance(sub, nn.modules.batchnorm._BatchNorm)


Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Evaluation:
    """Sums over a set of examples: the loss, the correct count, a task's metrics; and each example's correctness."""

    loss_sum: float
    correct: int
    sums: dict[str, float]
    hits: np.ndarray | None = None  # bool per example, when asked for


def per_example(metric: Metric, name: str, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A task metric's values for a batch, one per example; DataError naming the metric if it gives anything else."""
    try:
        values = metric(outputs, labels)
    except Exception as exc:  # noqa: BLE001 - the user's metric, named
        raise DataError(f"the task's metric {name!r} failed: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(values, torch.Tensor) or values.shape != (len(labels),):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise DataError(f"the task's metric {name!r} must return one value per example ({len(labels)},), got {shape}")
    return values.float()


def _per_example(y: torch.Tensor) -> int:
    """Target values per example: the summed squared error of a (B, d) target counts d values for one example."""
    return 1 if y.ndim <= 1 or not y.is_floating_point() else int(np.prod(y.shape[1:]))


class FlatModel:
    """A module whose parameters live in `self.params` and gradients in `self.grads` (1-D float32).

    `self.state` is the buffer that travels: `params` followed by the float buffers (empty for
    modules without them, when `state` and `params` are the same tensor). Only parameters with
    requires_grad are in `params`; `self.frozen` names the others (empty for most models), which
    keep the values the factory gave them. precision="bf16" runs
    the forward and backward passes (training and evaluation) under bfloat16 autocast:
    convolutions and matrix products in bf16, the loss, the parameters, the gradients and the
    SGD update in float32 (master weights), so updates as small as lr * grad are not lost to
    bf16's 8-bit mantissa.
    """

    def __init__(self, factory: Callable[[], nn.Module] = CNN, init_seed: int | None = None,
                 device: str | torch.device = "cpu", precision: str = "fp32", loss: Loss | None = None,
                 labels: str = "classes") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
        self.module = build(factory, init_seed).to(device)
        self.precision = precision
        self.classes = labels == "classes"  # else "values": float targets, mean squared error by default
        default = F.cross_entropy if self.classes else F.mse_loss
        self.loss = loss if loss is not None else default
        # Evaluation sums the loss: the defaults sum directly, a task's own loss is its mean times the batch.
        if loss is not None:
            self.loss_sum = lambda logits, y: loss(logits, y) * len(y)
        elif self.classes:
            self.loss_sum = lambda logits, y: F.cross_entropy(logits, y, reduction="sum")
        else:  # a (B, d) target's mean squared error is over its d values, so each example's is their mean
            self.loss_sum = lambda logits, y: F.mse_loss(logits, y, reduction="sum") / _per_example(y)
        parameters = [p for p in self.module.parameters() if p.requires_grad]
        self.frozen = [name for name, p in self.module.named_parameters() if not p.requires_grad]
        buffers = [b for _, b in self.module.named_buffers() if b.dtype == torch.float32]
        num_params = sum(p.numel() for p in parameters)
        total = num_params + sum(b.numel() for b in buffers)
        self.state = torch.empty(total, dtype=torch.float32, device=device)
        self.params = self.state[:num_params]
        self.grads = torch.zeros(num_params, dtype=torch.float32, device=device)
        self.shapes = [list(p.shape) for p in parameters]
        offset = 0
        with torch.no_grad():
            for p in parameters:
                n = p.numel()
                self.state[offset : offset + n].copy_(p.flatten())
                p.data = self.state[offset : offset + n].view_as(p)
                # autograd accumulates into an existing .grad in place, so these stay views.
                p.grad = self.grads[offset : offset + n].view_as(p)
                offset += n
            for name, b in self.module.named_buffers():
                if b.dtype != torch.float32:
                    continue
                n = b.numel()
                self.state[offset : offset + n].copy_(b.flatten())
                owner, _, leaf = name.rpartition(".")
                (self.module.get_submodule(owner) if owner else self.module)._buffers[leaf] = \
                    self.state[offset : offset + n].view_as(b)
                offset += n

    @property
    def size(self) -> int:
        """Floats in the weights that travel."""
        return self.state.numel()

    def frozen_floats(self) -> int:
        """Values in the frozen parameters: what full fine-tuning would send on top of `size`."""
        return sum(p.numel() for p in self.module.parameters() if not p.requires_grad)

    def frozen_digest(self) -> str:
        """sha256 of the frozen parameters (names, dtypes, shapes and bytes): equal in every host that built the same ones."""
        h = hashlib.sha256()
        for name, p in self.module.named_parameters():
            if not p.requires_grad:
                h.update(f"{name}{p.dtype}{list(p.shape)}".encode())
                # As bytes: a frozen parameter may be of any dtype, bfloat16 too, which NumPy has not.
                h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.state.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def get_weights(self) -> np.ndarray:
        """A copy of the flat weights (parameters, then float buffers) as a float32 NumPy array."""
        return self.state.detach().cpu().numpy().copy()

    def set_weights(self, weights: np.ndarray) -> None:
        """Copy `weights` (any float32 1-D array, read-only is fine) into the model."""
        if weights.shape != self.state.shape or weights.dtype != np.float32:
            raise ValueError(f"expected float32 weights of shape {tuple(self.state.shape)}, got {weights.dtype} {weights.shape}")
        if self.state.device.type == "cpu":
            self.state.numpy()[:] = weights  # NumPy copy: no warning for read-only sources
        else:
            self.state.copy_(torch.from_numpy(np.array(weights)))

    def backward(self, images: torch.Tensor, labels: torch.Tensor,
                 grad_hook: Callable[[], None] | None = None) -> torch.Tensor:
        """The minibatch's mean loss, its gradient left in `grads` (zeroed first) for a step to use.

        `grad_hook`, if given, runs after backward on `grads` (FedProx's proximal gradient,
        SCAFFOLD's correction: fedactors.runtime.client)."""
        self.module.train()
        self.grads.zero_()
        with self._autocast():
            logits = self.module(images)
        loss = self.loss(self._shaped(logits.float(), labels), labels)
        loss.backward()
        if grad_hook is not None:
            with torch.no_grad():
                grad_hook()
        return loss

    def sgd_step(self, images: torch.Tensor, labels: torch.Tensor, lr: float,
                 grad_hook: Callable[[], None] | None = None) -> float:
        """One plain SGD step (no momentum, no weight decay) on a minibatch; returns its mean loss."""
        loss = self.backward(images, labels, grad_hook)
        with torch.no_grad():
            self.params.add_(self.grads, alpha=-lr)
        return loss.item()

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH) -> tuple[float, int]:
        """(sum of the losses, number correct) over the given examples."""
        result = self.evaluate_all(images, labels, batch_size)
        return result.loss_sum, result.correct

    @torch.no_grad()
    def evaluate_all(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH, *,
                     metrics: dict[str, Metric] | None = None, hits: bool = False) -> Evaluation:
        """The sums `evaluate` gives, plus each of `metrics` summed over the examples and, with `hits`, whether each
        example was classified right (per-client evaluation groups them by owner). A "values" model has no
        accuracy: correct stays 0."""
        self.module.eval()
        loss_sum, correct = 0.0, 0
        sums = dict.fromkeys(metrics or {}, 0.0)
        right = []
        for start in range(0, len(images), batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            with self._autocast():
                logits = self._shaped(self.module(x).float(), y)
            loss_sum += float(self.loss_sum(logits, y))
            if self.classes:
                ok = logits.argmax(1) == y
                correct += int(ok.sum())
                if hits:
                    right.append(ok.cpu().numpy())
            for name, metric in (metrics or {}).items():
                sums[name] += float(per_example(metric, name, logits, y).sum())
        flags = np.concatenate(right) if right else np.zeros(0, dtype=bool)
        return Evaluation(loss_sum, correct, sums, flags if hits and self.classes else None)

    def _shaped(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A "values" model's outputs in its targets' shape ((B, 1) -> (B,)), so the loss compares like with like."""
        if not self.classes and outputs.shape != labels.shape and outputs.numel() == labels.numel():
            return outputs.reshape(labels.shape)
        return outputs
