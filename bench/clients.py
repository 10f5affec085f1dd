"""Clients per second and peak memory against m, many tiny clients a round: fedactors, the floor, Flower.

Cross-device FL samples hundreds of clients a round that hold a few examples each, so what a
framework spends per client, beyond training it, decides the speed (issue 18). Workloads
(IID partition of MNIST's 60,000 training images, the paper's CNN, E=1, B=10, lr 0.1, seed 0):

    m60     K=6,000 clients of 10 examples, C=0.01: m=60 a round     (default)
    m600    K=60,000 clients of 1 example, C=0.01: m=600 a round     (default)
    m6000   K=60,000 clients of 1 example, C=0.1: m=6,000 a round    (only when named)

Systems, each run for --rounds rounds (round 1 is warm-up; figures are medians of rounds 2+):

  fedactors  `fedactors run ... --eval-every 100000 --json` as a subprocess, as a user runs it;
             its "round" events give wait_seconds (dispatch -> the last update's arrival at the
             coordinator) and train_seconds (the busiest host's time inside ClientHost.train).
             Both modes: --host-sums (each host returns one exact partial sum of its clients a
             round, the default) and --no-host-sums (each client's weights go to the coordinator).
  floor      framework-free, in this invocation: --processes (2) spawned processes with one torch
             thread each, holding the data of the clients they will train (normalised as
             fedactors.data does, fedactors.data.partition's IID split). Per round each gets the global
             weights once over a pipe and, for each of its half of the sampled clients
             (fedactors.seeding.sample_clients), loads them into its fedactors.model.FlatModel,
             trains (fedactors.runtime.client.local_update) and adds n_k * weights to a float32 sum; one
             sum per process goes back over the pipe. wait = dispatch -> both sums received.
  flower     (--peer flower) Flower 1.42's Ray simulation, bench/peers/flower_clients.py in
             bench/peers/.venv-flower (bash bench/peers/setup_flower.sh): the same clients, the
             same client work; wait = the round's configure_train -> aggregate_train (its Grid
             polls for replies every 0.1 s; the JSON also has the time to the last client's end).

Figures: clients/s = m / wait. host ms per client = P x wait / m, P the system's training
processes (fedactors' hosts, the floor's processes, Flower's actors): the time a core spends per
client. Of that, "training" is P x (the busiest process's summed per-client training time) / m,
the rest is everything else (dispatch, serialisation, transfer, gathering). Peak memory: PSS
(shared pages split among their mappers) and RSS of each system's whole process tree, sampled
twice a second with a PSS sweep at least every second (_util.TreeMemory, same run as the
timing: the sampler's CPU time is reported), and of its coordinating process: fedactors'
ray::CoordinatorActor, the floor's parent (this script), Flower's driver (it runs the
ServerApp); VmHWM is that process's exact peak RSS, from the kernel.

    export FEDACTORS_DATA=/work/shared/mnist
    .venv/bin/python bench/clients.py                             # m60 and m600, 4 rounds
    .venv/bin/python bench/clients.py --workloads m60 --rounds 2  # quick check
    .venv/bin/python bench/clients.py --peer flower               # and Flower (set up first)
    .venv/bin/python bench/clients.py --workloads m60,m600,m6000 --out-dir /tmp/clients-runs
    .venv/bin/python bench/clients.py --workloads m6000 --modes host-sums   # m = 6,000 without per-client buffers

Prints the CPU, a table per workload and where the time per client goes, then one JSON object
with every figure and the same-run ratios as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import MIB, TreeMemory, _label, median, ratio, warm_page_cache  # noqa: E402

BENCH = Path(__file__).resolve().parent
FEDACTORS = Path(sys.executable).parent / "fedactors"
FLOWER_PYTHON = BENCH / "peers" / ".venv-flower" / "bin" / "python"
FLOWER_SETUP = "bash bench/peers/setup_flower.sh"
FEDACTORS_IMPORTS = "torch, ray, redis, fedactors.cli, fedactors.runtime.client"  # as bench/_systems.py warms them
WEIGHTS_BYTES = 1_663_370 * 4

WORKLOADS = {  # name: (K, C); n/K examples per client
    "m60": (6_000, 0.01),
    "m600": (60_000, 0.01),
    "m6000": (60_000, 0.1),
}
DEFAULT_WORKLOADS = "m60,m600"
TRAINING = {"epochs": 1, "batch_size": 10, "lr": 0.1}


def clients_per_round(clients: int, frac: float) -> int:
    """m = max(round(C K), 1), halves up: fedactors' RunConfig.clients_per_round."""
    return max(int(np.floor(frac * clients + 0.5)), 1)


