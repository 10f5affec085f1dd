"""Strategies, the server-only protocol that came before fedactors.algorithms, and the names it exported.

The built-in methods now live one a file in fedactors.algorithms (both halves of each); this module keeps
`Strategy` (a server step and its state: any object with these methods is an algorithm whose client half is
the run's default local update) and the names users and scripts import from here.

A strategy of your own is any object with the methods of `Strategy` below (a class is enough, no base class
needed), named by `--strategy package.module:attr` or `file.py:attr` (the attribute is the strategy, or a
function returning one), or given to fedactors.run(strategy=...). Each round it receives the global weights
(its own copy: it may change them in place), the aggregate, and the round's accepted updates with their
example counts (the framework's, maybe read-only), and returns the new global weights; its state is named
float32 buffers (any names) plus JSON-able scalars, which every checkpoint stores (no pickle, checksummed), so
it resumes bit-exactly. To change the client half too, subclass fedactors.algorithms.Algorithm.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Protocol, runtime_checkable

import numpy as np

from fedactors.algorithms import (BUILTIN_CLASSES, BUILTINS, OBJECT_PREFIX, Asynchronous, DPFedAvg, FedAvg, FedProx,
                                  Scaffold, ServerOptimizer, load_user_algorithm, make_algorithm, server_step,
                                  state_problem)
from fedactors.algorithms.dpfedavg import OPTIMIZER_PREFIX, clipped_sum_reference
from fedactors.algorithms.fedopt import SERVER_LR, server_step_reference
from fedactors.privacy import dp_epsilon

__all__ = ["BUILTIN_CLASSES", "DESCRIPTIONS", "OBJECT_PREFIX", "OPTIMIZER_PREFIX", "SERVER_OPTIMIZERS", "Asynchronous",
           "DPFedAvg", "FedAvg", "FedProx", "Scaffold", "ServerOptimizer", "Strategy", "checked_step",
           "clipped_sum_reference", "dp_epsilon", "load_user_strategy", "make_strategy", "server_step_reference",
           "state_problem"]

SERVER_OPTIMIZERS = tuple(SERVER_LR)  # fedavgm, fedadagrad, fedadam, fedyogi
DESCRIPTIONS = {name: spec.description for name, spec in BUILTINS.items()}  # for `fedactors strategies`
make_strategy = make_algorithm
load_user_strategy = load_user_algorithm


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


def checked_step(strategy, weights: np.ndarray, aggregate: np.ndarray, updates: Sequence[np.ndarray],
                 num_examples: Sequence[int], round_idx: int) -> np.ndarray:
    """fedactors.algorithms.server_step given the updates as arrays (the Strategy protocol's arguments)."""
    results = [SimpleNamespace(client_id=i, weights=w, num_examples=n, sent={}, metrics={})
               for i, (w, n) in enumerate(zip(updates, num_examples, strict=True))]
    return server_step(strategy, weights, aggregate, results, round_idx)
