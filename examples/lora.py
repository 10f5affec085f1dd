"""LoRA on a small transformer: a frozen base, low-rank adapters and a head are all that train and travel.

    fedactors run --task examples/lora.py:task --clients 20 --frac 0.5 --partition dirichlet --alpha 1 \
        --epochs 2 --batch-size 10 --lr 0.2 --rounds 20 --eval-every 5

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") keeps a pretrained
weight W frozen and learns a low-rank change to it: a linear layer computes
W x + (alpha / r) B A x, with A (r x in) drawn at random and B (out x r) zero, so training
starts from the base model exactly. Here each attention block's query and value projections
(the paper's choice) get rank-4 adapters; with the classifier head they are the only
parameters with requires_grad=True, so they are the only ones fedactors sends, averages and
checkpoints: 1,354 floats a client each way per round, where full fine-tuning of the same
transformer (`examples/lora.py:full`) sends 18,026: 7.5% of its bytes.

The data is scikit-learn's 8x8 digits (no download), each image read as a sequence of 8
tokens (its rows) of 8 features: a float input, as tasks take today. The base transformer
(2 pre-norm encoder layers, d_model 32, 2 heads, MLP 64) stands in for a pretrained one: it is
made from a fixed seed of its own, the same in every run and host; a real one would be loaded
here from a file that every node has.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedactors.task import Task
from fedactors.tasks.digits import load

BASE_SEED = 4321  # the "pretrained checkpoint": the same base in every run and every host
TOKENS, FEATURES = 8, 8  # an 8x8 digit as 8 rows of 8 pixels
D_MODEL, HEADS, MLP, LAYERS = 32, 2, 64, 2
RANK, ALPHA = 4, 8.0


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: base(x) + (alpha / r) * x A^T B^T."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.a = nn.Parameter(torch.empty(rank, base.in_features))
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))  # zero: the adapted layer starts as the base
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))  # as nn.Linear's weight, and as the LoRA paper's code does
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.a), self.b) * self.scale


class Block(nn.Module):
    """A pre-norm transformer encoder layer: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.q, self.k, self.v, self.o = (nn.Linear(D_MODEL, D_MODEL) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, MLP), nn.GELU(), nn.Linear(MLP, D_MODEL))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.norm1(x)
        q, k, v = (proj(h).view(b, t, HEADS, D_MODEL // HEADS).transpose(1, 2) for proj in (self.q, self.k, self.v))
        att = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d_head)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, D_MODEL))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Tokens (B, T, FEATURES) -> embedding + learned positions -> blocks -> mean over tokens -> class scores."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, D_MODEL)
        self.pos = nn.Parameter(torch.randn(TOKENS, D_MODEL) * 0.1)
        self.blocks = nn.Sequential(*(Block() for _ in range(LAYERS)))
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(x) + self.pos)  # (B, T, D_MODEL)
        return self.head(self.norm(h).mean(1))  # (B, classes)


def base() -> Transformer:
    """The pretrained-style base, every parameter frozen, from its own seed (the caller's RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_SEED)
        net = Transformer()
    return net.requires_grad_(False)


def model() -> nn.Module:
    """The base with rank-RANK adapters on every block's query and value projections, and a new trainable head.

    The adapters' A and the head are drawn from the RNG the run seeds (fedactors.model.build), as any
    model's trainable parameters are."""
    net = base()
    for block in net.blocks:
        block.q, block.v = LoRALinear(block.q, RANK, ALPHA), LoRALinear(block.v, RANK, ALPHA)
    net.head = nn.Linear(D_MODEL, net.head.out_features)  # the task's own head, trained from scratch
    return net


def full_model() -> nn.Module:
    """The same transformer (no adapters) with every parameter trained: full fine-tuning, for comparison."""
    net = base().requires_grad_(True)
    net.head = nn.Linear(D_MODEL, net.head.out_features)
    return net


def prepare(x: np.ndarray) -> np.ndarray:
    """Pixels 0..16 -> [0, 1], each image as (8 tokens, 8 features) float32."""
    return (np.asarray(x, dtype=np.float32) / np.float32(16.0)).reshape(len(x), TOKENS, FEATURES)


task = Task(name="lora", model=model, load=load, prepare=prepare, num_classes=10,
            description="digits rows as 8 tokens: a frozen 2-layer transformer, rank-4 LoRA on q and v, a trained head")
full = Task(name="lora-full", model=full_model, load=load, prepare=prepare, num_classes=10,
            description="digits rows as 8 tokens: the same transformer, every parameter trained")
