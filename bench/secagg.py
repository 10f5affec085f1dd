"""Benchmark secure aggregation: client and server seconds and bytes per client, against the plain exact sum.

    .venv/bin/python bench/secagg.py [--full] [--cohorts 100] [--dropouts 0 0.1 0.3] [--tasks 2nn cnn]
                                     [--budget-seconds 20] [--seed 0]

As Bell et al. (CCS 2020) evaluate SecAgg+: per cohort size n, dropout rate and vector length
(the paper's 2NN, 199,210 values, and CNN, 1,663,370), SecAgg (Bonawitz et al.: k = n - 1,
t = n/2 + 1) beside SecAgg+ (k and t from fedactors.secagg.secagg_plus_params, as Google's
fcp chooses them for up to 5% colluding clients and 33% dropouts). Default: n = 100, under a minute
on the 2-core Intel Xeon; --full: n = 100, 500, 1000, the issue's grid, 9 minutes there.

How each figure is had, on the real protocol objects (fedactors.secagg):
- every client of the round advertises keys and shares its secrets for real; its compute
  seconds for that are the mean over the cohort;
- one client masks its update for real (k + 1 whole-vector PRG streams), which is the same work
  for every client: client seconds = that + its mean set-up + its unmasking answer;
- the dropped clients (the dropout rate of the cohort) drop before masking, the costly case for
  the server (it recomputes their surviving neighbours' pairwise masks); the others answer;
- the server adds a masked vector for every survivor (that one client's, under each survivor's
  id: the server's work does not depend on the values; tests/test_secagg.py proves the sum),
  then unmasks from the survivors' real shares. Where costs.estimate_seconds (calibrated in the
  same run) predicts more than --budget-seconds, the server's seconds are that estimate instead,
  marked "est" (SecAgg's n = 1000, CNN: ~200,000 masks to recompute at 30% dropout);
- the reference: the same round's plain exact sum, ExactSum.add of each survivor's float32
  update (the server's whole aggregation without secure aggregation), measured in the same run.
  Both ratios (client, server) are over it; a CNN client's local training (E = 5, B = 10)
  takes 2.2-2.8 s on the reference machine, for scale.
Bytes per client: costs.client_bytes (what the messages hold) against the float32 update's 4 bytes a value.
The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from _util import cpu_name

SECAGG_FLAGS = ("avx512f", "aes", "vaes", "amx_tile")  # what the masks' AES-CTR and the kernels run on

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# One thread for the exact-sum kernel too (OpenMP reads this when it starts): the protocol's AES and
# NumPy passes run on one, and so the reference does; and on a shared machine a second OpenMP thread
# waiting for a descheduled sibling made the reference swing 5x between runs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from fedactors.aggregate import ExactSum
from fedactors.secagg import (
    MaskStream,
    RoundSpec,
    SecAggClient,
    SecAggError,
    SecAggServer,
    calibrate,
    client_bytes,
    client_work,
    estimate_seconds,
    secagg_plus_params,
    secret_from_seed,
    server_work,
)

LENGTHS = {"2nn": 199_210, "cnn": 1_663_370}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's grid: cohorts 100, 500 and 1000")
    parser.add_argument("--cohorts", type=int, nargs="+", help="cohort sizes n (default 100; --full: 100 500 1000)")
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.1, 0.3], help="fractions dropped")
    parser.add_argument("--tasks", nargs="+", choices=sorted(LENGTHS), default=["2nn", "cnn"])
    parser.add_argument("--budget-seconds", type=float, default=20.0,
                        help="measure the server's unmasking only where it is estimated to take at most this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.cohorts = args.cohorts or ([100, 500, 1000] if args.full else [100])
    if min(args.cohorts) < 4 or not all(0 <= d < 0.5 for d in args.dropouts) or args.budget_seconds < 0:
        parser.error("cohorts must be >= 4, dropouts in [0, 0.5), --budget-seconds >= 0")
    return args


def set_up(spec: RoundSpec, secret: bytes) -> tuple[dict[int, SecAggClient], dict, dict]:
    """Every client advertises and shares for real; returns the clients and the server's two inputs."""
    clients = {c: SecAggClient(spec, c, secret) for c in spec.clients}
    advertised = {c: x.public_keys() for c, x in clients.items()}
    server = SecAggServer(spec)
    to_each = server.neighbour_keys(advertised)
    outgoing = {c: clients[c].share_keys(to_each[c]) for c in spec.clients}
    for holder, ciphertexts in server.route_shares(outgoing).items():
        clients[holder].receive_shares(ciphertexts)
    return clients, advertised, outgoing


