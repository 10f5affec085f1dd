"""The bytes of every existing run: each built-in algorithm and stage, run short, against recorded digests.

Issue 35 moves every strategy, aggregator, compressor and loop into new places, and may change no byte of
any run they make. Each case below is a short run (mostly 3 rounds of 5 clients, one epoch of 600 MNIST
examples each, the 2NN; the paper's CNN for FedAvg itself; the other built-in tasks with data of their own,
the examples' user tasks and a user's strategy) made in this process as tests/test_coordinator.py makes its
runs: ClientHosts of one torch thread in a LocalPool, no Ray, the data partitioned as experiment.run does.
What it computed is reduced to four entries, compared with those recorded in tests/contract_digests.json
for this CPU kind:

    weights   sha256 of the final global weights
    state     sha256 of what the last checkpoint holds beside them: every buffer (the strategy's, the error-
              feedback residuals, FedBuff's versions) by its name's last '/'-part, the strategy's scalars, the
              virtual clock and the bytes counted; issue 35 namespaces the names by stage, the contents stay
    rounds    sha256 of each round's outcome: clients sampled, updates kept, train loss, accuracy and loss,
              who was dropped, rejected, late or offline, epsilon and clip, bytes, staleness, the per-client
              accuracy spread, and where a method personalizes, its clients' personalized accuracies
    accuracy  the last round's accuracy on the first 1,000 test images (a number to read)

The harness (run_case) may follow the code to its new modules; the recorded entries may not change.

The bytes depend on the torch build, the instruction set torch dispatches to and the CPU vendor (see
tests/test_tasks.py), so the table is keyed by all three. To record it on another CPU kind, run the
commit before the change you want to check:

    FEDACTORS_DATA=/path/to/mnist python tests/test_contract.py --record

and add the entry it prints to tests/contract_digests.json. A case added later is recorded on the CPU kinds at
hand (its entries copied into theirs, no other entry touched); on a kind that lacks it, it is skipped, naming what
to record there. A case recorded on no kind fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
DIGESTS = HERE / "contract_digests.json"
REPO = HERE.parent
TRACE = REPO / "docs" / "runs" / "uneven-2nn-trace.csv"  # committed; 100 clients' online windows
NUM_TEST = 1000

BASE = dict(task="mnist-2nn", clients=100, frac=0.05, rounds=3, epochs=1, batch_size=50, partition="iid", seed=1,
            eval_every=1)
# name -> the settings that differ from BASE. Every built-in strategy, aggregator, compressor, attack and partition
# is in at least one (test_every_builtin_has_a_case), and each path that could make other bytes: host sums on and
# off, per-client weights under a compressor, bf16, the virtual clock with a deadline and over-selection.
CASES: dict[str, dict] = {
    "fedavg-cnn": dict(task="mnist-cnn", rounds=2),  # the paper's model
    "fedavg": {},
    "fedavg-no-host-sums": dict(host_sums=False),
    "fedavgm": dict(strategy="fedavgm"),
    "fedadagrad": dict(strategy="fedadagrad"),
    "fedadam": dict(strategy="fedadam"),
    "fedyogi": dict(strategy="fedyogi"),
    "fedprox": dict(strategy="fedprox", mu=0.1),
    "fedprox-no-host-sums": dict(strategy="fedprox", mu=0.1, host_sums=False),
    "scaffold": dict(strategy="scaffold"),
    "dp-fedavg": dict(strategy="dp-fedavg", frac=0.1, dp_seed=3),
    "dp-fedavg-adaptive": dict(strategy="dp-fedavg", frac=0.1, dp_seed=3, clip="adaptive", noise_multiplier=0.5),
    "median": dict(aggregator="median"),
    "trimmed-mean": dict(aggregator="trimmed-mean", trim_fraction=0.2),
    "krum": dict(aggregator="krum"),
    "multi-krum": dict(aggregator="multi-krum"),
    "fedadam-median": dict(strategy="fedadam", aggregator="median"),
    "q8": dict(compress="q8"),
    "q4": dict(compress="q4"),
    "q4-no-host-sums": dict(compress="q4", host_sums=False),
    "q2": dict(compress="q2"),
    "q8-rotate": dict(compress="q8:rotate"),
    "q4-rotate": dict(compress="q4:rotate"),
    "q2-rotate": dict(compress="q2:rotate"),
    "topk": dict(compress="topk:0.1"),  # error feedback: the residuals are state
    "sign": dict(compress="sign"),
    "scaffold-q4": dict(strategy="scaffold", compress="q4"),
    "fedbuff": dict(strategy="fedbuff", rounds=4, concurrency=5, buffer=3),
    "fedbuff-fedadam": dict(strategy="fedbuff", rounds=4, concurrency=5, buffer=3, server_optimizer="fedadam"),
    "fedbuff-speeds": dict(strategy="fedbuff", rounds=4, concurrency=5, buffer=3, client_speed="lognormal:1",
                           staleness="hinge:1,1"),
    "fedbuff-q4": dict(strategy="fedbuff", rounds=4, concurrency=5, buffer=3, compress="q4"),
    "fedasync": dict(strategy="fedasync", rounds=6, concurrency=4, client_speed="lognormal:1"),
    "deadline-over-select": dict(client_speed="lognormal:1", deadline=8.0, over_select=0.6),
    "trace-deadline": dict(frac=0.1, batch_size=10, partition="noniid", seed=0, client_speed="lognormal:1",
                           client_trace=str(TRACE), deadline=20.0, over_select=0.3),
    "fedadam-speeds": dict(strategy="fedadam", client_speed="lognormal:1", over_select=0.4),
    "sign-flip": dict(byzantine=10, attack="sign-flip", aggregator="median"),
    "gaussian": dict(byzantine=10, attack="gaussian", aggregator="trimmed-mean", trim_fraction=0.2),
    "nan": dict(byzantine=10, attack="nan", min_fit_fraction=0.6),
    "bf16": dict(precision="bf16"),
    "noniid": dict(partition="noniid"),
    "shards": dict(partition="shards", shards_per_client=3),
    "dirichlet": dict(partition="dirichlet", alpha=0.3),
    "unbalanced": dict(partition="unbalanced", sigma=1.5),
    "eval-clients": dict(eval_clients=0.2),  # per-client evaluation on held-out training examples
    # The other built-in task with data of its own, a user's task by path (and two with frozen parameters), and a
    # user's strategy by module:attr with a state buffer of its own.
    "digits-mlp": dict(task="digits-mlp", clients=20, frac=0.25, batch_size=10),
    "spirals": dict(task=f"{REPO}/examples/spirals.py:task", clients=20, frac=0.25, batch_size=20, lr=0.2),
    "frozen-head": dict(task=f"{REPO}/examples/frozen_head.py:task", clients=20, frac=0.25, batch_size=10),
    "lora": dict(task=f"{REPO}/examples/lora.py:task", clients=20, frac=0.25, batch_size=10, lr=0.2),
    "char-lm-tiny": dict(task="char-lm-tiny", clients=None, partition="natural", frac=0.3, rounds=2, batch_size=20),
    "user-strategy": dict(strategy="test_contract:HalfwayWithMomentum"),
    # The personalized methods (issue 36): each client's own part in its state, each client judged on its own split.
    "fedper": dict(strategy="fedper", client_test_fraction=0.2),
    "fedrep": dict(strategy="fedrep", head_epochs=2, client_test_fraction=0.2),
    "fedbn": dict(strategy="fedbn", task="mnist-cnn-bn", rounds=2, client_test_fraction=0.05),  # BatchNorm: the CNN
    "ditto": dict(strategy="ditto", ditto_lambda=0.5, client_test_fraction=0.2),
}
# The few that take more than a couple of seconds on the 2 cores (the CNN): the rest keep the file short.
SLOW = {"fedavg-cnn", "fedbn"}
# What each round decided (RoundStats' fields); its timings and which host trained whom are not the run's bytes.
ROUND_KEYS = ("round", "clients", "num_updates", "train_loss", "accuracy", "loss", "dropped", "rejected", "byzantine",
              "epsilon", "clip", "bytes_down", "bytes_up", "metrics", "virtual_seconds", "available", "late", "offline",
              "staleness", "client_accuracy")


class HalfwayWithMomentum:
    """A user's strategy (server-side, as the protocol is before issue 35): half a step toward the aggregate, with
    heavy-ball momentum kept as a state buffer of its own."""

    name = "halfway-momentum"

    def __init__(self):
        self.velocity = None

    def step(self, weights, aggregate, updates, num_examples, round_idx):
        delta = (aggregate - weights) * np.float32(0.5)
        self.velocity = delta if self.velocity is None else self.velocity * np.float32(0.5) + delta
        return (weights + self.velocity).astype(np.float32)

    def state(self):
        return ({} if self.velocity is None else {"velocity": self.velocity}), {}

    def load_state(self, buffers, scalars):
        self.velocity = np.array(buffers["velocity"]) if "velocity" in buffers else None

    def settings(self):
        return {}


def cpu_kind() -> str:
    """The table's key: torch build, the capability it dispatches to, and the CPU vendor."""
    import torch

    from test_tasks import cpu_vendor

    return f"{torch.__version__} {torch.backends.cpu.get_cpu_capability()} {cpu_vendor()}"


