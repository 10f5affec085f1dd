"""Fine-tune only the head: a frozen, pretrained-style body and a trainable classifier on top.

    fedactors run --task examples/frozen_head.py:task --clients 20 --frac 0.5 --partition dirichlet --alpha 1 \
        --epochs 2 --batch-size 10 --lr 0.1 --rounds 20 --eval-every 5
    fedactors run --task examples/frozen_head.py:full ...      # the same network, every parameter trained

Only parameters with requires_grad=True travel: here the head's 2,570 floats (256 x 10 + 10),
not the body's 82,432. Each round the server sends them to the m sampled clients and gets as
many back, so a round moves m x 4 x 2,570 bytes each way instead of m x 4 x 85,002 for full
fine-tuning: 3.0% of it (`fedactors run` prints the line). The frozen body is built by the
factory in every client host and never leaves it.

The body stands in for pretrained weights: it is made from a fixed seed of its own, not the
run's, so every run (any --seed) fine-tunes the same body, as it would a downloaded
checkpoint. A factory that loads real pretrained weights does it here, with torch.load of a
file that must be the same on every node (the run checks: hosts whose frozen parameters
differ are refused). The data is scikit-learn's 8x8 digits (in its wheel: no download), as
the built-in digits-mlp task has them.
"""

import torch
from torch import nn

from fedactors.task import Task
from fedactors.tasks.digits import load, prepare

BODY_SEED = 1234  # the "checkpoint": the same body in every run and every host
HIDDEN = 256


def body() -> nn.Module:
    """64 pixels -> 256 features, two ReLU layers, frozen: the part a pretrained network would bring."""
    with torch.random.fork_rng(devices=[]):  # its own seed, and the caller's RNG (the head's init) untouched
        torch.manual_seed(BODY_SEED)
        layers = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU())
        for layer in (layers[0], layers[2]):
            # He initialisation keeps the features' scale through the ReLUs (torch's default shrinks it
            # ~2.4x a layer), as trained weights would: the head then learns at an ordinary lr.
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return layers.requires_grad_(False)


def model() -> nn.Module:
    """The frozen body and a trainable 256 -> 10 head (initialised from the run's seed, as any model is)."""
    return nn.Sequential(body(), nn.Linear(HIDDEN, 10))


def full_model() -> nn.Module:
    """The same network with every parameter trained: full fine-tuning, to compare bytes and accuracy with."""
    return model().requires_grad_(True)


task = Task(name="frozen-head", model=model, load=load, prepare=prepare, num_classes=10,
            description="digits: a frozen pretrained-style 64-256-256 body, a trained 256-10 head")
full = Task(name="frozen-head-full", model=full_model, load=load, prepare=prepare, num_classes=10,
            description="digits: the same 64-256-256-10 network, every parameter trained")
