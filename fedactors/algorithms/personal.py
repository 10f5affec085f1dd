"""Parts of the model that stay with each client (issue 36): which they are, where they sit in the flat weights, and
the methods' common half (FedPer, FedRep and FedBN are it with their own default part and training).

Which parameters are personal is the task's to say (fedactors.task.Task.personal: fnmatch patterns over the names
`named_parameters()` and `named_buffers()` give them), else the method's default: the last layer (FedPer, FedRep),
every BatchNorm (FedBN). The model a task builds carries its patterns (fedactors.task.PERSONAL_ATTRIBUTE), so the
host training a client reads them off the model it trains; they are resolved there, once per model, into index
ranges of the flat weights (fedactors.model.FlatModel: trained parameters, then float32 buffers, each in the order
the module names them). A pattern that matches nothing, or a personal part holding every trained parameter (the
clients would share nothing they train), is a ConfigError naming it.

A client's personal part is its state (Reply.keep "local", fedactors.runtime.states): put back into the model
before it trains (its first time: the global model's), kept after, and put back by `personalize` before its own
model is judged. The server half is FedAvg's over the whole weights, so the global model's personal part is the
aggregate of the clients' (a client's first start, and the global model judged on the shared test set); no client
ever trains from it again once it has its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedactors.algorithms.base import Algorithm, LocalClient, Reply
from fedactors.errors import ConfigError
from fedactors.task import PERSONAL_ATTRIBUTE, flat_layout, personal_names

if TYPE_CHECKING:
    from torch import nn

    from fedactors.model import FlatModel

KEPT = "local"  # the name of a client's personal part in its state
# Why the personal methods refuse the DP stage (Spec.refuses_dp): the stage is the algorithm the runtime sees.
DP_REFUSAL = ("the DP stage trains its clients through its own object, which does not pass on this method's "
              "personalize(): every client would be judged by the global model")


def last_layer(module: nn.Module) -> tuple[str, ...]:
    """The trained parameters of the module that owns the last trained parameter (a classifier's weight and bias)."""
    trained = [name for name, p in module.named_parameters() if p.requires_grad]
    owner = trained[-1].rpartition(".")[0] if trained else ""
    return tuple(name for name in trained if name.rpartition(".")[0] == owner)


def batch_norms(module: nn.Module) -> tuple[str, ...]:
    """Every BatchNorm's affine parameters and running statistics (FedBN's local part)."""
    from torch import nn

    out = []
    for prefix, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            dot = f"{prefix}." if prefix else ""
            out += [dot + name for name, _ in sub.named_parameters(recurse=False)]
            out += [dot + name for name, b in sub.named_buffers(recurse=False) if b.is_floating_point()]
    return tuple(out)


@dataclass(frozen=True)
class Parts:
    """A model's personal part: its names (in flat order) and where they sit in the flat weights."""

    names: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]  # [start, stop) in the flat weights, adjacent ones merged
    trained: tuple[str, ...]  # those of `names` that are trained parameters (not buffers)

    @property
    def size(self) -> int:
        """Floats in the personal part."""
        return sum(stop - start for start, stop in self.ranges)

    def take(self, weights: np.ndarray) -> np.ndarray:
        """The personal part of flat weights, as one float32 vector (a copy)."""
        return np.concatenate([weights[start:stop] for start, stop in self.ranges]).astype(np.float32, copy=False)

    def take_from(self, model: FlatModel) -> np.ndarray:
        """The personal part of the model's weights now."""
        state = model.state.detach()
        return np.concatenate([state[start:stop].cpu().numpy() for start, stop in self.ranges])

    def put(self, model: FlatModel, values: np.ndarray) -> None:
        """Write a personal part (as `take` gives it) into the model's weights."""
        import torch

        if values.shape != (self.size,):
            raise ValueError(f"a kept personal part of shape {values.shape}; the model's has {self.size} floats")
        at = 0
        with torch.no_grad():
            for start, stop in self.ranges:
                model.state[start:stop].copy_(torch.from_numpy(np.array(values[at:at + stop - start])))
                at += stop - start


def resolve(module: nn.Module, patterns: tuple[str, ...], where: str) -> Parts:
    """The part of `module`'s flat weights its names matching `patterns` make (fedactors.task.personal_names refuses,
    naming `where`, a pattern that matches nothing and a part holding every trained parameter)."""
    chosen = set(personal_names(module, patterns, where))
    trained = {name for name, p in module.named_parameters() if p.requires_grad}
    ranges: list[list[int]] = []
    names = []
    for name, start, stop in flat_layout(module):
        if name not in chosen:
            continue
        names.append(name)
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = stop
        else:
            ranges.append([start, stop])
    return Parts(tuple(names), tuple((a, b) for a, b in ranges), tuple(n for n in names if n in trained))


@dataclass
class LocalParts(Algorithm):
    """FedAvg whose clients keep a part of the model as their own (see the module's docstring): FedPer as it is."""

    name: str = "local-parts"
    # What the method keeps when the task names nothing, in words (a refusal names it), and how it is found.
    default_part = "the last layer"
    _parts: tuple[object, Parts] | None = field(default=None, init=False, repr=False, compare=False)

    def default(self, module: nn.Module) -> tuple[str, ...]:
        """The names of the method's own personal part of `module` (when the task names none)."""
        return last_layer(module)

    def check(self, parts: Parts, where: str) -> None:
        """A method's own refusal of a part it cannot work with (ConfigError naming `where`)."""

    def parts(self, model: FlatModel) -> Parts:
        """The model's personal part (the task's patterns, else the method's default), resolved once per model."""
        if self._parts is None or self._parts[0] is not model:
            self._parts = (model, self.resolve(model.module))
        return self._parts[1]

    def resolve(self, module: nn.Module) -> Parts:
        """`module`'s personal part: the task's patterns (PERSONAL_ATTRIBUTE), else the method's default; ConfigError
        for one the method cannot work with. Before round 1, for a command to refuse the run in one line."""
        patterns = getattr(module, PERSONAL_ATTRIBUTE, None)
        if patterns is not None:
            where = f"--strategy {self.name}: the task's personal pattern"
        else:
            patterns = self.default(module)
            where = f"--strategy {self.name} keeps {self.default_part} with each client:"
            if not patterns:
                raise ConfigError(f"--strategy {self.name} keeps {self.default_part} with each client, and the task's "
                                  "model has none: use a model that has, or name the personal parameters in the task "
                                  "(Task.personal)")
        parts = resolve(module, patterns, where)
        self.check(parts, where)
        return parts

    def restore(self, client: LocalClient) -> Parts:
        """The client's own part put back into its model (none yet: the global model's stays); returns the part."""
        parts = self.parts(client.model)
        mine = client.state.get(KEPT)
        if mine is not None:
            parts.put(client.model, mine)
        return parts

    def local_update(self, client: LocalClient) -> Reply:
        parts = self.restore(client)
        loss = client.train()
        return Reply(loss, keep={KEPT: parts.take_from(client.model)})

    def personalize(self, client: LocalClient) -> None:
        """The client's model is the global one with its own part put back."""
        self.restore(client)