_DATA: dict[str, object] = {}


def _arrays(task: str):
    from fedactors.task import load_arrays, load_task

    if task not in _DATA:
        _DATA[task] = load_arrays(load_task(task), None, Path(os.environ["FEDACTORS_DATA"]))
    return _DATA[task]


class _Capture:
    """Where the coordinator's last checkpoint goes: the object it hands its store, kept to be read here, with the
    clients' state it writes (issue 36: each client's state is written beside the checkpoint, not in it)."""

    checkpoint = None

    def __init__(self):
        self.clients = {}

    def save(self, ckpt, keep: int, clients=None):
        self.checkpoint = ckpt
        self.clients.update(clients or {})


# A client's state under the name its buffer had in the checkpoint before issue 36 moved it out (the digests were
# recorded then): SCAFFOLD's c_i was "c<k>", an error-feedback residual "residual<k>".
_OLD_NAMES = {"algorithm/c_i": "c{}", "feedback/residual": "residual{}"}


def _old_name(name: str, client: int) -> str:
    """A client's state buffer as the digest names it: its pre-issue-36 name, or (a state newer than that) the last
    '/'-part of its name with the client after it, as those were."""
    return _OLD_NAMES.get(name, name.rsplit("/", 1)[-1] + "{}").format(client)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_case(name: str) -> dict:
    """Run CASES[name] in this process and reduce it to its entries (weights, state, rounds, accuracy)."""
    import torch

    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import hold_out, partition
    from fedactors.runtime.systems import read_trace

    settings = {**BASE, **CASES[name]}
    cfg = RunConfig(**settings, checkpoint_every=settings["rounds"])
    data = _arrays(cfg.task)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed, shards_per_client=cfg.shards_per_client,
                      alpha=cfg.alpha, sigma=cfg.sigma, owners=data.client_train)
    if cfg.clients is None:  # --partition natural: as many clients as the data has owners (experiment.run)
        cfg = dataclasses.replace(cfg, clients=len(parts))
    holdout = None
    if cfg.eval_clients is not None:  # as experiment.run: the clients' held-out examples, their owners
        parts, holdout = hold_out(parts, cfg.eval_clients, cfg.seed)
    if cfg.client_test_fraction is not None:  # as experiment.run: every client's own split
        parts, holdout = hold_out(parts, 1.0, cfg.seed, examples=cfg.client_test_fraction)
    owners = data.client_test if holdout is None else np.repeat(np.arange(len(holdout)), holdout.sizes)
    # The first NUM_TEST test examples; a test set of the clients' own (natural) is evaluated whole, client by client.
    num_test = len(data.y_test) if data.client_test is not None else min(NUM_TEST, len(data.y_test))
    trace = read_trace(cfg.client_trace, cfg.clients) if cfg.client_trace else None
    threads = torch.get_num_threads()
    try:
        hosts = [ClientHost(cfg, host_id=i, threads=1) for i in range(2)]
        for host in hosts:
            host.load(data.x_train, data.y_train, parts, data.x_test, data.y_test,
                      None if holdout is None else holdout.indices)
        store = _Capture()
        events = list(Coordinator(cfg, LocalPool(hosts), num_test=num_test, trace=trace,
                                  store=store, run_id="contract", eval_owners=owners,
                                  held_out=holdout is not None).run())
    finally:
        torch.set_num_threads(threads)
    # A personalizing method's clients' accuracies too; in no other case's entries (they were recorded without).
    rounds = [{k: e.get(k) for k in ROUND_KEYS} | ({"personal_accuracy": e["personal_accuracy"]}
                                                   if e.get("personal_accuracy") is not None else {})
              for e in events if e["type"] == "round"]
    ckpt = store.checkpoint
    assert ckpt is not None and ckpt.round == cfg.rounds and np.array_equal(ckpt.weights, events[-1]["weights"])
    buffers = {n.rsplit("/", 1)[-1]: _sha(np.ascontiguousarray(b).tobytes()) for n, b in ckpt.state.items()}
    buffers.update({_old_name(n, cid): _sha(np.ascontiguousarray(b).tobytes())
                    for cid, state in store.clients.items() for n, b in state.items()})
    scalars = {k: ckpt.extra.get(k) for k in ("strategy", "clock", "bytes")}
    return {"weights": _sha(events[-1]["weights"].tobytes()),
            "state": _sha(json.dumps([buffers, scalars], sort_keys=True).encode()),
            "rounds": _sha(json.dumps(rounds, sort_keys=True).encode()),
            "accuracy": rounds[-1]["accuracy"]}


