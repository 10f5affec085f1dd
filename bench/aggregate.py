"""Benchmark aggregation: the native kernels vs NumPy, torch and a streaming floor.

    .venv/bin/python bench/aggregate.py [--what mean|median|trimmed|all] [--clients 10 50]
                                        [--length 1663370] [--repeats 15] [--threads 1 2]
                                        [--trim-fraction 0.1]

mean: FedAvg's weighted average (_kernels.weighted_average) vs a NumPy multiply/add loop,
np.average (with and without np.stack) and torch's add_ loop. median: _kernels.median vs
np.median(axis=0) (with and without np.stack) and torch.median(dim=0) on a stacked tensor
(torch returns the lower of the two middle values for even K, not their mean: a cheaper,
different statistic). trimmed: _kernels.trimmed_mean vs np.sort(axis=0) then slice mean,
scipy.stats.trim_mean (row skipped if scipy is not installed) and torch.sort then slice mean.

Every method reads the same read-only float32 buffers (as Ray's object store hands them
over). The floor is measured in the same run at each thread count: _kernels.stream_read sums
every input float once (a pure streaming read: each thread reads its contiguous slice of every
input start to end, one input after another, with the kernels' threads and ISA but not their
blocking, so the floor is the machine's streaming bandwidth, not the kernels' access pattern),
scaled by (bytes read + bytes written) / bytes read, i.e. the output write is charged at the
read bandwidth; no method that reads each input once and writes the output once can beat it.
Methods run interleaved within each repeat so machine noise hits all of them alike; the table
shows medians (and minima), and kernel/floor is also the median of per-repeat ratios. The last
stdout line is one JSON object with every figure (seconds, GB/s, ratios) per part and K.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from fedactors import _kernels

try:
    import scipy.stats
except ImportError:  # not a dependency: its row is skipped
    scipy = None

Methods = dict[str, Callable[[], object]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=["mean", "median", "trimmed", "all"], default="all")
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50], help="numbers of buffers (K)")
    parser.add_argument("--length", type=int, default=1_663_370, help="floats per buffer")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per method")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts")
    parser.add_argument("--trim-fraction", type=float, default=0.1, help="beta for the trimmed mean")
    args = parser.parse_args()
    if min(args.clients) < 1 or args.length < 1 or args.repeats < 1 or min(args.threads) < 1:
        parser.error("--clients, --length, --repeats and --threads must be >= 1")
    if not 0 <= args.trim_fraction < 0.5:
        parser.error("--trim-fraction must be in [0, 0.5)")
    return args


def floors(buffers: list[np.ndarray], threads: list[int]) -> Methods:
    return {f"floor_read_{t}t": lambda t=t: _kernels.stream_read(buffers, threads=t) for t in threads}


def mean_methods(buffers: list[np.ndarray], counts: list[int], threads: list[int]) -> Methods:
    n = buffers[0].size
    total = float(sum(counts))
    w32 = [np.float32(c / total) for c in counts]
    out = np.empty(n, dtype=np.float32)
    tmp = np.empty(n, dtype=np.float32)
    stacked = np.stack(buffers)  # for the stack-excluded np.average, built once, untimed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # from_numpy on read-only arrays
        views = [torch.from_numpy(b) for b in buffers]
    out_t = torch.from_numpy(out)

    def numpy_loop() -> None:
        np.multiply(buffers[0], w32[0], out=out)
        for b, w in zip(buffers[1:], w32[1:]):
            np.multiply(b, w, out=tmp)
            np.add(out, tmp, out=out)

    def torch_loop(t: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(t)
            torch.mul(views[0], float(w32[0]), out=out_t)
            for v, w in zip(views[1:], w32[1:]):
                out_t.add_(v, alpha=float(w))

        return run

    methods = floors(buffers, threads)
    for t in threads:
        methods[f"kernel_{t}t"] = lambda t=t: _kernels.weighted_average(buffers, counts, out=out, threads=t)
        methods[f"kernel_f64acc_{t}t"] = lambda t=t: _kernels.weighted_average(
            buffers, counts, out=out, threads=t, accumulate="float64"
        )
        methods[f"torch_add_{t}t"] = torch_loop(t)
    methods["numpy_loop"] = numpy_loop
    methods["np_average_with_stack"] = lambda: np.average(np.stack(buffers), axis=0, weights=counts)
    methods["np_average_stacked"] = lambda: np.average(stacked, axis=0, weights=counts)
    return methods


def robust_methods(what: str, buffers: list[np.ndarray], threads: list[int], beta: float) -> Methods:
    k = len(buffers)
    g = int(beta * k)
    out = np.empty(buffers[0].size, dtype=np.float32)
    stacked = np.stack(buffers)  # the "stacked" rows exclude np.stack / torch.stack
    stacked_t = torch.from_numpy(stacked)

    def torch_run(t: int, f: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            torch.set_num_threads(t)
            return f()

        return run

    methods = floors(buffers, threads)
    if what == "median":
        for t in threads:
            methods[f"kernel_{t}t"] = lambda t=t: _kernels.median(buffers, out=out, threads=t)
            methods[f"torch_median_stacked_{t}t"] = torch_run(t, lambda: torch.median(stacked_t, dim=0))
        methods["np_median_with_stack"] = lambda: np.median(np.stack(buffers), axis=0)
        methods["np_median_stacked"] = lambda: np.median(stacked, axis=0)
    else:
        for t in threads:
            methods[f"kernel_{t}t"] = lambda t=t: _kernels.trimmed_mean(buffers, beta, out=out, threads=t)
            methods[f"torch_sort_trim_stacked_{t}t"] = torch_run(
                t, lambda: torch.sort(stacked_t, dim=0).values[g : k - g].mean(dim=0)
            )
        methods["np_sort_trim_with_stack"] = lambda: np.sort(np.stack(buffers), axis=0)[g : k - g].mean(axis=0)
        methods["np_sort_trim_stacked"] = lambda: np.sort(stacked, axis=0)[g : k - g].mean(axis=0)
        if scipy is not None:
            methods["scipy_trim_mean_stacked"] = lambda: scipy.stats.trim_mean(stacked, beta, axis=0)
    return methods


def measure(methods: Methods, repeats: int) -> dict[str, list[float]]:
    # Warm-up: page in, spin up thread pools. On the reference VM the first ~50 calls on fresh
    # buffers run up to 1.6x slower (page-table/THP settling), so warm up for a while.
    warm_until = time.perf_counter() + 1.0
    while True:
        for run in methods.values():
            run()
        if time.perf_counter() > warm_until:
            break
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def summarise(title: str, seconds: dict[str, list[float]], k: int, n: int, threads: list[int]) -> dict:
    bytes_read, bytes_written = 4 * k * n, 4 * n
    scale = (bytes_read + bytes_written) / bytes_read
    for t in threads:  # the floor: read time charged for the output bytes too
        seconds[f"floor_{t}t"] = [s * scale for s in seconds[f"floor_read_{t}t"]]
    median = {name: statistics.median(s) for name, s in seconds.items()}
    minimum = {name: min(s) for name, s in seconds.items()}
    gbps = {name: (bytes_read + bytes_written) / s / 1e9 for name, s in median.items()}
    gbps.update({f"floor_read_{t}t": bytes_read / median[f"floor_read_{t}t"] / 1e9 for t in threads})

    ratios: dict[str, float] = {}
    base = f"kernel_{min(threads)}t"  # NumPy and SciPy are single-threaded: compare at the fewest
    for t in threads:
        kernel, floor = seconds[f"kernel_{t}t"], seconds[f"floor_{t}t"]
        ratios[f"kernel_{t}t/floor_{t}t"] = median[f"kernel_{t}t"] / median[f"floor_{t}t"]
        ratios[f"kernel_{t}t/floor_{t}t_paired"] = statistics.median(a / b for a, b in zip(kernel, floor))
        for name in median:
            if name.startswith(("torch_", "kernel_f64acc_")) and name.endswith(f"_{t}t"):
                ratios[f"{name}/kernel_{t}t"] = median[name] / median[f"kernel_{t}t"]
    for name in median:
        if name.startswith(("numpy_", "np_", "scipy_")):
            ratios[f"{name}/{base}"] = median[name] / median[base]

    print(f"{title}, {k} x {n:,} float32: {bytes_read / 1e6:.1f} MB read, {bytes_written / 1e6:.1f} MB written")
    print(f"{'method':<30}{'median ms':>11}{'min ms':>11}{'GB/s':>8}")
    for name in median:
        print(f"{name:<30}{median[name] * 1e3:>11.3f}{minimum[name] * 1e3:>11.3f}{gbps[name]:>8.1f}")
    for name, value in ratios.items():
        print(f"  {name:<48}{value:>9.3f}")
    print()
    return {"clients": k, "median_seconds": median, "min_seconds": minimum, "gbps": gbps, "ratios": ratios}


def main() -> None:
    args = parse_args()
    n = args.length
    parts = ["mean", "median", "trimmed"] if args.what == "all" else [args.what]
    torch_threads_before = torch.get_num_threads()
    print(f"{args.repeats} repeats; OpenMP max threads {_kernels.openmp_max_threads()}; "
          f"ISA variants {_kernels.available_isas()} (isa='auto' runs the last); "
          f"scipy {'installed' if scipy is not None else 'not installed: its row is skipped'}")
    print("(GB/s counts bytes read + written; floor_read_*: bytes read only. np_average_* promote to float64.)\n")
    results: dict[str, dict[str, dict]] = {part: {} for part in parts}
    for k in args.clients:
        rng = np.random.default_rng(k)
        buffers = [rng.standard_normal(n, dtype=np.float32) for _ in range(k)]
        for b in buffers:
            b.flags.writeable = False
        counts = [int(c) for c in rng.integers(300, 900, size=k)]
        for part in parts:
            if part == "mean":
                methods, title = mean_methods(buffers, counts, args.threads), "FedAvg weighted mean"
            else:
                methods = robust_methods(part, buffers, args.threads, args.trim_fraction)
                title = "median" if part == "median" else f"trimmed mean (beta {args.trim_fraction})"
            seconds = measure(methods, args.repeats)
            results[part][str(k)] = summarise(title, seconds, k, n, args.threads)
    torch.set_num_threads(torch_threads_before)
    print(json.dumps({
        "length": n, "repeats": args.repeats, "threads": args.threads, "trim_fraction": args.trim_fraction,
        "isa": _kernels.available_isas()[-1], "scipy": scipy is not None, "results": results,
    }))


if __name__ == "__main__":
    main()
