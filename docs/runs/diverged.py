"""Why SCAFFOLD and FedAdam diverged on non-IID E=1 B=10 (issue 14): the numbers the README quotes.

Reads a run directory's newest checkpoint (its embedded Redis, so the run's own machine: the
checkpoints are not in the repository) and replays one client's local training from it:

    python docs/runs/diverged.py scaffold RUN_DIR CLIENT [CLIENT ...]
        |c|, the largest |c_i|, and each client trained from the checkpoint with SCAFFOLD's
        correction and without it: its last-epoch loss and how far it moved, |y - x|.
    python docs/runs/diverged.py trace RUN_DIR CLIENT
        the gradient and weight norms step by step of one client's plain local SGD from the
        checkpoint (for FedAdam: its server step leaves the weights where lr 0.1 blows up).

Run it with the fedactors that made the run (a checkpoint's fingerprint belongs to its version).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np


def latest(run_dir: Path):
    from fedactors.store.checkpoint import RedisStore
    from fedactors.store.embedded_redis import EmbeddedRedis

    run_id = run_dir.name
    with EmbeddedRedis(run_dir / "checkpoints") as redis, RedisStore(redis.url) as store:
        ckpt, _ = store.latest(run_id)
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint of run {run_id}")
    return ckpt


def host_for(ckpt, **changes):
    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig
    from fedactors.data import load_mnist, resolve_data_dir
    from fedactors.data.partition import partition

    config = dataclasses.replace(RunConfig.from_dict(ckpt.config), **changes)
    mnist = load_mnist(resolve_data_dir(config.data_dir))
    parts = partition(mnist.train_labels, config.clients, config.partition, config.seed)
    host = ClientHost(config, mnist.train_images, mnist.train_labels, parts, mnist.test_images, mnist.test_labels)
    return host, mnist, parts


def scaffold(run_dir: Path, clients: list[int]) -> None:
    ckpt = latest(run_dir)
    x, c = ckpt.weights, ckpt.state["c"]
    norms = {int(name[1:]): float(np.linalg.norm(b)) for name, b in ckpt.state.items() if name != "c"}
    print(f"after round {ckpt.round}: |x| {np.linalg.norm(x):.2f}, |c| {np.linalg.norm(c):.4f}, "
          f"{len(norms)} clients with a c_i, median |c_i| {np.median(list(norms.values())):.3f}, "
          f"largest {max(norms.values()):.3f}")
    corrected, _, _ = host_for(ckpt)
    plain, mnist, parts = host_for(ckpt, strategy="fedavg")
    for cid in clients:
        c_i = ckpt.state.get(f"c{cid}", np.zeros_like(c))
        steps = corrected.config.epochs * -(-len(parts[cid]) // (corrected.config.batch_size or len(parts[cid])))
        with_c = corrected.train(x, cid, ckpt.round + 1, c, c_i)
        without = plain.train(x, cid, ckpt.round + 1)
        print(f"client {cid} (labels {sorted(set(mnist.train_labels[parts[cid]].tolist()))}): |c - c_i| "
              f"{np.linalg.norm(c - c_i):.3f}, K lr |c - c_i| {steps * corrected.config.lr * np.linalg.norm(c - c_i):.2f}; "
              f"SCAFFOLD loss {with_c.train_loss:.3f} |y - x| {np.linalg.norm(with_c.weights - x):.2f}; "
              f"plain SGD loss {without.train_loss:.3f} |y - x| {np.linalg.norm(without.weights - x):.2f}")


def trace(run_dir: Path, cid: int) -> None:
    import torch

    from fedactors.runtime.client import local_update
    from fedactors.seeding import Purpose, client_torch_seed, generator

    ckpt = latest(run_dir)
    host, mnist, parts = host_for(ckpt, strategy="fedavg")
    cfg, model, rnd = host.config, host.model, ckpt.round + 1
    print(f"after round {ckpt.round}: |x| {np.linalg.norm(ckpt.weights):.2f}, max |x| {np.abs(ckpt.weights).max():.3f}")
    for name, b in ckpt.state.items():
        print(f"  {name}: |{name}| {np.linalg.norm(b):.4g}, percentiles 10/50/90 of |{name}| "
              f"{np.percentile(np.abs(b), [10, 50, 90])}")
    steps = []
    model.set_weights(ckpt.weights)
    torch.manual_seed(client_torch_seed(cfg.seed, rnd, cid))
    idx = parts[cid]
    local_update(model, torch.from_numpy(mnist.train_images[idx]), torch.from_numpy(mnist.train_labels[idx]),
                 epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, rng=generator(Purpose.SHUFFLE, cfg.seed, rnd, cid),
                 grad_hook=lambda: steps.append((float(model.grads.norm()), float(model.params.norm()))))
    for i, (g, w) in enumerate(steps):
        if i % 10 == 0 or g > 5 or not np.isfinite(g):
            print(f"  step {i:3d}: |grad| {g:.3g}  |w| {w:.4g}")
        if not np.isfinite(g):
            break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["scaffold", "trace"])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("clients", type=int, nargs="+")
    args = parser.parse_args()
    if args.what == "scaffold":
        scaffold(args.run_dir, args.clients)
    else:
        trace(args.run_dir, args.clients[0])


if __name__ == "__main__":
    main()
