"""Algorithms: one file each, a client half and a server half (fedactors.algorithms.base), and their registry.

    fedavg      the aggregate is the new global model (McMahan et al. 2017): the default         fedavg.py
    fedavgm     server momentum on the pseudo-gradient (Hsu et al. 2019)                         fedopt.py
    fedadagrad  Adagrad on the pseudo-gradient (Reddi et al., ICLR 2021)                         fedopt.py
    fedadam     Adam on the pseudo-gradient, no bias correction (Reddi et al.)                   fedopt.py
    fedyogi     Yogi on the pseudo-gradient (Reddi et al.)                                       fedopt.py
    fedprox     clients add (mu/2)||w - w_global||^2 to their loss (Li et al., MLSys 2020)        fedprox.py
    scaffold    clients correct each step by c - c_i (Karimireddy et al., ICML 2020)             scaffold.py
    dp-fedavg   client-level differential privacy (McMahan et al., ICLR 2018)                    dpfedavg.py
    fedbuff     asynchronous, an update every --buffer arrivals (Nguyen et al., AISTATS 2022)    fedbuff.py
    fedasync    asynchronous, each arrival mixed in at once (Xie et al. 2019)                    fedbuff.py
    fedper      clients keep their last layer (personal head); the rest FedAvg (Arivazhagan 2019) fedper.py
    fedrep      clients train their head (body frozen), then the body (Collins et al., ICML 2021) fedrep.py
    fedbn       clients keep their BatchNorm layers (Li et al., ICLR 2021)                      fedbn.py
    ditto       clients keep a personal model pulled toward the global one (Li et al., ICML 2021) ditto.py

The personalized ones (fedper, fedrep, fedbn: personal.py's parts of the model; ditto) keep their clients' own state
in the store (Reply.keep) and say how a client's own model is made before it is judged (personalize).

How `--aggregator` and the algorithm compose: the aggregator (fedavg, median, trimmed-mean, krum,
multi-krum) turns a round's client updates into one model, `combined`; the algorithm's server half
decides what the server does with it (FedAvg takes it; the server optimizers step on combined minus
the global model, the pseudo-gradient).

Your own algorithm is any object with the protocol's methods (subclass `Algorithm`, or write a
server-only `step` as fedactors.strategy.Strategy describes), named by `--strategy package.module:attr`
or `file.py:attr` (the attribute is the algorithm, or a function or class returning one), or given to
fedactors.run(strategy=...). Its state is named float32 buffers plus JSON-able scalars, which every
checkpoint stores under its own stage (no pickle, checksummed), so it resumes bit-exactly.
"""

from __future__ import annotations

import json

import numpy as np

from fedactors.algorithms import ditto, dpfedavg, fedavg, fedbn, fedbuff, fedopt, fedper, fedprox, fedrep, scaffold
from fedactors.algorithms.base import Algorithm, LocalClient, Reply, Spec, as_reply, send_problem, vector_problem
from fedactors.algorithms.ditto import Ditto
from fedactors.algorithms.dpfedavg import DPFedAvg
from fedactors.algorithms.fedavg import FedAvg
from fedactors.algorithms.fedbn import FedBN
from fedactors.algorithms.fedbuff import Asynchronous
from fedactors.algorithms.fedopt import ServerOptimizer
from fedactors.algorithms.fedper import FedPer
from fedactors.algorithms.fedprox import FedProx
from fedactors.algorithms.fedrep import FedRep
from fedactors.algorithms.scaffold import Scaffold
from fedactors.errors import ConfigError, RoundFailed

__all__ = ["DEFAULT_ALGORITHM", "DP_STAGE", "Algorithm", "Asynchronous", "BUILTINS", "DPFedAvg", "Ditto", "FedAvg", "FedBN",
           "FedPer", "FedProx", "FedRep", "LocalClient", "Reply", "as_reply",
           "Scaffold", "ServerOptimizer", "Spec", "bind", "builtin", "make_algorithm", "send_problem", "server_step"]

# The built-ins by name, in the order `fedactors strategies` lists them; each module declares its own.
BUILTINS: dict[str, Spec] = {spec.name: spec for spec in (
    fedavg.SPEC, *fedopt.SPECS, fedprox.SPEC, scaffold.SPEC, dpfedavg.SPEC, *fedbuff.SPECS, fedper.SPEC, fedrep.SPEC,
    fedbn.SPEC, ditto.SPEC)}
DP_STAGE = dpfedavg.SPEC  # --dp gaussian: DP-FedAvg's mechanism around another method (its label, its settings)
DEFAULT_ALGORITHM = fedavg.SPEC.name  # RunConfig's: a run told apart from the paper's FedAvg compares with it
# The built-ins' classes: run by name (make_algorithm), trusted not to write the framework's arrays.
BUILTIN_CLASSES = (FedAvg, ServerOptimizer, FedProx, Scaffold, DPFedAvg, Asynchronous, FedPer, FedRep, FedBN, Ditto)
OBJECT_PREFIX = "python:"  # config.strategy of a run given an algorithm object (fedactors.run(strategy=...))
NEEDED = ("name", "state", "load_state", "settings")  # besides a server step: aggregate() or step()


def bind(algorithm: object, config) -> None:
    """Hand `algorithm` the run's settings if it asks for them (Algorithm.bind): the coordinator's copy and each
    host's, before either uses it; a ConfigError it raises is the run's, anything else one line naming it."""
    method = getattr(algorithm, "bind", None)
    if not callable(method):
        return
    try:
        method(config)
    except ConfigError:
        raise
    except Exception as exc:
        name = getattr(algorithm, "name", type(algorithm).__name__)
        raise ConfigError(f"{name}.bind(config) failed: {type(exc).__name__}: {exc}") from None


