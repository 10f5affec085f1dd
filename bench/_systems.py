"""The three systems bench/round.py times: fedactors as a user runs it, the framework-free reference, Flower.

Each runner takes round.py's parsed arguments (args.rounds rounds; args.memory: sample the
process tree's memory, which costs CPU, so timed runs leave it off) and returns its figures as
a dict. probe_startup times fedactors' start-up steps one by one (round.py --probe-startup).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _util import TreeMemory, warm_page_cache

from fedactors.data import load_mnist, resolve_data_dir
from fedactors.data.partition import partition
from fedactors.seeding import Purpose, generator, sample_clients, torch_seed

BENCH = Path(__file__).resolve().parent
FLOWER_PYTHON = BENCH / "peers" / ".venv-flower" / "bin" / "python"
# What a fedactors process imports (CLI, Redis client, Ray, torch in the hosts): warmed before it is timed.
FEDACTORS_IMPORTS = "torch, ray, redis, fedactors.cli, fedactors.runtime.client"
ROUND_LINE = re.compile(r"^round\s+(\d+)/\d+.*\(train [\d.]+, eval [\d.]+(?:, checkpoint ([\d.]+))?\)")


# --- fedactors, as a user runs it -------------------------------------------------------------


def run_fedactors(args: argparse.Namespace, workdir: Path) -> dict:
    """`fedactors run ...` as a subprocess; per-round figures from its stdout timing, metrics.jsonl and run.json."""
    exe = Path(sys.executable).parent / "fedactors"
    out = workdir / "fedactors-run"
    cmd = [
        str(exe), "run", "--clients", str(args.clients), "--frac", str(args.frac), "--epochs", str(args.epochs),
        "--batch-size", args.batch_size, "--partition", args.partition, "--rounds", str(args.rounds),
        "--lr", str(args.lr), "--seed", str(args.seed), "--out", str(out), "--run-id", "bench-round",
    ]
    if args.hosts:
        cmd += ["--hosts", str(args.hosts)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    warm_seconds = warm_page_cache(sys.executable, FEDACTORS_IMPORTS)
    load_before = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=workdir)
    lines: list[tuple[float, str]] = []
    with TreeMemory(proc.pid, enabled=args.memory) as mem:
        for line in proc.stdout:
            lines.append((time.time() - t0, line.rstrip("\n")))
        stderr = proc.stderr.read()
        proc.wait()
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.stdout.write("\n".join(text for _, text in lines) + "\n" + stderr)
        raise SystemExit(f"fedactors run failed with status {proc.returncode}")
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    run_json = json.loads((out / "run.json").read_text())

    arrivals, ckpt_printed = {}, {}
    banner_at = hosts_at = None
    for at, text in lines:
        if text.startswith("fedactors run ") and banner_at is None:
            banner_at = at
        elif "client hosts" in text and hosts_at is None:
            hosts_at = at
        elif m := ROUND_LINE.match(text):
            arrivals[int(m.group(1))] = at
            ckpt_printed[int(m.group(1))] = float(m.group(2)) if m.group(2) else None
    rounds = []
    for row in metrics:
        r = row["round"]
        ckpt = row.get("checkpoint_seconds", ckpt_printed.get(r))  # metrics.jsonl may not carry it: stdout has 10 ms
        rounds.append({
            "round": r,
            "round_seconds": row["round_seconds"],
            "train_seconds": row["train_seconds"],
            "gather_seconds": row["wait_seconds"] - row["train_seconds"],
            "wait_seconds": row["wait_seconds"],
            "aggregate_seconds": row["aggregate_seconds"],
            "eval_seconds": row["eval_seconds"],
            "checkpoint_seconds": ckpt,
            "overhead_seconds": row["round_seconds"] - row["train_seconds"] - row["eval_seconds"],
            # as the user sees it: from one round's line to the next (includes the checkpoint)
            "wall_seconds": arrivals[r] - arrivals[r - 1] if r - 1 in arrivals else None,
            "accuracy": row["accuracy"],
            "arrived_at": arrivals.get(r),
        })
    first = rounds[0]
    round1_start = first["arrived_at"] - (first["checkpoint_seconds"] or 0.0) - first["round_seconds"]
    return {
        "command": " ".join(cmd),
        "rounds": rounds,
        "command_seconds": wall,
        "startup_seconds": round1_start,  # command start -> round 1 starts sampling and dispatching
        "startup_seconds_run_json": run_json.get("startup_seconds"),  # experiment.run() -> round 1 start
        "to_banner_seconds": banner_at,  # python + CLI imports + embedded Redis start + store check
        "to_hosts_ready_seconds": hosts_at,  # + data load, ray.init, puts, host actors up (torch imported)
        "first_round_end_seconds": first["arrived_at"],
        "after_last_round_seconds": wall - rounds[-1]["arrived_at"],  # weights.npy, ray.shutdown, Redis stop
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "warm_seconds": warm_seconds,
        **mem.figures(),
    }


# --- the framework-free reference ---------------------------------------------------------------


def _worker(conn, data, client_indices, args_dict) -> None:
    """A plain process: one torch thread, data inherited from the parent; trains and evaluates on request."""
    import torch

    from fedactors.runtime.client import local_update
    from fedactors.model import FlatModel

    torch.set_num_threads(1)
    model = FlatModel()
    cache: dict = {}
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        if msg[0] == "init":
            conn.send(FlatModel(init_seed=torch_seed(args_dict["seed"])).get_weights())
        elif msg[0] == "train":
            _, weights, round_idx, cids = msg
            results = []
            for cid in cids:
                t0 = time.perf_counter()
                idx = client_indices[cid]
                images, labels = torch.from_numpy(data.train_images[idx]), torch.from_numpy(data.train_labels[idx])
                model.set_weights(weights)
                loss = local_update(
                    model, images, labels, epochs=args_dict["epochs"], batch_size=args_dict["batch_size"],
                    lr=args_dict["lr"], rng=generator(Purpose.SHUFFLE, args_dict["seed"], round_idx, cid),
                )
                results.append((cid, model.get_weights(), len(idx), loss, time.perf_counter() - t0))
            conn.send(results)
        elif msg[0] == "eval":
            _, weights, start, stop = msg
            t0 = time.perf_counter()
            if (start, stop) not in cache:
                cache[(start, stop)] = (torch.from_numpy(data.test_images[start:stop].copy()),
                                        torch.from_numpy(data.test_labels[start:stop].copy()))
            model.set_weights(weights)
            loss_sum, correct = model.evaluate(*cache[(start, stop)])
            conn.send((loss_sum, correct, stop - start, time.perf_counter() - t0))


def run_reference(args: argparse.Namespace, procs: int) -> dict:
    """The same rounds as plain processes: the floor that fedactors' round time is compared with."""
    warm_seconds = warm_page_cache(sys.executable, "torch")
    load_before = os.getloadavg()[0]
    with TreeMemory(enabled=args.memory) as mem:
        t_start = time.perf_counter()
        data = load_mnist(resolve_data_dir(args.data_dir))
        # The loaded images are (N, 1, 28, 28) with stride 0 on the channel axis; an array that has
        # been through Ray's object store has canonical strides, and torch's CPU convolution gives
        # different bits for the two. Canonical strides here, so the reference computes what the
        # hosts compute (and the final weights can be compared).
        canonical = np.empty(data.train_images.shape, np.float32)
        canonical[...] = data.train_images
        data = dataclasses.replace(data, train_images=canonical)
        client_indices = partition(data.train_labels, args.clients, args.partition, args.seed)
        batch = None if args.batch_size.lower() == "inf" else int(args.batch_size)
        args_dict = {"seed": args.seed, "epochs": args.epochs, "batch_size": batch, "lr": args.lr}
        ctx = mp.get_context("fork")  # children inherit the loaded data, as hosts map the object store's copy
        conns, workers = [], []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, data, client_indices, args_dict), daemon=True)
            p.start()
            conns.append(parent)
            workers.append(p)
        conns[0].send(("init",))
        weights = conns[0].recv()
        num_sampled = max(int(np.floor(args.frac * args.clients + 0.5)), 1)
        num_test = len(data.test_labels)
        edges = np.linspace(0, num_test, procs + 1).round().astype(int)
        startup = time.perf_counter() - t_start
        rounds = []
        for r in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            sampled = sample_clients(args.seed, r, args.clients, num_sampled).tolist()
            load = [0] * procs
            plan: list[list[int]] = [[] for _ in range(procs)]
            for cid in sorted(sampled, key=lambda c: (-len(client_indices[c]), c)):  # as fedactors' balance()
                p = min(range(procs), key=lambda i: (load[i], i))
                plan[p].append(cid)
                load[p] += len(client_indices[cid])
            for conn, cids in zip(conns, plan):
                conn.send(("train", weights, r, cids))
            results = {}
            per_proc = []
            for conn in conns:
                got = conn.recv()
                per_proc.append(sum(x[4] for x in got))
                results.update({x[0]: x for x in got})
            t1 = time.perf_counter()
            ordered = [results[c] for c in sampled]
            counts = np.array([x[2] for x in ordered], dtype=np.float64)
            acc = np.zeros_like(weights, dtype=np.float64)
            for x, c in zip(ordered, counts / counts.sum()):
                acc += c * x[1]
            weights = acc.astype(np.float32)
            t2 = time.perf_counter()
            for i, conn in enumerate(conns):
                conn.send(("eval", weights, int(edges[i]), int(edges[i + 1])))
            parts = [conn.recv() for conn in conns]
            t3 = time.perf_counter()
            round_seconds = t3 - t0
            rounds.append({
                "round": r,
                "round_seconds": round_seconds,
                "train_seconds": max(per_proc),
                "imbalance_seconds": max(per_proc) - min(per_proc),
                "gather_seconds": (t1 - t0) - max(per_proc),
                "aggregate_seconds": t2 - t1,
                "eval_seconds": t3 - t2,
                "overhead_seconds": round_seconds - max(per_proc) - (t3 - t2),
                "accuracy": sum(p[1] for p in parts) / sum(p[2] for p in parts),
            })
        for conn in conns:
            conn.send(("stop",))
        for p in workers:
            p.join()
    return {"rounds": rounds, "startup_seconds": startup, "processes": procs, "final_weights": weights,
            "load_before": load_before, "load_after": os.getloadavg()[0], "warm_seconds": warm_seconds, **mem.figures()}


