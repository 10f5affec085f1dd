"""Does a client host train and evaluate as fast inside a Ray actor as in a plain process?

bench/round.py compares whole runs, one after the other, so a drift in this shared machine's
speed between the fedactors run and the reference run shows up in the ratio. This benchmark
asks the narrower question with the drift taken out: the same client updates and the same
evaluation, alternately on two `ClientHost`s inside Ray actors (one CPU, one torch thread
each, data from the object store, as `fedactors run` places them) and on two `ClientHost`s in
forked plain processes (one torch thread, data inherited), in short blocks, with the order
of the two flipped every block. Ray is up during both, so its daemons' background CPU hits
both alike and is not in the ratio (bench/round.py's ratio contains it).

    FEDACTORS_DATA=/work/shared/mnist .venv/bin/python bench/hosts.py [--blocks 10] [--updates 3]

Prints one line per block and the medians of the per-block ratios Ray / plain (below 1: the
actors were faster), then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import median  # noqa: E402

from fedactors.config import RunConfig  # noqa: E402
from fedactors.data import load_mnist, resolve_data_dir
from fedactors.data.partition import partition  # noqa: E402

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only


class Host:
    """A ClientHost that trains clients from one fixed global model and evaluates it; returns seconds."""

    def __init__(self, config: RunConfig, client_indices: list, *data: np.ndarray) -> None:
        from fedactors.runtime.client import ClientHost

        self.host = ClientHost(config, data[0], data[1], client_indices, data[2], data[3], threads=1)
        self.weights = self.host.initial_weights()

    def train(self, client_id: int) -> float:
        return self.host.train(self.weights, client_id, 1).train_seconds

    def evaluate(self, start: int, stop: int) -> float:
        return self.host.evaluate(self.weights, start, stop).seconds


def _plain(conn, config: RunConfig, client_indices: list, data: tuple) -> None:
    host = Host(config, client_indices, *data)
    while (msg := conn.recv()) is not None:
        method, args = msg
        conn.send(getattr(host, method)(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks (each: Ray, then plain, or the reverse)")
    parser.add_argument("--updates", type=int, default=3, help="client updates per host per block")
    parser.add_argument("--data-dir", default=None, help="MNIST directory; default $FEDACTORS_DATA")
    args = parser.parse_args()

    config = RunConfig()  # the canonical client update: E=5, B=10, 600 non-IID images
    mnist = load_mnist(resolve_data_dir(args.data_dir))
    # Canonical strides, as an array that has been through Ray's object store has (see round.py).
    train_images = np.empty(mnist.train_images.shape, np.float32)
    train_images[...] = mnist.train_images
    data = (train_images, mnist.train_labels, mnist.test_images, mnist.test_labels)
    client_indices = partition(mnist.train_labels, config.clients, config.partition, config.seed)
    half = len(mnist.test_labels) // 2
    slices = [(0, half), (half, len(mnist.test_labels))]

    ctx = mp.get_context("fork")  # before Ray starts: a fork of a process with Ray's threads is unsafe
    pipes, procs = [], []
    for _ in range(2):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_plain, args=(child, config, client_indices, data), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)

    from fedactors.runtime.experiment import _start_ray

    _start_ray(None)  # as `fedactors run` starts a local cluster
    import ray

    refs = [ray.put(x) for x in data]
    actors = [ray.remote(num_cpus=1)(Host).remote(config, client_indices, *refs) for _ in range(2)]

    def on_ray(calls: list[list[tuple]]) -> list[float]:
        return ray.get([getattr(a, m).remote(*xs) for a, (m, xs) in zip(actors, calls)])

    def on_plain(calls: list[list[tuple]]) -> list[float]:
        for pipe, call in zip(pipes, calls):
            pipe.send(call)
        return [pipe.recv() for pipe in pipes]

    def block(run, clients: list[tuple[int, int]]) -> tuple[float, float]:
        train = sum(sum(run([("train", (a,)), ("train", (b,))])) for a, b in clients)
        evaluate = sum(run([("evaluate", s) for s in slices]))
        return train, evaluate

    warm = [("train", (0,)), ("train", (1,))]  # first-call costs (allocator, kernels) out of the figures
    on_ray(warm)
    on_plain(warm)
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'block':>5} {'order':>12} {'train ray':>10} {'plain':>8} {'ratio':>7} {'eval ray':>9} {'plain':>7} {'ratio':>7}")
    for i in range(args.blocks):
        clients = [tuple(int(c) for c in rng.integers(0, config.clients, 2)) for _ in range(args.updates)]
        order = ["ray", "plain"] if i % 2 == 0 else ["plain", "ray"]
        got = {name: block(on_ray if name == "ray" else on_plain, clients) for name in order}
        row = {"order": order, "train_ray": got["ray"][0], "train_plain": got["plain"][0],
               "eval_ray": got["ray"][1], "eval_plain": got["plain"][1]}
        row["train_ratio"] = row["train_ray"] / row["train_plain"]
        row["eval_ratio"] = row["eval_ray"] / row["eval_plain"]
        rows.append(row)
        print(f"{i + 1:>5} {'/'.join(order):>12} {row['train_ray']:>10.2f} {row['train_plain']:>8.2f} {row['train_ratio']:>7.3f} "
              f"{row['eval_ray']:>9.2f} {row['eval_plain']:>7.2f} {row['eval_ratio']:>7.3f}", flush=True)
    for pipe in pipes:
        pipe.send(None)
    for proc in procs:
        proc.join()
    ray.shutdown()

    figures = {
        "train_ray_over_plain": median([r["train_ratio"] for r in rows]),
        "eval_ray_over_plain": median([r["eval_ratio"] for r in rows]),
        "train_sum_ratio": sum(r["train_ray"] for r in rows) / sum(r["train_plain"] for r in rows),
        "eval_sum_ratio": sum(r["eval_ray"] for r in rows) / sum(r["eval_plain"] for r in rows),
    }
    print(f"median of per-block ratios, Ray actor / plain process: training {figures['train_ray_over_plain']:.3f}, "
          f"evaluation {figures['eval_ray_over_plain']:.3f} (ratio of sums {figures['train_sum_ratio']:.3f}, "
          f"{figures['eval_sum_ratio']:.3f})")
    print(json.dumps({"config": {"blocks": args.blocks, "updates": args.updates}, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "blocks": rows, **figures}))


if __name__ == "__main__":
    main()
