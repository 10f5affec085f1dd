"""The paper's MNIST CNN, with every parameter (and gradient) a view into one flat float32 buffer.

conv 5x5x32 + ReLU + 2x2 max-pool, conv 5x5x64 + ReLU + 2x2 max-pool, fc 512 + ReLU, fc 10
('same' padding): 1,663,370 parameters. Because parameters and gradients are views into two
flat buffers, reading or writing the weights is one memcpy and an SGD step is one fused
`params -= lr * grads` over 6.65 MB, not a Python loop over layers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedactors.config import PRECISIONS

NUM_PARAMETERS = 1_663_370
# Test images per forward pass when evaluating. bench/evaluate.py (one thread, 5,000 images, a
# Zen 4 EPYC): batch 100 takes 0.55-0.57x the time of batch 1000, 50-128 are as fast, 200 and
# more lose it (0.8-1.08x). The correct counts are the same at any batch; loss sums move in the
# last bits (summation order).
EVAL_BATCH = 100


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


class FlatModel:
    """A CNN whose parameters live in `self.params` and gradients in `self.grads` (1-D float32).

    precision="bf16" runs the forward and backward passes (training and evaluation) under
    bfloat16 autocast: convolutions and matrix products in bf16, the loss, the parameters, the
    gradients and the SGD update in float32 (master weights), so updates as small as lr * grad
    are not lost to bf16's 8-bit mantissa.
    """

    def __init__(self, init_seed: int | None = None, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
        if init_seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed)
                module = CNN()
        else:
            module = CNN()
        self.module = module.to(device)
        self.precision = precision
        total = sum(p.numel() for p in self.module.parameters())
        self.params = torch.empty(total, dtype=torch.float32, device=device)
        self.grads = torch.zeros(total, dtype=torch.float32, device=device)
        offset = 0
        with torch.no_grad():
            for p in self.module.parameters():
                n = p.numel()
                self.params[offset : offset + n].copy_(p.flatten())
                p.data = self.params[offset : offset + n].view_as(p)
                # autograd accumulates into an existing .grad in place, so these stay views.
                p.grad = self.grads[offset : offset + n].view_as(p)
                offset += n

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.params.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def get_weights(self) -> np.ndarray:
        """A copy of the flat weights as a float32 NumPy array."""
        return self.params.detach().cpu().numpy().copy()

    def set_weights(self, weights: np.ndarray) -> None:
        """Copy `weights` (any float32 1-D array, read-only is fine) into the parameters."""
        if weights.shape != self.params.shape or weights.dtype != np.float32:
            raise ValueError(f"expected float32 weights of shape {tuple(self.params.shape)}, got {weights.dtype} {weights.shape}")
        if self.params.device.type == "cpu":
            self.params.numpy()[:] = weights  # NumPy copy: no warning for read-only sources
        else:
            self.params.copy_(torch.from_numpy(np.array(weights)))

    def sgd_step(self, images: torch.Tensor, labels: torch.Tensor, lr: float) -> float:
        """One plain SGD step (no momentum, no weight decay) on a minibatch; returns its mean loss."""
        self.grads.zero_()
        with self._autocast():
            logits = self.module(images)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        with torch.no_grad():
            self.params.add_(self.grads, alpha=-lr)
        return loss.item()

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = EVAL_BATCH) -> tuple[float, int]:
        """(sum of cross-entropy losses, number correct) over the given examples."""
        loss_sum, correct = 0.0, 0
        for start in range(0, len(images), batch_size):
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
            with self._autocast():
                logits = self.module(x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        return loss_sum, correct