# --- where fedactors' start-up goes -----------------------------------------------------------------


def probe_startup(args: argparse.Namespace) -> dict:
    """The steps of experiment.run() timed one by one, in a fresh process (run as `round.py --probe-startup`)."""
    t = {}
    t0 = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        t[name] = now - t0
        t0 = now

    import fedactors.cli  # noqa: F401  click, config, errors: what `fedactors run` imports before anything else
    mark("import_cli")
    data = load_mnist(resolve_data_dir(args.data_dir))
    indices = partition(data.train_labels, args.clients, args.partition, args.seed)
    mark("load_mnist_and_partition")
    import ray

    mark("import_ray")
    from fedactors.runtime.experiment import _start_ray

    _start_ray(None)  # as `fedactors run` starts a local Ray, without its preload of torch
    mark("ray_init")
    refs = [ray.put(data.train_images), ray.put(data.train_labels), ray.put(data.test_images),
            ray.put(data.test_labels), ray.put(indices)]
    mark("ray_put_data")

    class Bare:
        def ping(self) -> int:
            return os.getpid()

    hosts = args.hosts or 2
    bare = [ray.remote(Bare).options(num_cpus=0).remote() for _ in range(hosts)]
    ray.get([b.ping.remote() for b in bare])
    mark("bare_actors_up")  # a new Ray worker process each, nothing imported

    @ray.remote(num_cpus=0)
    class TorchImporter:
        def ping(self) -> float:
            t = time.perf_counter()
            import torch  # noqa: F401

            return time.perf_counter() - t

    importers = [TorchImporter.remote() for _ in range(hosts)]
    t["torch_import_in_worker"] = max(ray.get([a.ping.remote() for a in importers]))
    mark("torch_actors_up")
    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig

    config = RunConfig(clients=args.clients, frac=args.frac, epochs=args.epochs, partition=args.partition, seed=args.seed)
    host_actors = [ray.remote(ClientHost).options(num_cpus=0).remote(config, *refs[:2], refs[4], *refs[2:4], threads=1, host_id=i)
                   for i in range(hosts)]
    ray.get([h.describe.remote() for h in host_actors])
    mark("client_hosts_up")  # what `fedactors run` waits for before its "client hosts" line
    ray.get(host_actors[0].initial_weights.remote())
    mark("initial_weights")

    @ray.remote(num_cpus=0)
    class CoordinatorLike:
        def __init__(self, hosts: list) -> None:
            import fedactors.runtime.coordinator  # noqa: F401  what CoordinatorActor's process imports

        def ping(self) -> tuple[bool, float]:
            import psutil

            return "torch" in sys.modules, psutil.Process().memory_info().rss / 2**20

    has_torch, rss = ray.get(CoordinatorLike.remote(host_actors).ping.remote())
    mark("coordinator_actor_up")  # handed the host handles, as CoordinatorActor is
    t["coordinator_imports_torch"], t["coordinator_rss_mib"] = has_torch, rss
    ray.shutdown()
    mark("ray_shutdown")
    return t


# --- Flower ----------------------------------------------------------------------------------------


def run_flower(args: argparse.Namespace) -> dict:
    if not FLOWER_PYTHON.exists():
        raise SystemExit(f"no Flower environment at {FLOWER_PYTHON.parent.parent}: run bash bench/peers/setup_flower.sh")
    cmd = [
        str(FLOWER_PYTHON), str(BENCH / "peers" / "flower_round.py"), "--clients", str(args.clients),
        "--frac", str(args.frac), "--epochs", str(args.epochs), "--batch-size", args.batch_size,
        "--partition", args.partition, "--rounds", str(args.rounds), "--lr", str(args.lr), "--seed", str(args.seed),
        "--data-dir", str(resolve_data_dir(args.data_dir)),
    ]
    if args.hosts:
        cmd += ["--actors", str(args.hosts)]
    if not args.memory:
        cmd += ["--no-memory"]
    warm_seconds = warm_page_cache(str(FLOWER_PYTHON), "torch, ray, flwr")
    load_before = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.run(cmd + ["--t0", repr(t0)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        raise SystemExit(f"flower_round.py failed with status {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(command=" ".join(cmd), load_before=load_before, load_after=os.getloadavg()[0], warm_seconds=warm_seconds)
    return result