def builtin(name: object) -> Spec | None:
    """The Spec of built-in `name`, or None (a user's algorithm, or not a name)."""
    return BUILTINS.get(name) if isinstance(name, str) else None


def make_algorithm(config) -> object:
    """The run's algorithm object, from its configuration (a built-in name or an import spec)."""
    spec = builtin(config.strategy)
    if spec is not None:  # RunConfig has checked that a --dp composes with it
        return spec.make(config) if getattr(config, "dp", None) is None else dpfedavg.stage(config, spec.make(config))
    algorithm = load_user_algorithm(config.strategy)
    # The runtime treats a subclass of a built-in as the built-in (Poisson sampling, control variates), so the settings
    # refused to the built-in by name are refused to it by kind, before anything runs.
    for kind in (DPFedAvg, Scaffold):
        kind_spec = BUILTINS[kind.name]
        if config.simulates_systems and isinstance(algorithm, kind) and kind_spec.off_the_clock:
            raise ConfigError(f"--strategy {config.strategy} is a {kind.__name__} ({kind.name}), which does not run on "
                              f"the virtual clock (--client-speed, --client-trace, --deadline, --over-select): "
                              f"{kind_spec.off_the_clock}")
    return algorithm


def load_user_algorithm(spec: str) -> object:
    """A user's algorithm from `module:attr` or `file.py:attr` (the object, or a function or class returning it)."""
    from fedactors.importer import import_spec

    if spec.startswith(OBJECT_PREFIX):
        raise ConfigError(f"this run's strategy was a Python object ({spec[len(OBJECT_PREFIX):]}): resume it from Python, "
                          "fedactors.resume(..., strategy=the same object)")
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"--strategy {spec}: not one of {', '.join(BUILTINS)}, nor module:attr or file.py:attr")
    module = import_spec(where, spec, flag="--strategy")
    if not hasattr(module, attr):
        raise ConfigError(f"--strategy {spec}: {where} has no attribute {attr!r}")
    value = getattr(module, attr)
    if isinstance(value, type) or (callable(value) and not _is_algorithm(value)):
        try:
            value = value()
        except Exception as exc:
            raise ConfigError(f"--strategy {spec}: calling {attr}() failed: {type(exc).__name__}: {exc}") from None
    check_user_algorithm(value, f"--strategy {spec}: {attr}")
    return value


def _is_algorithm(value: object) -> bool:
    return all(hasattr(value, m) for m in NEEDED) and (hasattr(value, "aggregate") or hasattr(value, "step"))


def check_user_algorithm(value: object, where: str) -> None:
    """ConfigError naming `where` if `value` lacks the protocol's methods or its settings are not JSON."""
    missing = [m for m in NEEDED if not hasattr(value, m)]
    if not (hasattr(value, "aggregate") or hasattr(value, "step")):
        missing.insert(1 if "name" in missing else 0, "aggregate (or step)")
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)} (see fedactors.algorithms.Algorithm)")
    try:
        json.dumps(value.settings())
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: settings() must return JSON-able values") from None


def server_step(algorithm, weights: np.ndarray, combined: np.ndarray, results, round_idx: int) -> np.ndarray:
    """The algorithm's server step (`aggregate`, or a server-only `step`), refused loudly when it returns what cannot
    be the next global model. `results`: the round's accepted Updates, clients in sampled order."""
    from fedactors.aggregate import all_finite

    builtin_class = isinstance(algorithm, BUILTIN_CLASSES)
    # A user's step may change `weights` in place (the protocol says so), while the framework's array may be
    # read-only (the object store's) and is the old model the pool has put by identity: a copy of it, about
    # 1 ms for the CNN's 1.66 M floats once a round. The built-ins never write it: they get the array itself.
    mine = weights if builtin_class else weights.copy()
    if hasattr(algorithm, "aggregate"):
        method = "aggregate()"
        new = algorithm.aggregate(mine, combined, results, round_idx)
    else:
        method = "step()"
        new = algorithm.step(mine, combined, [u.weights for u in results], [u.num_examples for u in results], round_idx)
    if not isinstance(new, np.ndarray) or new.dtype != np.float32 or new.shape != weights.shape:
        got = f"{new.dtype} {new.shape}" if isinstance(new, np.ndarray) else type(new).__name__
        raise RoundFailed(f"round {round_idx}: strategy {algorithm.name} returned {got}, expected float32 {weights.shape}, "
                          f"from its {method}")
    if not all_finite(new):
        raise RoundFailed(f"round {round_idx}: strategy {algorithm.name} returned weights holding NaN or infinity, from "
                          f"its {method}")
    if not builtin_class:
        problem = state_problem(algorithm.state())
        if problem:
            raise RoundFailed(f"round {round_idx}: strategy {algorithm.name}'s state() {problem}; a checkpoint holds "
                              "1-D float32 buffers named by strings and JSON scalars")
    return np.ascontiguousarray(new)


def state_problem(state: object) -> str | None:
    """What makes an algorithm's state() unfit for a checkpoint, or None."""
    if not (isinstance(state, tuple) and len(state) == 2 and all(isinstance(part, dict) for part in state)):
        return f"returned a {type(state).__name__}, not (buffers, scalars), two dicts"
    buffers, scalars = state
    problem = vector_problem(buffers)
    if problem is not None:
        name, got = problem
        return f"names a buffer {name!r}" if got is None else f"holds buffer {name!r} as {got}"
    if not all(isinstance(name, str) for name in scalars):
        return f"names scalars {[n for n in scalars if not isinstance(n, str)]!r}, not by strings"
    try:
        json.dumps(scalars, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"holds scalars JSON cannot write ({exc})"
    return None
