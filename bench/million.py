"""Start-up with a million clients (issue 18, item 4), against 10,000 clients in the same run.

A synthetic task: examples/spirals.py's spirals and MLP with 2,000,000 training points, so that
K = 1,000,000 clients hold two points each. The same `fedactors run` (IID, E=1, B=10, m = 100 a
round, 3 rounds, host sums) with K = 1,000,000 and with K = 10,000 (200 points each) as the
reference; what K costs is the partition, its summary, and getting it to the hosts, all before
round 1. (The round waits differ by the clients' sizes, not by K: they are printed, not compared.)

    FEDACTORS_DATA=... .venv/bin/python bench/million.py [--natural]

With --natural the points carry owner ids ("u0" .. "u999999", strings) and `--partition natural`
makes one client per owner (issue 25): what owners cost is np.unique over 2,000,000 ids and one
stable sort, against the same 10,000-owner run.

Prints a table (seconds from the command to its first round, the median wait of rounds 2-3, peak
RSS of the command's process), then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))

from spirals import CLASSES, model, spirals  # noqa: E402

from fedactors.task import Arrays, Task  # noqa: E402


def load(data_dir: Path) -> Arrays:
    x_train, y_train = spirals(2_000_000, seed=1)
    x_test, y_test = spirals(1000, seed=2)
    return Arrays(x_train, y_train, x_test, y_test)


task = Task(name="spirals-2m", model=model, load=load, num_classes=CLASSES,
            description="2,000,000 spiral points, for a million clients of two")


def owned(clients: int) -> Task:
    """The same points with owners in the data (point i is owner "u<i mod K>"'s): --partition natural."""
    import numpy as np

    def load_owned(data_dir: Path) -> Arrays:
        base = load(data_dir)
        ids = np.char.add("u", (np.arange(len(base.y_train)) % clients).astype(str))
        return Arrays(base.x_train, base.y_train, base.x_test, base.y_test, client_train=ids)

    return Task(name=f"spirals-2m-owned-{clients}", model=model, load=load_owned, num_classes=CLASSES)


def owned_10000() -> Task:
    return owned(10_000)


def owned_1000000() -> Task:
    return owned(1_000_000)


def run(clients: int, out: Path, natural: bool = False) -> dict:
    """One `fedactors run --json`: seconds to its start and first round event, round waits, peak RSS (KiB).

    `natural`: the data names each point's owner (K distinct string ids) and --partition natural makes the clients."""
    frac = 100 / clients  # m = 100 in both runs
    spec = f"{Path(__file__).resolve()}:" + (f"owned_{clients}" if natural else "task")
    split = ["--partition", "natural"] if natural else ["--clients", str(clients), "--partition", "iid"]
    cmd = ["/usr/bin/time", "-f", "%M", str(Path(sys.executable).parent / "fedactors"), "run",
           "--task", spec, "--frac", repr(frac), *split, "--epochs", "1", "--batch-size", "10", "--lr", "0.1", "--rounds", "3",
           "--eval-every", "100", "--out", str(out), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = first_round = None
    waits = []
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "start" and started is None:
            started = time.perf_counter() - t0
        if event.get("event") == "round":
            first_round = first_round or time.perf_counter() - t0
            waits.append(event["wait_seconds"])
    stderr = proc.stderr.read()
    if proc.wait() != 0:
        raise SystemExit(f"K = {clients}: fedactors failed:\n{stderr}")
    return {"clients": clients, "m": round(frac * clients), "start_seconds": started, "first_round_seconds": first_round,
            "wait_seconds": statistics.median(waits[1:]), "peak_rss_mib": int(stderr.strip().splitlines()[-1]) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1_000_000, choices=[1_000_000],
                        help="K of the big run (default 1,000,000)")
    parser.add_argument("--natural", action="store_true",
                        help="owners named in the data (string ids) and --partition natural, instead of --clients K iid")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = run(10_000, Path(tmp) / "small", args.natural)
        big = run(args.clients, Path(tmp) / "big", args.natural)
    print(f"{'K':>10} {'m':>5} {'to start s':>11} {'to round 1 s':>13} {'round wait s':>13} {'peak RSS MiB':>13}")
    for r in (small, big):
        print(f"{r['clients']:>10,} {r['m']:>5} {r['start_seconds']:>11.2f} {r['first_round_seconds']:>13.2f} "
              f"{r['wait_seconds']:>13.3f} {r['peak_rss_mib']:>13.0f}")
    ratios = {"start": big["start_seconds"] / small["start_seconds"]}
    print(f"K = {args.clients:,} against K = 10,000: {ratios['start']:.2f}x the time to start")
    print(json.dumps({"benchmark": "million", "partition": "natural" if args.natural else "iid",
                      "runs": [small, big], "ratios": ratios}))


if __name__ == "__main__":
    main()