# --- memory ---------------------------------------------------------------------------------------


class ProcessMemory(TreeMemory):
    """TreeMemory that also keeps every process's own peak: its PSS at the sweeps, and VmHWM.

    VmHWM (/proc/PID/status) is the kernel's record of the process's highest RSS, exact
    whenever it was read before the process exited. A PSS sweep runs at least every
    `pss_interval` seconds (1 here, against TreeMemory's 5: a coordinator's peak can be short).
    """

    def __init__(self, pid: int | None = None, *, pss_interval: float = 1.0, **kwargs) -> None:
        super().__init__(pid, pss_interval=pss_interval, **kwargs)
        self.processes: dict[int, dict] = {}

    def _pss(self, proc) -> int:
        value = super()._pss(proc)
        entry = self.processes.setdefault(proc.pid, {"label": "", "peak_pss": 0, "vm_hwm": 0})
        label = _label(proc)
        if not entry["label"] or label != "ray::IDLE":  # a Ray worker is ray::IDLE until it becomes an actor
            entry["label"] = label
        entry["peak_pss"] = max(entry["peak_pss"], value)
        entry["vm_hwm"] = max(entry["vm_hwm"], _vm_hwm(proc.pid))
        return value

    def process(self, *, pid: int | None = None, label: str | None = None) -> dict | None:
        """{label, pid, peak_pss_mib, vm_hwm_mib} of the process `pid`, or of the largest one labelled `label`."""
        found = [(p, e) for p, e in self.processes.items() if p == pid or (label and e["label"] == label)]
        if not found:
            return None
        p, e = max(found, key=lambda pe: pe[1]["peak_pss"])
        return {"label": e["label"], "pid": p, "peak_pss_mib": e["peak_pss"] / MIB, "vm_hwm_mib": e["vm_hwm"] / MIB}


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- what is common to the three systems --------------------------------------------------------


def summarise(system: str, rounds: list[dict], processes: int, m: int) -> dict:
    """Medians of rounds 2+ and the per-client figures derived from them."""
    steady = [r for r in rounds if r["round"] >= 2] or rounds
    wait = median([r["wait_seconds"] for r in steady])
    train = median([r.get("train_seconds") for r in steady])
    return {
        "system": system,
        "processes": processes,
        "m": m,
        "timed_rounds": [r["round"] for r in steady],
        "wait_seconds": wait,
        "train_seconds": train,
        "clients_per_second": ratio(m, wait),
        "host_ms_per_client": None if wait is None else 1000 * processes * wait / m,
        "train_ms_per_client": None if train is None else 1000 * processes * train / m,
        "outside_ms_per_client": None if wait is None or train is None else 1000 * processes * (wait - train) / m,
        "rounds": rounds,
    }


def with_memory(result: dict, mem: ProcessMemory, coordinator: dict | None) -> dict:
    figures = mem.figures()
    result.update({k: figures[k] for k in ("peak_pss_mib", "peak_rss_mib", "sampler_cpu_seconds",
                                             "peak_pss_breakdown_mib")})
    result["coordinator"] = coordinator
    return result


def failed(system: str, why: str) -> dict:
    return {"system": system, "error": why}


# --- fedactors --------------------------------------------------------------------------------------


SUMMATION_MODES = [("fedactors --host-sums", ["--host-sums"]), ("fedactors --no-host-sums", ["--no-host-sums"])]


