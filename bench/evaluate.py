"""Benchmark evaluation: the global model on a host's slice of the test set, by evaluation batch size.

    .venv/bin/python bench/evaluate.py [--images 5000] [--batches 50 100 200 250 500 1000 5000]
                                       [--repeats 7] [--threads 1] [--precision fp32]

A host evaluates its slice of the 10,000 MNIST test images (5,000 each with two hosts) through
FlatModel.evaluate, one batch after another. The batch decides how large the activations of
one forward pass are (a 1000-image batch's first convolution output alone is 1000 x 32 x 28 x 28
floats, 100 MB), and so whether they stay in cache. Every batch size evaluates the same trained
weights on the same images, interleaved within each repeat so machine noise hits all alike;
the reference is batch 1000 (the default before this benchmark), measured in the same run, and
each figure that matters is a ratio to it (median of per-repeat ratios). The correct counts
must be identical at every batch size (checked, not assumed); loss sums may differ in the last
bits (summation order). The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from _util import cpu_name
import torch

from fedactors.data import load_mnist, resolve_data_dir
from fedactors.model import FlatModel

REFERENCE_BATCH = 1000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="test images evaluated (a host's slice)")
    parser.add_argument("--batches", type=int, nargs="+", default=[50, 64, 100, 128, 200, 500, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a host's, by default one)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    if not 1 <= args.images <= 10_000 or min(args.batches) < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--images must be in [1, 10000]; --batches, --repeats and --threads >= 1")
    if REFERENCE_BATCH not in args.batches:
        args.batches.append(REFERENCE_BATCH)
    return args


def trained_model(images: torch.Tensor, labels: torch.Tensor, precision: str) -> FlatModel:
    """A model a few SGD steps in, so predictions are not all one class and ties are rare."""
    model = FlatModel(init_seed=0, precision=precision)
    for start in range(0, 2000, 50):
        model.sgd_step(images[start:start + 50], labels[start:start + 50], 0.1)
    return model


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data = load_mnist(resolve_data_dir(None))
    train_x, train_y = torch.from_numpy(data.train_images), torch.from_numpy(data.train_labels)
    test_x = torch.from_numpy(np.array(data.test_images[:args.images]))
    test_y = torch.from_numpy(np.array(data.test_labels[:args.images]))
    model = trained_model(train_x, train_y, args.precision)
    results = {b: model.evaluate(test_x, test_y, batch_size=b) for b in args.batches}  # also warms up
    correct = {b: c for b, (_, c) in results.items()}
    if len(set(correct.values())) != 1:
        raise SystemExit(f"correct counts differ between batch sizes: {correct}")
    seconds: dict[int, list[float]] = {b: [] for b in args.batches}
    for _ in range(args.repeats):
        for b in args.batches:
            t0 = time.perf_counter()
            model.evaluate(test_x, test_y, batch_size=b)
            seconds[b].append(time.perf_counter() - t0)
    ratio = {b: statistics.median(s / r for s, r in zip(seconds[b], seconds[REFERENCE_BATCH])) for b in args.batches}
    best = min(args.batches, key=lambda b: ratio[b])
    print(f"evaluation of {args.images} test images, {args.threads} torch thread(s), {args.precision}, "
          f"{args.repeats} repeats; CPU: {cpu_name()} ({os.cpu_count()} cores)")
    print(f"{'batch':>6}  {'median s':>9}  {'min s':>7}  {'vs batch 1000':>13}  {'images/s':>9}  {'loss sum':>14}  correct")
    for b in args.batches:
        med = statistics.median(seconds[b])
        print(f"{b:>6}  {med:>9.3f}  {min(seconds[b]):>7.3f}  {ratio[b]:>12.3f}x  {args.images / med:>9.0f}  "
              f"{results[b][0]:>14.6f}  {correct[b]}")
    print(f"fastest: batch {best}, {ratio[best]:.3f}x the time of batch {REFERENCE_BATCH}; correct counts identical")
    print(json.dumps({
        "benchmark": "evaluate", "cpu": cpu_name(), "images": args.images, "threads": args.threads,
        "precision": args.precision, "repeats": args.repeats, "reference_batch": REFERENCE_BATCH,
        "median_seconds": {str(b): statistics.median(seconds[b]) for b in args.batches},
        "ratio_to_reference": {str(b): ratio[b] for b in args.batches},
        "loss_sum": {str(b): results[b][0] for b in args.batches}, "correct": correct[best], "fastest_batch": best,
    }))


if __name__ == "__main__":
    main()
