"""Where a FedAvg round's time goes in fedactors, against a framework-free reference run in the same invocation.

Runs the canonical setup (K=100, C=0.1, E=5, B=10, non-IID, lr 0.1) through `fedactors run`
exactly as a user types it (a subprocess, embedded Redis checkpoints: the defaults), and
splits each round into training (slowest host), gathering, averaging, evaluation,
checkpointing and overhead = round time - slowest host's training - evaluation. Also:
command start to the first round's start, first round against steady rounds, and the peak
memory (PSS and RSS) of the whole process tree (the CLI, the embedded Redis and every Ray
process). Then the same rounds, same clients, partition, seeds and model, as two plain
processes with one torch thread each (data in memory before they fork; half the sampled
clients and half the test set each; NumPy average in the parent): the reference every
ratio is taken against. `--peer flower` also runs the workload on Flower's Ray simulation
(bench/peers/flower_round.py, in bench/peers/.venv-flower) and compares. Right before each
system is timed, its Python imports torch and Ray once in a throw-away process, so each starts
with its libraries in the page cache (see _util.warm_page_cache: this machine evicts them).

    FEDACTORS_DATA=/work/shared/mnist .venv/bin/python bench/round.py [--rounds 3] [--peer flower] [--repeat 3]

Prints per-round tables and medians (rounds 2+ are "steady"), then one JSON object with every
figure (seconds, ratios, MiB) as the last stdout line. With `--repeat N` the whole comparison
runs N times, interleaved so that a slow spell of this shared machine hits all of them alike:
odd passes run fedactors, the reference, Flower; even passes the reference, fedactors, Flower.
Every ratio is then the median of the N per-pass ratios, shown pass by pass in a last table,
and the JSON holds each pass under "passes".
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
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import TreeMemory, median, ratio, warm_page_cache  # noqa: E402

from fedactors.data import load_mnist, partition, resolve_data_dir  # noqa: E402
from fedactors.seeding import Purpose, generator, sample_clients, torch_seed  # noqa: E402

# Every Ray started here (fedactors' and Flower's) advertises 127.0.0.1: a one-machine benchmark
# has no reason to use the network interface.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

BENCH = Path(__file__).resolve().parent
FLOWER_PYTHON = BENCH / "peers" / ".venv-flower" / "bin" / "python"
# What a fedactors process imports (CLI, Redis client, Ray, torch in the hosts): warmed before it is timed.
FEDACTORS_IMPORTS = "torch, ray, redis, fedactors.cli, fedactors.client"
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
    with TreeMemory(proc.pid) as mem:
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

    from fedactors.client import local_update
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
    with TreeMemory() as mem:
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
    import logging

    ray.init(include_dashboard=False, logging_level=logging.WARNING)
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
    from fedactors.client import ClientHost
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
            import fedactors.coordinator  # noqa: F401  what CoordinatorActor's process imports

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


# --- reporting --------------------------------------------------------------------------------------


def steady(rounds: list[dict], key: str) -> float | None:
    """Median of `key` over rounds 2+ (the steady state); round 1 alone if that is all there is."""
    vals = [r[key] for r in rounds if r["round"] >= 2 and r.get(key) is not None]
    return median(vals) if vals else None


def fmt(x: float | None, unit: str = "", digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def print_rounds(title: str, rounds: list[dict], keys: list[str]) -> None:
    print(f"\n{title}")
    print("  round " + "".join(f"{k.replace('_seconds', ''):>12}" for k in keys))
    for r in rounds:
        print(f"  {r['round']:>5} " + "".join(f"{fmt(r.get(k)):>12}" for k in keys))
    print("  med2+ " + "".join(f"{fmt(steady(rounds, k)):>12}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--frac", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", default="10")
    parser.add_argument("--partition", default="noniid", choices=["iid", "noniid"])
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=None, help="fedactors hosts (and reference processes, Flower actors)")
    parser.add_argument("--data-dir", default=None, help="MNIST directory; default $FEDACTORS_DATA")
    parser.add_argument("--peer", choices=["flower"], default=None)
    parser.add_argument("--no-probe", action="store_true", help="skip the step-by-step start-up probe")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved passes of the whole comparison; ratios are medians")
    parser.add_argument("--probe-startup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help="where the run directory goes (default: a temp dir)")
    args = parser.parse_args()
    if args.probe_startup:
        print(json.dumps(probe_startup(args)))
        return
    if args.rounds < 2:
        parser.error("--rounds must be >= 2: rounds 2+ are the steady state")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    passes = []
    for i in range(args.repeat):
        if args.repeat > 1:
            print(f"pass {i + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
        passes.append(one_pass(args, i + 1, probe=not args.no_probe and i == args.repeat - 1))
    summary = passes[-1]
    print_pass(summary)
    if args.repeat > 1:
        summary = {"passes": passes, "ratios": print_repeats(passes), "repeat": args.repeat}
    print(json.dumps(summary))


# Every figure a goal is judged on, taken per pass and as the median over passes.
REPEATED = [
    ("round / reference", ("ratios", "round_over_reference")),
    ("train / reference", ("ratios", "train_over_reference")),
    ("eval / reference", ("ratios", "eval_over_reference")),
    ("overhead (s)", ("fedactors", "overhead_seconds")),
    ("first round / steady", ("fedactors", "first_over_steady")),
    ("start-up (s)", ("fedactors", "startup_seconds")),
    ("start-up / Flower", ("ratios", "startup_over_flower")),
    ("overhead / Flower", ("ratios", "overhead_over_flower")),
    ("peak PSS / Flower", ("ratios", "peak_pss_over_flower")),
    ("steady round / Flower", ("ratios", "steady_round_over_flower")),
]


def print_repeats(passes: list[dict]) -> dict:
    """The goal figures of every pass, and their medians (returned)."""
    print(f"\n{len(passes)} interleaved passes: per-pass figures and their median")
    print(f"  {'':<24}" + "".join(f"{f'pass {i + 1}':>10}" for i in range(len(passes))) + f"{'median':>10}")
    medians = {}
    for name, (part, key) in REPEATED:
        values = [p.get(part, {}).get(key) for p in passes]
        if all(v is None for v in values):
            continue
        medians[key] = median(values)
        print(f"  {name:<24}" + "".join(f"{fmt(v):>10}" for v in values) + f"{fmt(medians[key]):>10}")
    return medians


def one_pass(args: argparse.Namespace, number: int, probe: bool) -> dict:
    """fedactors, the reference and (with --peer) Flower, once each; the summary of their figures.

    Odd passes run fedactors before the reference, even passes after it, so that a drift in
    the machine's speed over a pass (it is shared) does not always favour the same one; Flower
    comes last. With --workdir each pass gets its own pass-N directory: `fedactors run` refuses
    an output directory (and a run id in its store) that an earlier pass has used."""
    procs = args.hosts or min(os.cpu_count() or 1, args.clients)

    def fedactors() -> tuple[dict, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
            workdir = args.workdir / f"pass-{number}" if args.workdir else Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            result = run_fedactors(args, workdir)
            return result, np.load(workdir / "fedactors-run" / "weights.npy")

    def reference() -> tuple[dict, np.ndarray]:
        result = run_reference(args, procs)
        return result, result.pop("final_weights")

    order = [fedactors, reference] if number % 2 else [reference, fedactors]
    results = {system.__name__: system() for system in order}
    fa, weights_fa = results["fedactors"]
    ref, weights_ref = results["reference"]
    fl = run_flower(args) if args.peer == "flower" else None
    probe_result = None
    if probe:
        cmd = [sys.executable, __file__, "--probe-startup", "--clients", str(args.clients), "--partition", args.partition]
        cmd += (["--hosts", str(args.hosts)] if args.hosts else []) + (["--data-dir", args.data_dir] if args.data_dir else [])
        warm_page_cache(sys.executable, FEDACTORS_IMPORTS)
        done = subprocess.run(cmd, capture_output=True, text=True)
        probe_result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {"error": done.stderr[-2000:]}

    f_round, r_round = steady(fa["rounds"], "round_seconds"), steady(ref["rounds"], "round_seconds")
    f_wall = steady(fa["rounds"], "wall_seconds")
    f_first, f_steady = fa["rounds"][0]["round_seconds"], f_round
    summary = {
        "config": {k: getattr(args, k) for k in ("clients", "frac", "epochs", "batch_size", "partition", "lr", "seed",
                                                 "rounds", "hosts")},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "order": [system.__name__ for system in order] + (["flower"] if args.peer == "flower" else []),
        "fedactors": {
            "round_seconds": f_round, "wall_seconds": f_wall,
            "train_seconds": steady(fa["rounds"], "train_seconds"),
            "gather_seconds": steady(fa["rounds"], "gather_seconds"),
            "aggregate_seconds": steady(fa["rounds"], "aggregate_seconds"),
            "eval_seconds": steady(fa["rounds"], "eval_seconds"),
            "checkpoint_seconds": steady(fa["rounds"], "checkpoint_seconds"),
            "overhead_seconds": steady(fa["rounds"], "overhead_seconds"),
            "first_round_seconds": f_first,
            "first_round_train_seconds": fa["rounds"][0]["train_seconds"],
            "first_round_eval_seconds": fa["rounds"][0]["eval_seconds"],
            "first_over_steady": ratio(f_first, f_steady),
            **{k: fa[k] for k in ("command", "startup_seconds", "startup_seconds_run_json", "to_banner_seconds",
                                  "to_hosts_ready_seconds", "first_round_end_seconds", "after_last_round_seconds",
                                  "command_seconds", "peak_pss_mib", "peak_rss_mib", "pss_source", "peak_processes",
                                  "memory_samples", "pss_samples", "sampler_cpu_seconds", "peak_pss_breakdown_mib",
                                  "load_before", "load_after", "warm_seconds")},
            "rounds": fa["rounds"],
        },
        "reference": {
            "round_seconds": r_round,
            "train_seconds": steady(ref["rounds"], "train_seconds"),
            "imbalance_seconds": steady(ref["rounds"], "imbalance_seconds"),
            "gather_seconds": steady(ref["rounds"], "gather_seconds"),
            "aggregate_seconds": steady(ref["rounds"], "aggregate_seconds"),
            "eval_seconds": steady(ref["rounds"], "eval_seconds"),
            "overhead_seconds": steady(ref["rounds"], "overhead_seconds"),
            **{k: v for k, v in ref.items() if k != "rounds"},
            "rounds": ref["rounds"],
        },
        "ratios": {
            "round_over_reference": ratio(f_round, r_round),
            "wall_with_checkpoint_over_reference": ratio(f_wall, r_round),
            "train_over_reference": ratio(steady(fa["rounds"], "train_seconds"), steady(ref["rounds"], "train_seconds")),
            "eval_over_reference": ratio(steady(fa["rounds"], "eval_seconds"), steady(ref["rounds"], "eval_seconds")),
        },
        "agreement": {
            "accuracy_fedactors": [r["accuracy"] for r in fa["rounds"]],
            "accuracy_reference": [r["accuracy"] for r in ref["rounds"]],
            "final_weights_max_abs_diff": float(np.max(np.abs(weights_fa - weights_ref))),
        },
    }
    if probe_result:
        summary["startup_probe"] = probe_result
    if fl:
        summary["flower"] = fl
        fl_steady_round = steady(fl["rounds"], "round_seconds")
        summary["ratios"].update({
            # Flower's round 1 "starts" while its actors are still being created; its training
            # starts at the first client call. fedactors' hosts are up before round 1 starts.
            "startup_over_flower": ratio(fa["startup_seconds"], fl["first_training_start_seconds"]),
            "overhead_over_flower": ratio(summary["fedactors"]["overhead_seconds"], steady(fl["rounds"], "overhead_seconds")),
            "first_round_over_flower": ratio(f_first, fl["rounds"][0]["round_seconds"]),
            "first_round_end_over_flower": ratio(fa["first_round_end_seconds"], fl["first_round_end_seconds"]),
            "steady_round_over_flower": ratio(f_round, fl_steady_round),
            "peak_pss_over_flower": ratio(fa["peak_pss_mib"], fl["peak_pss_mib"]),
            "peak_rss_over_flower": ratio(fa["peak_rss_mib"], fl["peak_rss_mib"]),
        })

    return summary


def print_pass(summary: dict) -> None:
    """Per-round tables, medians and one-off figures of one pass."""
    fa, ref, fl = summary["fedactors"], summary["reference"], summary.get("flower")
    probe = summary.get("startup_probe")
    procs = ref["processes"]
    keys_fa = ["round_seconds", "wall_seconds", "train_seconds", "gather_seconds", "aggregate_seconds",
               "eval_seconds", "checkpoint_seconds", "overhead_seconds"]
    print(f"fedactors: {fa['command']}")
    print_rounds("fedactors (round = round_seconds, no checkpoint; wall = line to line, with it)", fa["rounds"], keys_fa)
    print_rounds(f"framework-free reference ({procs} plain processes, 1 torch thread each)", ref["rounds"],
                 ["round_seconds", "train_seconds", "imbalance_seconds", "gather_seconds", "aggregate_seconds",
                  "eval_seconds", "overhead_seconds"])
    if fl:
        print_rounds(f"Flower {fl.get('flwr_version')} simulation ({fl.get('actors')} actors)", fl["rounds"],
                     ["round_seconds", "train_seconds", "gather_seconds", "aggregate_seconds", "eval_seconds",
                      "overhead_seconds"])

    s, rs = summary["fedactors"], summary["reference"]
    print("\nmedians of rounds 2+ and one-off figures")
    rows = [
        ("round time (s)", s["round_seconds"], rs["round_seconds"]),
        ("  with checkpoint, line to line (s)", s["wall_seconds"], None),
        ("training, slowest host (s)", s["train_seconds"], rs["train_seconds"]),
        ("gathering beyond training (s)", s["gather_seconds"], rs["gather_seconds"]),
        ("averaging (s)", s["aggregate_seconds"], rs["aggregate_seconds"]),
        ("evaluation (s)", s["eval_seconds"], rs["eval_seconds"]),
        ("checkpoint (s)", s["checkpoint_seconds"], None),
        ("overhead = round - train - eval (s)", s["overhead_seconds"], rs["overhead_seconds"]),
        ("first round (s)", s["first_round_seconds"], rs["rounds"][0]["round_seconds"]),
        ("first round / steady", s["first_over_steady"], ratio(rs["rounds"][0]["round_seconds"], rs["round_seconds"])),
        ("start-up: command -> round 1 start (s)", s["startup_seconds"], rs["startup_seconds"]),
        ("  (Flower: -> first client's training)", None, None),
        ("command -> round 1 end (s)", s["first_round_end_seconds"], None),
        ("peak PSS of the tree (MiB)", s["peak_pss_mib"], rs["peak_pss_mib"]),
        ("peak RSS of the tree (MiB)", s["peak_rss_mib"], rs["peak_rss_mib"]),
    ]
    fl_rows = {}
    if fl:
        fl_rows = {
            "round time (s)": steady(fl["rounds"], "round_seconds"),
            "training, slowest host (s)": steady(fl["rounds"], "train_seconds"),
            "gathering beyond training (s)": steady(fl["rounds"], "gather_seconds"),
            "averaging (s)": steady(fl["rounds"], "aggregate_seconds"),
            "evaluation (s)": steady(fl["rounds"], "eval_seconds"),
            "overhead = round - train - eval (s)": steady(fl["rounds"], "overhead_seconds"),
            "first round (s)": fl["rounds"][0]["round_seconds"],
            "first round / steady": ratio(fl["rounds"][0]["round_seconds"], steady(fl["rounds"], "round_seconds")),
            "start-up: command -> round 1 start (s)": fl["first_training_start_seconds"],
            "command -> round 1 end (s)": fl["first_round_end_seconds"],
            "peak PSS of the tree (MiB)": fl["peak_pss_mib"],
            "peak RSS of the tree (MiB)": fl["peak_rss_mib"],
        }
    head = f"  {'':<40}{'fedactors':>11}{'reference':>11}{'f/ref':>8}"
    if fl:
        head += f"{'Flower':>11}{'f/Flower':>10}"
    print(head)
    for name, a, b in rows:
        line = f"  {name:<40}{fmt(a):>11}{fmt(b):>11}{fmt(None if '/' in name else ratio(a, b)):>8}"
        if fl:
            c = fl_rows.get(name)
            line += f"{fmt(c):>11}{fmt(None if '/' in name else ratio(a, c)):>10}"
        print(line)
    print(f"peak PSS by process, fedactors (MiB): {json.dumps(s['peak_pss_breakdown_mib'])}")
    if fl:
        print(f"peak PSS by process, Flower (MiB): {json.dumps(fl['peak_pss_breakdown_mib'])}")
    print(f"\nfedactors start-up: banner (CLI imports, embedded Redis) at {fmt(s['to_banner_seconds'])} s, "
          f"hosts ready (data, ray.init, puts, actors with torch) at {fmt(s['to_hosts_ready_seconds'])} s, "
          f"round 1 starts at {fmt(s['startup_seconds'])} s; after the last round {fmt(s['after_last_round_seconds'])} s")
    if probe:
        print("fedactors start-up, step by step in a fresh process (s): "
              + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in probe.items()))
    if fl:
        print("Flower start-up (s from command): "
              + ", ".join(f"{k} {v:.2f}" for k, v in fl.get("startup_breakdown", {}).items() if v is not None))
    print(f"accuracy fedactors {summary['agreement']['accuracy_fedactors']}, reference "
          f"{summary['agreement']['accuracy_reference']}; final weights differ by at most "
          f"{summary['agreement']['final_weights_max_abs_diff']:.3g}")
    print(f"load average before/after: fedactors {s['load_before']:.2f}/{s['load_after']:.2f}, reference "
          f"{rs['load_before']:.2f}/{rs['load_after']:.2f}" + (f", Flower {fl['load_before']:.2f}/{fl['load_after']:.2f}" if fl else ""))
    print(f"page-cache warm-up imports before each (s): fedactors {s['warm_seconds']:.2f}, reference {rs['warm_seconds']:.2f}"
          + (f", Flower {fl['warm_seconds']:.2f}" if fl else ""))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