def run_fedactors(system: str, extra: list[str], clients: int, frac: float, args: argparse.Namespace,
                  out_root: Path) -> dict:
    """`fedactors run --json` as a subprocess: its round events, and its process tree's memory."""
    m = clients_per_round(clients, frac)
    run_dir = Path(tempfile.mkdtemp(prefix=f"fedactors-k{clients}-m{m}-", dir=out_root))
    cmd = [
        str(FEDACTORS), "run", "--task", "mnist-cnn", "--partition", "iid", "--clients", str(clients),
        "--frac", str(frac), "--epochs", str(TRAINING["epochs"]), "--batch-size", str(TRAINING["batch_size"]),
        "--lr", str(TRAINING["lr"]), "--rounds", str(args.rounds), "--eval-every", "100000",
        "--seed", str(args.seed), "--out", str(run_dir / "run"), "--json", *extra,
    ]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    warm_page_cache(sys.executable, FEDACTORS_IMPORTS)
    events = []
    with open(run_dir / "stderr.log", "w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=run_dir,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        watchdog = Watchdog(proc, args.timeout)
        with ProcessMemory(proc.pid, enabled=args.memory) as mem:
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # not an event (a library's print)
                if isinstance(event, dict) and "event" in event:
                    events.append(event)
            proc.wait()
        watchdog.cancel()
    command = " ".join(cmd)
    if proc.returncode != 0:
        why = "timed out" if watchdog.fired else f"exit status {proc.returncode}"
        tail = (run_dir / "stderr.log").read_text()[-1500:].strip()
        return {**failed(system, f"{why}; stderr ends: {tail}"), "command": command}
    start = next(e for e in events if e["event"] == "start")
    rounds = [{k: e.get(k) for k in ("round", "num_updates", "wait_seconds", "train_seconds", "aggregate_seconds",
                                     "round_seconds", "eval_seconds", "checkpoint_seconds")}
              for e in events if e["event"] == "round"]
    result = summarise(system, rounds, len(start["hosts"]), m)
    result["command"] = command
    result["warnings"] = [e["message"] for e in events if e["event"] == "warning"]
    return with_memory(result, mem, mem.process(label="ray::CoordinatorActor"))


class Watchdog:
    """Ends a subprocess's session (it and the Ray cluster it started) after `seconds`."""

    def __init__(self, proc: subprocess.Popen, seconds: float) -> None:
        self.proc, self.fired = proc, False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        self.timer.cancel()


# --- the floor --------------------------------------------------------------------------------------


def floor_worker(conn, data_dir: str, clients: int, seed: int, my_clients: list[int]) -> None:
    """One plain process: its clients' data as tensors, a FlatModel, one torch thread; a sum per round."""
    import torch

    from fedactors.runtime.client import local_update
    from fedactors.data import load_mnist_raw, normalise
    from fedactors.model import FlatModel
    from fedactors.data.partition import partition
    from fedactors.seeding import Purpose, generator, torch_seed

    torch.set_num_threads(1)
    raw = load_mnist_raw(Path(data_dir), download=False)
    indices = partition(raw.y_train, clients, "iid", seed)
    data = {}
    for cid in my_clients:
        images = np.empty((len(indices[cid]), 1, 28, 28), np.float32)  # canonical strides, as the hosts' arrays
        images[...] = normalise(raw.x_train[indices[cid]])
        data[cid] = (torch.from_numpy(images), torch.from_numpy(raw.y_train[indices[cid]].astype(np.int64)))
    del raw, indices
    model = FlatModel()
    weights = np.empty(model.size, np.float32)
    total = torch.zeros(model.size, dtype=torch.float32)
    conn.send(FlatModel(init_seed=torch_seed(seed)).get_weights())  # round 0's weights, as fedactors' hosts make them
    while True:
        msg = conn.recv()
        if msg is None:
            return
        round_idx, cids = msg
        conn.recv_bytes_into(weights)  # the global weights, once a round
        t0 = time.perf_counter()
        total.zero_()
        examples = 0
        for cid in cids:
            images, labels = data[cid]
            model.set_weights(weights)
            local_update(model, images, labels, epochs=TRAINING["epochs"], batch_size=TRAINING["batch_size"],
                         lr=TRAINING["lr"], rng=generator(Purpose.SHUFFLE, seed, round_idx, cid))
            total.add_(model.state, alpha=len(labels))
            examples += len(labels)
        conn.send((time.perf_counter() - t0, examples))
        conn.send_bytes(total.numpy())


def run_floor(clients: int, frac: float, args: argparse.Namespace) -> dict:
    """The floor, in this process: `args.processes` spawned workers, the sampled clients in halves."""
    from fedactors.data import resolve_data_dir
    from fedactors.seeding import sample_clients

    m = clients_per_round(clients, frac)
    procs = args.processes
    plans = {r: np.array_split(sample_clients(args.seed, r, clients, m), procs) for r in range(1, args.rounds + 1)}
    warm_page_cache(sys.executable, "torch")
    ctx = mp.get_context("spawn")
    data_dir = str(resolve_data_dir(args.data_dir))
    rounds = []
    with ProcessMemory(enabled=args.memory) as mem:
        conns, workers = [], []
        for p in range(procs):
            mine = sorted({int(c) for plan in plans.values() for c in plan[p]})
            parent, child = ctx.Pipe()
            w = ctx.Process(target=floor_worker, args=(child, data_dir, clients, args.seed, mine), daemon=True)
            w.start()
            conns.append(parent)
            workers.append(w)
        initial = [conn.recv() for conn in conns]  # each worker makes them; they are the same
        weights = initial[0]
        sums = [np.empty_like(weights) for _ in range(procs)]
        for r, plan in plans.items():
            t0 = time.perf_counter()
            for conn, cids in zip(conns, plan, strict=True):
                conn.send((r, cids.tolist()))
                conn.send_bytes(weights)
            seconds, examples = [], 0
            for conn, s in zip(conns, sums, strict=True):
                busy, n = conn.recv()
                conn.recv_bytes_into(s)
                seconds.append(busy)
                examples += n
            t1 = time.perf_counter()
            weights = np.sum(sums, axis=0, dtype=np.float32) / np.float32(examples)
            rounds.append({"round": r, "num_updates": m, "wait_seconds": t1 - t0, "train_seconds": max(seconds),
                           "aggregate_seconds": time.perf_counter() - t1})
        for conn in conns:
            conn.send(None)
        for w in workers:
            w.join()
    result = summarise("floor", rounds, procs, m)
    return with_memory(result, mem, mem.process(pid=os.getpid()))


# --- Flower ------------------------------------------------------------------------------------------


def run_flower(clients: int, frac: float, args: argparse.Namespace) -> dict:
    """bench/peers/flower_clients.py in Flower's venv; its last stdout line is its figures."""
    from fedactors.data import resolve_data_dir

    m = clients_per_round(clients, frac)
    if not FLOWER_PYTHON.exists():
        return failed("flower", f"not set up: run {FLOWER_SETUP}")
    # Flower's driver holds the round's messages and replies until the last reply is in: 8.3 GiB
    # PSS at m=600 here, 2.2 weights buffers a sampled client. A round that would not fit is skipped.
    need, available = 2.2 * m * WEIGHTS_BYTES, _available_bytes()
    if available and need > 0.8 * available:
        return failed("flower", f"skipped: its driver would hold ~{need / 2**30:.0f} GiB (2.2 x {WEIGHTS_BYTES / MIB:.1f} MiB "
                                f"for each of the m={m} clients), more than the {available / 2**30:.0f} GiB available")
    cmd = [
        str(FLOWER_PYTHON), str(BENCH / "peers" / "flower_clients.py"), "--clients", str(clients), "--frac", str(frac),
        "--epochs", str(TRAINING["epochs"]), "--batch-size", str(TRAINING["batch_size"]), "--lr", str(TRAINING["lr"]),
        "--seed", str(args.seed), "--rounds", str(args.rounds), "--actors", str(args.processes),
        "--data-dir", str(resolve_data_dir(args.data_dir)),
    ] + ([] if args.memory else ["--no-memory"])
    warm_page_cache(str(FLOWER_PYTHON), "torch, ray, flwr")
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
        watchdog = Watchdog(proc, args.timeout)
        stdout, _ = proc.communicate()
        watchdog.cancel()
        stderr.seek(0)
        err = stderr.read()
    lines = stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = "timed out" if watchdog.fired else f"exit status {proc.returncode}"
        return {**failed("flower", f"{why}; output ends: {(stdout + err)[-1500:].strip()}"), "command": " ".join(cmd)}
    out = json.loads(lines[-1])
    result = summarise("flower", out["rounds"], out["processes"], m)
    steady = [r for r in out["rounds"] if r["round"] >= 2] or out["rounds"]
    last = median([r["last_result_seconds"] for r in steady])
    result.update({
        "command": " ".join(cmd), "flwr_version": out["flwr_version"], "sampling": out["sampling"],
        "last_result_seconds": last, "clients_per_second_to_last_result": ratio(m, last),
        "dispatch_seconds": median([r["dispatch_seconds"] for r in steady]),
        **{k: out.get(k) for k in ("peak_pss_mib", "peak_rss_mib", "sampler_cpu_seconds", "peak_pss_breakdown_mib",
                                   "coordinator", "startup_seconds")},
    })
    return result


def _available_bytes() -> int | None:
    try:
        import psutil

        return psutil.virtual_memory().available
    except Exception:  # noqa: BLE001 - no estimate: try anyway
        return None


# --- the machine and the report -----------------------------------------------------------------------


def cpu_info() -> dict:
    """The first processor's model name, family/model and whether it has AVX-512F, from /proc/cpuinfo."""
    info: dict = {"cores": os.cpu_count()}
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    info.update({"model_name": fields.get("model name"), "family": fields.get("cpu family"),
                 "model": fields.get("model"), "avx512f": "avx512f" in fields.get("flags", "").split()})
    return info


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_workload(name: str, workload: dict) -> None:
    k, m = workload["clients"], workload["m"]
    systems = workload["systems"]
    print(f"\n{name}: K={k:,} clients of {60_000 // k} example{'s' * (k < 60_000)}, m={m:,} a round; "
          f"medians of rounds 2+")
    print(f"  {'system':<26}{'K':>8}{'m':>7}{'clients/s':>11}{'host ms/client':>16}{'peak PSS MiB':>14}"
          f"{'RSS MiB':>9}{'coord PSS':>11}{'coord HWM':>11}")
    for s in systems:
        if "error" in s:
            print(f"  {s['system']:<26}{k:>8}{m:>7}  {s['error'][:300]}")
            continue
        coord = s.get("coordinator") or {}
        print(f"  {s['system']:<26}{k:>8}{m:>7}{fmt(s['clients_per_second']):>11}{fmt(s['host_ms_per_client'], 2):>16}"
              f"{fmt(s.get('peak_pss_mib'), 0):>14}{fmt(s.get('peak_rss_mib'), 0):>9}"
              f"{fmt(coord.get('peak_pss_mib'), 0):>11}{fmt(coord.get('vm_hwm_mib'), 0):>11}")
    print("  where the time per client goes (host ms per client = processes x seconds / m):")
    print(f"  {'':<26}{'procs':>6}{'wait s':>9}{'train s':>9}{'total':>9}{'training':>10}{'outside':>9}")
    for s in systems:
        if "error" in s:
            continue
        print(f"  {s['system']:<26}{s['processes']:>6}{fmt(s['wait_seconds'], 3):>9}{fmt(s['train_seconds'], 3):>9}"
              f"{fmt(s['host_ms_per_client'], 2):>9}{fmt(s['train_ms_per_client'], 2):>10}"
              f"{fmt(s['outside_ms_per_client'], 2):>9}")
    print("  (train s: the busiest process's summed time per client. fedactors: inside ClientHost, with host sums "
          "training + the exact add (it checks finiteness too), without them training + the copy of the weights; floor: "
          "training + float32 add; Flower: inside the ClientApp's train, weights in and the reply's ArrayRecord)")
    flower = next((s for s in systems if s["system"] == "flower" and "error" not in s), None)
    if flower:
        print(f"  Flower: to the last client's end {fmt(flower['last_result_seconds'], 3)} s "
              f"({fmt(flower['clients_per_second_to_last_result'])} clients/s), first client call after "
              f"{fmt(flower['dispatch_seconds'], 3)} s")
    for key, value in workload["ratios"].items():
        print(f"  clients/s {key}: {fmt(value, 3)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Workloads: " + ", ".join(f"{n} (K={k}, C={c})" for n, (k, c) in WORKLOADS.items()))
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                        help=f"comma-separated names from {', '.join(WORKLOADS)} (default {DEFAULT_WORKLOADS}; m6000 "
                             "only when named: 6,000 clients a round)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run; round 1 is warm-up (default 4)")
    parser.add_argument("--peer", choices=["flower"], default=None, help="also run Flower's Ray simulation")
    parser.add_argument("--modes", default="host-sums,no-host-sums",
                        help="fedactors' modes to run, comma-separated: host-sums, no-host-sums (default both)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where fedactors' run directories go (default: a temp dir)")
    parser.add_argument("--processes", type=int, default=2, help="the floor's processes and Flower's actors (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="MNIST directory; default $FEDACTORS_DATA")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one system's run may take (default 1800)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="do not sample memory (the sampler takes ~1-2%% of a core)")
    args = parser.parse_args()
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or not names:
        parser.error(f"unknown workload {unknown[0] if unknown else '(none)'}: choose from {', '.join(WORKLOADS)}")
    if args.rounds < 2:
        parser.error("--rounds must be >= 2: round 1 is warm-up")

    cpu = cpu_info()
    print(f"CPU: {cpu.get('model_name')} (family {cpu.get('family')}, model {cpu.get('model')}), "
          f"{'AVX-512F' if cpu.get('avx512f') else 'no AVX-512F'}, {cpu['cores']} cores; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("host-sums", "no-host-sums") for m in modes):
        parser.error(f"--modes takes host-sums and/or no-host-sums, got {args.modes!r}")
    variants = [(name, flags) for name, flags in SUMMATION_MODES if flags[0][2:] in modes]
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp:
        out_root = args.out_dir or Path(tmp)
        out_root.mkdir(parents=True, exist_ok=True)
        results = {}
        for name in names:
            clients, frac = WORKLOADS[name]
            systems = []
            for system, extra in variants:
                print(f"{name}: {system} ...", file=sys.stderr, flush=True)
                systems.append(run_fedactors(system, extra, clients, frac, args, out_root))
            print(f"{name}: floor ...", file=sys.stderr, flush=True)
            systems.append(run_floor(clients, frac, args))
            if args.peer == "flower":
                print(f"{name}: flower ...", file=sys.stderr, flush=True)
                systems.append(run_flower(clients, frac, args))
            speed = {s["system"]: s.get("clients_per_second") for s in systems}
            ratios = {}
            for system, _ in variants:
                ratios[f"{system} / floor"] = ratio(speed[system], speed["floor"])
                if args.peer == "flower":
                    ratios[f"{system} / flower"] = ratio(speed[system], speed.get("flower"))
            results[name] = {"clients": clients, "frac": frac, "m": clients_per_round(clients, frac),
                             "systems": systems, "ratios": ratios}
            print_workload(name, results[name])
    summary = {
        "benchmark": "clients", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu,
        "config": {"rounds": args.rounds, "seed": args.seed, "processes": args.processes, "partition": "iid",
                   **TRAINING, "memory": args.memory, "fedactors_modes": [name for name, _ in variants]},
        "load_after": os.getloadavg()[0],
        "workloads": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
