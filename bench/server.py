"""Benchmark the server side of the strategies: the fused optimizer step and Krum's distances.

    .venv/bin/python bench/server.py [--length 1663370] [--repeats 15] [--threads 1 2] [--clients 10 50]

step: _kernels.server_step (FedAvgM, FedAdagrad, FedAdam, FedYogi) on a 1,663,370-float model,
against torch.optim (SGD with momentum, Adagrad, Adam: the same buffer as one parameter whose
gradient is the pseudo-gradient) and against the streaming floor for the bytes the step must
touch, measured in the same run: _kernels.stream_read over as many buffers as the step reads,
scaled by (read + written) / read, i.e. writes charged at the read bandwidth (FedAdam reads the
aggregate, the weights, m and v and writes m, v and the new weights: 7 floats per parameter).
torch's Adam does more (bias correction, its own 5-6 passes), so the ratio to torch says what
fusing buys, the ratio to the floor what is left. Yogi has no torch counterpart.

krum: _kernels.pairwise_sq_distances for m = 10 and 50 updates, against NumPy (a Gram matrix:
|x|^2 + |y|^2 - 2 x.y in float64) and torch.cdist (float32).

Methods run interleaved within each repeat; the table shows medians, the ratios are medians of
per-repeat ratios. The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from aggregate import measure  # bench/aggregate.py: interleaved repeats after a second of warm-up
from fedactors import _kernels

# Floats read and written per parameter by each step.
TRAFFIC = {"fedavgm": (3, 2), "fedadagrad": (4, 3), "fedadam": (4, 3), "fedyogi": (4, 3)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1_663_370)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50], help="updates for the Krum distances")
    args = parser.parse_args()
    if args.length < 1 or args.repeats < 1 or min(args.threads) < 1 or min(args.clients) < 2:
        parser.error("--length, --repeats and --threads must be >= 1, --clients >= 2")
    return args


def ratio(seconds: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(seconds[a], seconds[b]))


def step_methods(n: int, threads: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(np.float32)
    a = x + 0.01 * rng.standard_normal(n).astype(np.float32)
    state = {name: (np.zeros(n, np.float32), np.zeros(n, np.float32)) for name in TRAFFIC}
    floor_in = {name: [rng.standard_normal(n).astype(np.float32) for _ in range(r)] for name, (r, _) in TRAFFIC.items()}
    torch.set_num_threads(threads)
    param = torch.nn.Parameter(torch.from_numpy(x.copy()))
    param.grad = torch.from_numpy(x - a)  # the pseudo-gradient
    optims = {"fedavgm": torch.optim.SGD([param], lr=1.0, momentum=0.9),
              "fedadagrad": torch.optim.Adagrad([param], lr=0.1, eps=1e-3),
              "fedadam": torch.optim.Adam([param], lr=0.01, betas=(0.9, 0.99), eps=1e-3)}
    hyper = {"fedavgm": dict(lr=1.0, beta1=0.9), "fedadagrad": dict(lr=0.1, beta1=0.9, tau=1e-3),
             "fedadam": dict(lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3), "fedyogi": dict(lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)}
    methods, floors = {}, {}
    for name in TRAFFIC:
        m, v = state[name]
        methods[f"{name}:kernel"] = (lambda name=name, m=m, v=v: _kernels.server_step(
            name, a, x, m, None if name == "fedavgm" else v, threads=threads, **hyper[name]))
        if name in optims:
            methods[f"{name}:torch"] = optims[name].step
        methods[f"{name}:floor"] = (lambda name=name: _kernels.stream_read(floor_in[name], threads=threads))
        reads, writes = TRAFFIC[name]
        floors[name] = (reads + writes) / reads
    return methods, floors


def krum_methods(k: int, n: int, threads: int) -> dict:
    rng = np.random.default_rng(1)
    buffers = [rng.standard_normal(n).astype(np.float32) for _ in range(k)]
    stacked = np.stack(buffers)
    tensor = torch.from_numpy(stacked)
    torch.set_num_threads(threads)

    def numpy_gram():
        s = stacked.astype(np.float64)
        sq = np.einsum("ij,ij->i", s, s)
        return sq[:, None] + sq[None, :] - 2 * (s @ s.T)

    return {"kernel": lambda: _kernels.pairwise_sq_distances(buffers, threads=threads),
            "numpy": numpy_gram, "torch.cdist": lambda: torch.cdist(tensor, tensor) ** 2}


def main() -> None:
    args = parse_args()
    n = args.length
    results: dict = {"length": n, "repeats": args.repeats, "step": {}, "krum": {}}
    print(f"server step on {n:,} floats, {args.repeats} repeats (medians); floor = streaming read of the same bytes")
    print(f"{'method':<11} {'threads':>7} {'kernel ms':>10} {'floor ms':>9} {'kernel/floor':>13} {'torch ms':>9} {'torch/kernel':>13}")
    for threads in args.threads:
        methods, floors = step_methods(n, threads)
        seconds = measure(methods, args.repeats)
        for name in TRAFFIC:
            kernel = statistics.median(seconds[f"{name}:kernel"])
            floor = statistics.median(seconds[f"{name}:floor"]) * floors[name]
            per_floor = ratio(seconds, f"{name}:kernel", f"{name}:floor") / floors[name]
            torch_ms = statistics.median(seconds[f"{name}:torch"]) if f"{name}:torch" in seconds else None
            torch_ratio = ratio(seconds, f"{name}:torch", f"{name}:kernel") if torch_ms is not None else None
            print(f"{name:<11} {threads:>7} {kernel * 1e3:>10.2f} {floor * 1e3:>9.2f} {per_floor:>12.3f}x "
                  f"{'-' if torch_ms is None else f'{torch_ms * 1e3:.2f}':>9} "
                  f"{'-' if torch_ratio is None else f'{torch_ratio:.2f}x':>13}")
            results["step"].setdefault(name, {})[str(threads)] = {
                "kernel_seconds": kernel, "floor_seconds": floor, "kernel_over_floor": per_floor,
                "torch_seconds": torch_ms, "torch_over_kernel": torch_ratio}
    print()
    print(f"Krum's pairwise squared distances, {n:,} floats per update")
    print(f"{'updates':>7} {'threads':>7} {'kernel ms':>10} {'numpy ms':>9} {'numpy/kernel':>13} {'cdist ms':>9} {'cdist/kernel':>13}")
    for k in args.clients:
        for threads in args.threads:
            seconds = measure(krum_methods(k, n, threads), max(3, args.repeats // 3))
            kernel = statistics.median(seconds["kernel"])
            row = {"kernel_seconds": kernel, "numpy_seconds": statistics.median(seconds["numpy"]),
                   "cdist_seconds": statistics.median(seconds["torch.cdist"]),
                   "numpy_over_kernel": ratio(seconds, "numpy", "kernel"), "cdist_over_kernel": ratio(seconds, "torch.cdist", "kernel")}
            print(f"{k:>7} {threads:>7} {kernel * 1e3:>10.1f} {row['numpy_seconds'] * 1e3:>9.1f} "
                  f"{row['numpy_over_kernel']:>12.2f}x {row['cdist_seconds'] * 1e3:>9.1f} {row['cdist_over_kernel']:>12.2f}x")
            results["krum"].setdefault(str(k), {})[str(threads)] = row
    print(json.dumps(results))


if __name__ == "__main__":
    main()