@functools.cache
def plain_sum_seconds(length: int, survivors: int, cohort: int, repeats: int = 3) -> float:
    """The survivors' float32 updates into one ExactSum: the same round's aggregation without secure aggregation.

    The fastest of `repeats` rounds, each from a fresh accumulator (its pages first touched in the
    round, as the server's sum of masked vectors touches its own).
    """
    update = (np.random.default_rng(0).standard_normal(length) * 0.05).astype(np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        exact = ExactSum(length, cohort)
        for _ in range(survivors):
            assert exact.add(update, 1)
        times.append(time.perf_counter() - start)
    return min(times)


def cell(spec: RoundSpec, clients, advertised, outgoing, dropout: float, rates, budget: float, seed: int) -> dict:
    n, k = len(spec.clients), spec.neighbours
    rng = np.random.default_rng([seed, n, k, int(dropout * 1000)])
    dropped = set(rng.permutation(spec.clients)[: round(dropout * n)].tolist())
    survivors = [c for c in spec.clients if c not in dropped]
    update = (rng.standard_normal(spec.length) * 0.05).astype(np.float32)
    stream = MaskStream(spec.length)
    masker = clients[survivors[0]]
    masker.seconds.by_phase.pop("mask", None)
    masked = masker.mask(update, 1, stream).copy()
    alive = set(survivors)
    short = [c for c in spec.clients if (c in alive or alive & set(spec.graph[c]))
             and len(alive & set(spec.graph[c])) < spec.threshold]
    if short:  # the server could not recover client short[0]'s secret: the round fails (the row says so)
        return {"n": n, "k": k, "t": spec.threshold, "length": spec.length, "dropout": dropout,
                "failed": f"client {short[0]} has fewer than t = {spec.threshold} surviving neighbours"}
    pairs = sum(len(set(spec.graph[u]) & alive) for u in dropped)
    estimate = estimate_seconds(server_work(len(survivors), pairs, len(dropped)), rates)
    server_seconds, measured = estimate, False
    if estimate <= budget:
        server = SecAggServer(spec)
        server.neighbour_keys(advertised)
        server.route_shares({c: outgoing[c] for c in spec.clients})
        for c in survivors:
            server.add_masked(c, masked, 1)
        request = server.unmask_request()
        responses = {}
        for c in survivors:
            # One set-up serves every dropout rate here, so a client answers once per cell; a real one
            # answers once per round (and refuses to reveal the other share of a neighbour it already did).
            clients[c]._revealed.clear()
            responses[c] = clients[c].unmask_shares(*request)
        try:
            server.unmask(responses, stream)
        except SecAggError as e:  # a cohort too small for its dropout: the round fails, and the row says so
            return {"n": n, "k": k, "t": spec.threshold, "length": spec.length, "dropout": dropout, "failed": str(e)}
        server_seconds, measured = sum(server.seconds.by_phase.values()), True
    else:
        masker._revealed.clear()
        masker.unmask_shares(set(survivors), dropped)
    setup = np.mean([x.seconds.by_phase.get("advertise", 0) + x.seconds.by_phase.get("share", 0)
                     for x in clients.values()])
    client_seconds = setup + masker.seconds.by_phase["mask"] + masker.seconds.by_phase.get("unmask", 0)
    plain = plain_sum_seconds(spec.length, len(survivors), n)  # the same for SecAgg and SecAgg+: made once
    dropped_neighbours = round(dropout * k)
    sizes = client_bytes(k, spec.length, dropped_neighbours=dropped_neighbours)
    return {
        "n": n, "k": k, "t": spec.threshold, "length": spec.length, "dropout": dropout,
        "client_seconds": client_seconds, "client_seconds_estimate": estimate_seconds(client_work(k), rates),
        "server_seconds": server_seconds, "server_measured": measured, "server_seconds_estimate": estimate,
        "plain_sum_seconds": plain, "client_ratio": client_seconds / plain, "server_ratio": server_seconds / plain,
        "bytes_up": sizes.up, "bytes_down_extra": sizes.down, "bytes_up_plain": 4 * spec.length,
        "bytes_up_ratio": sizes.up / (4 * spec.length),
    }


def main() -> None:
    args = parse_args()
    secret = secret_from_seed(args.seed)
    rows = []
    print(f"CPU: {cpu_name(SECAGG_FLAGS)} ({os.cpu_count()} cores); load average {os.getloadavg()[0]:.1f}", flush=True)
    header = (f"{'task':4} {'n':>5} {'protocol':8} {'k':>4} {'t':>4} {'drop':>5} {'client s':>9} {'x plain':>8} "
              f"{'server s':>12} {'x plain':>8} {'plain s':>8} {'up MB':>7} {'x f32':>5} {'down+ KB':>9}")
    print(header, flush=True)
    for task in args.tasks:
        length = LENGTHS[task]
        for n in args.cohorts:
            plus = secagg_plus_params(n, 0.05, 0.33)
            protocols = [("SecAgg", n - 1, n // 2 + 1)] + ([("SecAgg+", *plus)] if plus else [])
            for name, k, t in protocols:
                spec = RoundSpec(1, tuple(range(n)), k, t, length, total=n, seed=args.seed)
                start = time.perf_counter()
                clients, advertised, outgoing = set_up(spec, secret)
                setup_wall = time.perf_counter() - start
                rates = calibrate(length, k, t)
                for dropout in args.dropouts:
                    row = {"task": task, "protocol": name, "setup_wall_seconds": setup_wall,
                           **cell(spec, clients, advertised, outgoing, dropout, rates, args.budget_seconds, args.seed)}
                    rows.append(row)
                    if "failed" in row:
                        print(f"{task:4} {n:5d} {name:8} {k:4d} {t:4d} {dropout:5.0%} failed: {row['failed']}")
                        continue
                    server = f"{row['server_seconds']:.3f}" + ("" if row["server_measured"] else " est")
                    print(f"{task:4} {n:5d} {name:8} {k:4d} {t:4d} {dropout:5.0%} {row['client_seconds']:9.3f} "
                          f"{row['client_ratio']:8.1f} {server:>12} {row['server_ratio']:8.1f} "
                          f"{row['plain_sum_seconds']:8.3f} {row['bytes_up'] / 1e6:7.2f} {row['bytes_up_ratio']:5.2f} "
                          f"{row['bytes_down_extra'] / 1e3:9.1f}", flush=True)
    print(json.dumps({"benchmark": "secagg", "cpu": cpu_name(SECAGG_FLAGS), "cores": os.cpu_count(),
                      "budget_seconds": args.budget_seconds, "rows": rows}))


if __name__ == "__main__":
    main()
