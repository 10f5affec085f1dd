"""Where a FedAvg round's time goes in fedactors, against a framework-free reference run in the same invocation.

Runs the canonical setup (K=100, C=0.1, E=5, B=10, non-IID, lr 0.1) through `fedactors run`
exactly as a user types it (a subprocess, embedded Redis checkpoints: the defaults), and
splits each round into training (slowest host), gathering, averaging, evaluation,
checkpointing and overhead = round time - slowest host's training - evaluation. Also:
command start to the first round's start, first round against steady rounds. Then the same
rounds, same clients, partition, seeds and model, as two plain processes with one torch
thread each (data in memory before they fork; half the sampled clients and half the test
set each; NumPy average in the parent): the reference every ratio is taken against. `--peer flower` also runs the workload on Flower's Ray simulation
(bench/peers/flower_round.py, in bench/peers/.venv-flower) and compares. Right before each
system is timed, its Python imports torch and Ray once in a throw-away process, so each starts
with its libraries in the page cache (see _util.warm_page_cache: this machine evicts them).

Memory is measured in runs of their own, after the timed ones: each system again for
--memory-rounds rounds (default 2: start-up, a first and a steady round with their
evaluations), with the peak memory (PSS and RSS) of its whole process tree sampled
(_util.TreeMemory: for fedactors the CLI, the embedded Redis and every Ray process). The
sampler reads every process's page tables and costs 2-5 s of CPU a run, more for a tree of
more processes, so it would tilt the timed runs against the system with the most processes.

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
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _systems import FEDACTORS_IMPORTS, probe_startup, run_fedactors, run_flower, run_reference  # noqa: E402
from _util import FIGURES, median, ratio, warm_page_cache  # noqa: E402

# Every Ray started here (fedactors' and Flower's) advertises 127.0.0.1: a one-machine benchmark
# has no reason to use the network interface.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

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
    parser.add_argument("--memory-rounds", type=int, default=2, help="rounds of each system's memory run (after the timed runs)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    args = parser.parse_args()
    if args.probe_startup:
        print(json.dumps(probe_startup(args)))
        return
    if args.rounds < 2:
        parser.error("--rounds must be >= 2: rounds 2+ are the steady state")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.memory_rounds < 1:
        parser.error("--memory-rounds must be >= 1")

    passes = []
    timed = argparse.Namespace(**{**vars(args), "memory": False})
    for i in range(args.repeat):
        if args.repeat > 1:
            print(f"pass {i + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
        passes.append(one_pass(timed, i + 1, probe=not args.no_probe and i == args.repeat - 1))
    memory = None
    if not args.no_memory:
        print("memory runs ...", file=sys.stderr, flush=True)
        memory = memory_pass(argparse.Namespace(**{**vars(args), "memory": True, "rounds": args.memory_rounds}))
    summary = passes[-1]
    print_pass(summary)
    if memory:
        print_memory(memory)
    if args.repeat > 1:
        summary = {"passes": passes, "ratios": print_repeats(passes), "repeat": args.repeat}
    if memory:
        summary["memory"] = memory
        summary["ratios"].update(memory["ratios"])
    print(json.dumps(summary))


def memory_pass(args: argparse.Namespace) -> dict:
    """Each system once more for args.rounds rounds, with its process tree's memory sampled."""
    systems = {"fedactors": lambda: run_fedactors_in(args, "memory")[0],
               "reference": lambda: run_reference(args, reference_processes(args))}
    if args.peer == "flower":
        systems["flower"] = lambda: run_flower(args)
    result = {"rounds": args.rounds}
    for name, run in systems.items():
        figures = run()
        result[name] = {key: figures[key] for key in FIGURES}
    fa, fl = result["fedactors"], result.get("flower")
    result["ratios"] = {
        "peak_pss_over_reference": ratio(fa["peak_pss_mib"], result["reference"]["peak_pss_mib"]),
        "peak_pss_over_flower": ratio(fa["peak_pss_mib"], fl["peak_pss_mib"]) if fl else None,
        "peak_rss_over_flower": ratio(fa["peak_rss_mib"], fl["peak_rss_mib"]) if fl else None,
    }
    return result


def print_memory(memory: dict) -> None:
    """Peak memory of each system's process tree, from the memory runs."""
    names = [n for n in ("fedactors", "reference", "flower") if n in memory]
    print(f"\npeak memory of the whole process tree, MiB (memory runs of {memory['rounds']} rounds, sampled at 2 Hz)")
    print(f"  {'':<10}" + "".join(f"{n:>11}" for n in names) + f"{'f/Flower':>10}")
    for key, label in (("peak_pss_mib", "PSS"), ("peak_rss_mib", "RSS")):
        values = [memory[n][key] for n in names]
        flower = memory["flower"][key] if "flower" in memory else None
        print(f"  {label:<10}" + "".join(f"{fmt(v, digits=0):>11}" for v in values) + f"{fmt(ratio(values[0], flower)):>10}")
    for n in names:
        print(f"  {n} by process: {json.dumps(memory[n]['peak_pss_breakdown_mib'])}; sampler CPU "
              f"{fmt(memory[n]['sampler_cpu_seconds'], digits=2)} s")


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


def reference_processes(args: argparse.Namespace) -> int:
    """As many plain processes as fedactors has hosts: --hosts, else one per CPU."""
    return args.hosts or min(os.cpu_count() or 1, args.clients)


def run_fedactors_in(args: argparse.Namespace, name: str) -> tuple[dict, np.ndarray]:
    """run_fedactors in DIR/name under --workdir (a run directory is never reused), else in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
        workdir = args.workdir / name if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_fedactors(args, workdir)
        return result, np.load(workdir / "fedactors-run" / "weights.npy")


def one_pass(args: argparse.Namespace, number: int, probe: bool) -> dict:
    """fedactors, the reference and (with --peer) Flower, once each; the summary of their figures.

    Odd passes run fedactors before the reference, even passes after it, so that a drift in
    the machine's speed over a pass (it is shared) does not always favour the same one; Flower
    comes last. With --workdir each pass gets its own pass-N directory: `fedactors run` refuses
    an output directory (and a run id in its store) that an earlier pass has used."""
    procs = reference_processes(args)

    def fedactors() -> tuple[dict, np.ndarray]:
        return run_fedactors_in(args, f"pass-{number}")

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
                                  "command_seconds",
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