def _recorded() -> dict:
    table = json.loads(DIGESTS.read_text())
    kind = cpu_kind()
    if kind not in table:
        pytest.skip(f"no contract digests recorded for {kind!r}: at the commit before your change run "
                    f"`FEDACTORS_DATA=... python tests/test_contract.py --record` and add the entry it prints "
                    f"to tests/{DIGESTS.name}")
    return table[kind]["cases"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_each_builtin_makes_the_recorded_bytes(name, mnist_dir):
    recorded = _recorded()
    if name not in recorded:
        elsewhere = [kind for kind, entry in json.loads(DIGESTS.read_text()).items() if name in entry["cases"]]
        assert elsewhere, f"case {name} has no recorded digest: record it at the commit before the change"
        pytest.skip(f"case {name} is recorded for {', '.join(elsewhere)} but not for {cpu_kind()!r}: on this CPU "
                    f"kind run `FEDACTORS_DATA=... python tests/test_contract.py --record` at the commit that added "
                    f"it and add its {name!r} entry to this kind's cases in tests/{DIGESTS.name}")
    assert run_case(name) == recorded[name]


def test_every_builtin_has_a_case_and_a_digest():
    from fedactors.compress import BITS
    from fedactors.config import AGGREGATORS, ATTACKS, PARTITIONS, PRECISIONS, STRATEGIES, RunConfig

    configs = [RunConfig(**{**BASE, **c}) for c in CASES.values()]
    used = {k: {getattr(c, k) for c in configs} for k in ("strategy", "aggregator", "partition", "precision")}
    assert set(STRATEGIES) <= used["strategy"] and set(AGGREGATORS) <= used["aggregator"]
    assert set(PRECISIONS) <= used["precision"] and set(ATTACKS) <= {c.attack for c in configs if c.byzantine}
    assert set(PARTITIONS) <= used["partition"]
    compress = {c.compress for c in configs}
    assert {f"q{b}" for b in BITS} | {f"q{b}:rotate" for b in BITS} <= compress
    assert {"topk", "sign"} <= {str(spec).partition(":")[0] for spec in compress}
    table = json.loads(DIGESTS.read_text())
    for kind, entry in table.items():
        assert set(entry["cases"]) <= set(CASES), f"{kind}: records cases that are not CASES"
    # Each case on some CPU kind at least: one added later may lack another kind's (it skips there, saying so).
    recorded = set().union(*(entry["cases"] for entry in table.values()))
    assert set(CASES) <= recorded, f"cases recorded on no CPU kind: {sorted(set(CASES) - recorded)}"


def main(argv: list[str]) -> int:
    """--record: run every case and print this CPU kind's entry of the table, for contract_digests.json."""
    if argv[1:] != ["--record"]:
        print(__doc__, file=sys.stderr)
        return 2
    os.environ.setdefault("FEDACTORS_DATA", str(HERE.parent.parent / "shared" / "mnist"))
    sys.path.insert(0, str(HERE))
    import fedactors
    from fedactors import _kernels

    # Which code made the table: an editable install's finder can shadow PYTHONPATH.
    print(f"fedactors from {fedactors.__file__}, kernels {_kernels.__file__}", file=sys.stderr)
    where = Path(fedactors.__file__).parent
    commit = subprocess.run(["git", "-C", str(where), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    entries = {}
    for name in CASES:
        t0 = time.perf_counter()
        entries[name] = run_case(name)
        print(f"{name}: {time.perf_counter() - t0:.1f} s {entries[name]}", file=sys.stderr)
    print(json.dumps({cpu_kind(): {"recorded_at": commit, "cases": entries}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
