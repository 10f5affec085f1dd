"""Benchmark FedAvg aggregation: the native kernel vs NumPy, torch and a streaming floor.

    .venv/bin/python bench/aggregate.py [--clients 10] [--length 1663370] [--repeats 20]
                                        [--threads 1 2]

Every method averages the same read-only float32 buffers (as Ray's object store hands them
over). The floor is measured in the same run at each thread count: _kernels.stream_read sums
every input float once (a pure streaming read, same blocking and threads as the kernel),
scaled by (bytes read + bytes written) / bytes read, i.e. the output write is charged at the
read bandwidth. Writes cost at least that (write-allocate reads each line first), so the floor
is a lower bound on any method that reads each input once and writes the output once.
Methods run interleaved within each repeat so machine noise hits all of them alike; the table
shows medians (and minima), and kernel/floor is also given as the median of per-repeat
ratios. The last stdout line is one JSON object with every figure (seconds, GB/s, ratios).
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10, help="number of buffers (K)")
    parser.add_argument("--length", type=int, default=1_663_370, help="floats per buffer")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per method")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts")
    args = parser.parse_args()
    if args.clients < 1 or args.length < 1 or args.repeats < 1 or min(args.threads) < 1:
        parser.error("--clients, --length, --repeats and --threads must be >= 1")
    return args


def make_methods(buffers: list[np.ndarray], counts: list[int], threads: list[int]) -> dict[str, Callable[[], object]]:
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

    methods: dict[str, Callable[[], object]] = {}
    for t in threads:
        methods[f"floor_read_{t}t"] = lambda t=t: _kernels.stream_read(buffers, threads=t)
        methods[f"kernel_{t}t"] = lambda t=t: _kernels.weighted_average(buffers, counts, out=out, threads=t)
        methods[f"kernel_f64acc_{t}t"] = lambda t=t: _kernels.weighted_average(
            buffers, counts, out=out, threads=t, accumulate="float64"
        )
        methods[f"torch_add_{t}t"] = torch_loop(t)
    methods["numpy_loop"] = numpy_loop
    methods["np_average_with_stack"] = lambda: np.average(np.stack(buffers), axis=0, weights=counts)
    methods["np_average_stacked"] = lambda: np.average(stacked, axis=0, weights=counts)
    return methods


def main() -> None:
    args = parse_args()
    k, n = args.clients, args.length
    rng = np.random.default_rng(0)
    buffers = [rng.standard_normal(n, dtype=np.float32) for _ in range(k)]
    for b in buffers:
        b.flags.writeable = False
    counts = [int(c) for c in rng.integers(300, 900, size=k)]
    bytes_read, bytes_written = 4 * k * n, 4 * n
    methods = make_methods(buffers, counts, args.threads)
    torch_threads_before = torch.get_num_threads()

    # Warm-up: page in, spin up thread pools. On the reference VM the first ~50 calls on fresh
    # buffers run up to 1.6x slower (page-table/THP settling), so warm up for a while.
    warm_until = time.perf_counter() + 1.0
    while time.perf_counter() < warm_until:
        for run in methods.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    torch.set_num_threads(torch_threads_before)

    scale = (bytes_read + bytes_written) / bytes_read
    for t in args.threads:  # the floor: read time charged for the output bytes too
        seconds[f"floor_{t}t"] = [s * scale for s in seconds[f"floor_read_{t}t"]]
    median = {name: statistics.median(s) for name, s in seconds.items()}
    minimum = {name: min(s) for name, s in seconds.items()}
    gbps = {name: (bytes_read + bytes_written) / s / 1e9 for name, s in median.items()}
    gbps.update({f"floor_read_{t}t": bytes_read / median[f"floor_read_{t}t"] / 1e9 for t in args.threads})

    ratios: dict[str, float] = {}
    for t in args.threads:
        kernel, floor = seconds[f"kernel_{t}t"], seconds[f"floor_{t}t"]
        ratios[f"kernel_{t}t/floor_{t}t"] = median[f"kernel_{t}t"] / median[f"floor_{t}t"]
        ratios[f"kernel_{t}t/floor_{t}t_paired"] = statistics.median(a / b for a, b in zip(kernel, floor))
        ratios[f"kernel_f64acc_{t}t/kernel_{t}t"] = median[f"kernel_f64acc_{t}t"] / median[f"kernel_{t}t"]
        ratios[f"torch_add_{t}t/kernel_{t}t"] = median[f"torch_add_{t}t"] / median[f"kernel_{t}t"]
    base = f"kernel_{min(args.threads)}t"  # NumPy is single-threaded: compare at the fewest threads
    for name in ("numpy_loop", "np_average_with_stack", "np_average_stacked"):
        ratios[f"{name}/{base}"] = median[name] / median[base]

    print(f"FedAvg of {k} x {n:,} float32: {bytes_read / 1e6:.1f} MB read, {bytes_written / 1e6:.1f} MB written; "
          f"{args.repeats} repeats; OpenMP max threads {_kernels.openmp_max_threads()}")
    print(f"{'method':<24}{'median ms':>11}{'min ms':>9}{'GB/s':>8}")
    for name in median:
        print(f"{name:<24}{median[name] * 1e3:>11.3f}{minimum[name] * 1e3:>9.3f}{gbps[name]:>8.1f}")
    print("(GB/s counts bytes read + written; floor_read_*: bytes read only. np_average_* promote to float64.)")
    for name, value in ratios.items():
        print(f"{name:<40}{value:>8.3f}")
    print(json.dumps({
        "clients": k, "length": n, "repeats": args.repeats, "threads": args.threads,
        "bytes_read": bytes_read, "bytes_written": bytes_written,
        "median_seconds": median, "min_seconds": minimum, "gbps": gbps, "ratios": ratios,
    }))


if __name__ == "__main__":
    main()
