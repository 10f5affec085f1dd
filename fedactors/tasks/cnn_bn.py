"""The paper's MNIST CNN with batch normalization after each convolution (`mnist-cnn-bn`, for FedBN: Li et al., ICLR
2021, keep every BatchNorm with its client). Imported only when the task's model is built: it imports torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CNNBatchNorm(nn.Module):
    """conv 5x5x32 + BatchNorm + ReLU + 2x2 max-pool, conv 5x5x64 + BatchNorm + ReLU + 2x2 max-pool, fc 512 + ReLU,
    fc 10 ('same' padding): the CNN's 1,663,370 parameters plus 192 of BatchNorm, and 192 running statistics.

    BatchNorm only after the convolutions: a BatchNorm1d after fc1 would fail on a last minibatch of one example."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64 * 7 * 7, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)  # (B, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)  # (B, 64, 7, 7)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 512)
        return self.fc2(x)  # (B, 10) logits
