"""What asynchrony costs in real time and memory (issue 26), against synchronous rounds in the same run.

1. Throughput, through `fedactors run --json` as a user runs it (real Ray, embedded Redis): the paper's 2NN on
   non-IID MNIST (E=1, B=10, C=0.1), `--rounds N`, each system's median seconds per round over rounds 2..N:
     - sync:      synchronous FedAvg with every client equally fast (`--client-speed lognormal:0`, the clock on),
                  its hosts summing their clients (one exact partial sum each a round: the default);
     - sync/cl:   the same with --no-host-sums: every client's weights to the coordinator, as FedBuff needs them
                  (each weighted by its own staleness);
     - fedbuff=:  FedBuff with C = K = m and constant staleness on the same equal clients: the same trainings,
                  the same bytes (checked): its ratio to sync/cl is the asynchronous loop's overhead alone;
     - fedbuff~:  FedBuff C = 2m, K = m on lognormal:1 clients: ten trainings an update from up to a few versions.
   Per-update overhead = round seconds - the slowest host's training seconds, as the progress line splits them.
2. Memory, in-process (LocalPool, the spirals task): for concurrency 10, 100 and 1,000 with K = 10 (and K = C/10),
   the most weight versions the coordinator held over 3 C/K updates (each one model copy: multiply by the model's
   bytes) and tracemalloc's peak of the scheduling state. The versions are the clients in flight's start
   weights, so they grow with the spread of staleness (about C/K), not with C.

    FEDACTORS_DATA=/work/shared/mnist .venv/bin/python bench/asynchronous.py [--rounds 20]

Prints tables, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EXE = os.path.join(os.path.dirname(sys.executable), "fedactors")
COMMON = ["--task", "mnist-2nn", "--partition", "noniid", "--epochs", "1", "--batch-size", "10", "--frac", "0.1",
          "--hosts", "2"]
SYSTEMS = {
    "sync": ["--client-speed", "lognormal:0"],
    "sync/cl": ["--client-speed", "lognormal:0", "--no-host-sums"],
    "fedbuff=": ["--client-speed", "lognormal:0", "--strategy", "fedbuff", "--concurrency", "10", "--buffer", "10",
                 "--staleness", "constant"],
    "fedbuff~": ["--client-speed", "lognormal:1", "--strategy", "fedbuff", "--concurrency", "20", "--buffer", "10"],
}


def timed_run(name: str, rounds: int, out: Path) -> dict:
    args = [EXE, "run", *COMMON, *SYSTEMS[name], "--rounds", str(rounds), "--eval-every", str(rounds),
            "--out", str(out), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    rows = [e for e in events if e.get("event") == "round" and e["round"] > 1 and e["round"] < rounds]
    return {
        "wall_seconds": wall,
        "round_seconds": statistics.median(e["round_seconds"] for e in rows),
        "train_seconds": statistics.median(e["train_seconds"] for e in rows),
        "overhead_seconds": statistics.median(e["round_seconds"] - e["train_seconds"] for e in rows),
        "weights": (out / "weights.npy").read_bytes(),
    }


def memory(concurrency: int, buffer: int) -> dict:
    """In-process: the most versions held and tracemalloc's peak over 3 C/K updates (at least 40), long enough for
    the first clients in flight to have arrived and the spread of staleness to settle."""
    import dataclasses

    import torch

    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
    from fedactors.task import load_arrays, load_task

    updates = max(40, 3 * concurrency // buffer)
    clients = max(2 * concurrency, 100)
    cfg = RunConfig(task=f"{REPO}/examples/spirals.py:task", clients=clients, frac=0.1, partition="iid", epochs=1,
                    batch_size=20, lr=0.2, rounds=updates, eval_every=updates, strategy="fedbuff",
                    concurrency=concurrency, buffer=buffer, client_speed="lognormal:1", seed=1)
    cfg = dataclasses.replace(cfg)
    torch.set_num_threads(1)
    data = load_arrays(load_task(cfg.task), None, None)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed)
    host = ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=0, threads=1)
    coordinator = Coordinator(cfg, LocalPool([host]), num_test=len(data.y_test))
    most = 0
    tracemalloc.start()
    for event in coordinator.run():
        if event["type"] == "round":
            most = max(most, len(coordinator.versions) + 1)  # the older versions and the current weights
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"concurrency": concurrency, "buffer": buffer, "versions_held": most,
            "in_flight": len(coordinator.schedule.flights), "tracemalloc_peak_mib": peak / 2**20,
            "updates": updates, "model_floats": len(coordinator.weights)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3,
                        help="passes, each running every system in a rotated order; ratios are medians of the passes'")
    args = parser.parse_args()
    results: dict = {"rounds": args.rounds, "passes": []}
    names = list(SYSTEMS)
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        for p in range(args.repeat):
            order = names[p % len(names):] + names[:p % len(names)]  # a slow spell of the machine hits each alike
            runs = {name: timed_run(name, args.rounds, Path(tmp) / f"{p}-{names.index(name)}") for name in order}
            same = same and runs["sync"]["weights"] == runs["fedbuff="]["weights"]
            for r in runs.values():
                r.pop("weights")
                r["ratio_to_sync"] = r["round_seconds"] / runs["sync"]["round_seconds"]
                r["ratio_to_sync_per_client"] = r["round_seconds"] / runs["sync/cl"]["round_seconds"]
            results["passes"].append(runs)
    print(f"throughput: mnist-2nn non-IID, E=1 B=10, m=10, 2 hosts, {args.rounds} rounds; medians over rounds "
          f"2..{args.rounds - 1}, then over {args.repeat} passes")
    print(f"{'system':<10} {'s/round':>8} {'train s':>8} {'overhead s':>11} {'vs sync':>8} {'vs sync/cl':>11}")
    summary = {}
    for name in names:
        med = {k: statistics.median(p[name][k] for p in results["passes"])
               for k in ("round_seconds", "train_seconds", "overhead_seconds", "ratio_to_sync",
                         "ratio_to_sync_per_client")}
        summary[name] = med
        print(f"{name:<10} {med['round_seconds']:8.3f} {med['train_seconds']:8.3f} {med['overhead_seconds']:11.3f} "
              f"{med['ratio_to_sync']:8.3f} {med['ratio_to_sync_per_client']:11.3f}")
    print(f"fedbuff= gives sync's bytes in every pass: {same}")
    results["throughput"] = summary
    results["fedbuff_equal_is_sync_bytes"] = same
    mem = [memory(c, 10) for c in (10, 100, 1000)] + [memory(c, c // 10) for c in (100, 1000)]
    print("\nmemory: spirals in-process, lognormal:1 speeds, max(40, 3 C/K) updates")
    print(f"{'C':>5} {'K':>4} {'versions held':>14} {'in flight':>10} {'tracemalloc MiB':>16}")
    for m in mem:
        print(f"{m['concurrency']:>5} {m['buffer']:>4} {m['versions_held']:>14} {m['in_flight']:>10} "
              f"{m['tracemalloc_peak_mib']:>16.1f}")
    results["memory"] = mem
    print(json.dumps(results))


if __name__ == "__main__":
    main()
