"""Issue 36's state store at scale: what a checkpoint writes, and what the coordinator holds, with K clients' state.

No training. Each client's state is S float32 (SCAFFOLD's control variate, "algorithm/c_i"), kept in a real
embedded redis-server (appendfsync always, as runs use it) in a temporary directory. R rounds of m clients are
driven as the coordinator drives fedactors.runtime.states.ClientStates: get() the round's clients' state (one read
from the store), put() each one's new state (its old one plus one, a real read-modify-write; its first two floats
name the client and the round, checked at every read), then checkpoint() -> RedisStore.save(..., clients=...) ->
saved(), every round (--checkpoint-every 1 and --keep 2, the run defaults). The model's weights, written with each
checkpoint, are S floats too (a control variate is the model's size). This is run at two K (--clients-small,
--clients), each in a fresh process, and reports per checkpoint the client blobs' bytes (HSTRLEN of what it
wrote), what the AOF grew by and the seconds of checkpoint() + save() + saved(); and the coordinator process's RSS
(VmRSS in /proc/self/status) from before round 1 to after round R, and its peak (VmHWM, reset before round 1).

The reference, measured in the same run: the WHOLE set of K states written in one checkpoint, as SCAFFOLD did
before (each client's c_i a state buffer of the checkpoint). It is measured at --whole-clients (1,000) and scaled
linearly to --clients: exactly so for bytes, by assumption for seconds (the output says which). The whole set at
K = 10,000 is 5.2 GB in the coordinator, twice that while it is encoded, and again in Redis.

A client has state once it has trained, so by default the store starts empty: after 20 rounds at K = 10,000 about
1,800 clients have state, and a round reads back fewer clients at K = 10,000 than at 1,000 (about 9 against 64 of
its 100; the coordinator holds what it reads while the round runs). --fill first gives every client a state (K/m unmeasured rounds, each client once), as the
issue has it; --full is the issue's setting: --fill and R = 100 (5.2 GB in Redis and about 10 GB of AOF writes at
K = 10,000; free memory and disk are checked first).

    .venv/bin/python bench/client_state.py [--rounds 20] [--clients 10000] [--full] [--dir DIR]

Prints a table, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from _util import cpu_name
import redis

from fedactors.errors import FedActorsError
from fedactors.runtime.states import ALGORITHM, ClientStates
from fedactors.seeding import sample_clients
from fedactors.store.checkpoint import STATE_LAYOUT, Checkpoint, RedisStore
from fedactors.store.embedded_redis import EmbeddedRedis

RUN = "bench-client-state"
FINGERPRINT = "0" * 64
KEEP = 2  # the run default (--keep)
NAME = ALGORITHM + "c_i"  # SCAFFOLD's control variate, as the coordinator names it
MIB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000, help="K of the main measurement (default 10,000)")
    parser.add_argument("--clients-small", type=int, default=1_000,
                        help="the smaller K the coordinator's memory is compared with (default 1,000)")
    parser.add_argument("--state-floats", type=int, default=131_072, help="S: float32 a client (default 0.5 MB)")
    parser.add_argument("--per-round", type=int, default=100, help="m: clients a round (default 100)")
    parser.add_argument("--rounds", type=int, default=None, help="R: measured rounds (default 20; --full: 100)")
    parser.add_argument("--fill", action="store_true",
                        help="give every client a state before the measured rounds (K/m rounds, not measured)")
    parser.add_argument("--full", action="store_true", help="the issue's setting: --fill and --rounds 100")
    parser.add_argument("--whole-clients", type=int, default=1_000,
                        help="K at which the whole-set reference is measured, scaled to --clients (default 1,000)")
    parser.add_argument("--whole-repeats", type=int, default=2, help="whole-set checkpoints timed (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary Redis directories go")
    args = parser.parse_args()
    args.rounds = args.rounds if args.rounds is not None else (100 if args.full else 20)
    args.fill = args.fill or args.full
    counts = (args.clients, args.clients_small, args.state_floats, args.per_round, args.rounds, args.whole_clients,
              args.whole_repeats)
    if min(counts) < 1 or args.per_round > min(args.clients, args.clients_small):
        parser.error("every count must be >= 1, and --per-round at most --clients-small and --clients")
    return args


def proc_kib(path: str, *fields: str) -> list[int]:
    """The named `fields` (kB lines) of a /proc file, in KiB."""
    with open(path) as f:
        lines = dict(line.split(":", 1) for line in f if ":" in line)
    return [int(lines[name].split()[0]) for name in fields]


def rss_mib() -> float:
    return proc_kib("/proc/self/status", "VmRSS")[0] / 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not let us."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def resources(args: argparse.Namespace, where: str) -> str | None:
    """Why this machine cannot hold the largest measurement (memory, disk), or None. Estimates with a 1.5x margin for
    the AOF rewrites' copy-on-write and the checkpoint being encoded."""
    blob = 4 * args.state_floats
    def stored(k: int) -> int:
        return k if args.fill else min(k, args.rounds * args.per_round)
    memory = max([(stored(k) + 3 * args.per_round) * blob for k in (args.clients, args.clients_small)]
                 + [4 * args.whole_clients * blob])
    disk = max([(stored(k) * args.fill + args.rounds * args.per_round) * blob
                for k in (args.clients, args.clients_small)] + [args.whole_repeats * args.whole_clients * blob])
    available = proc_kib("/proc/meminfo", "MemAvailable")[0] * 1024
    free = shutil.disk_usage(where).free
    if 1.5 * memory > available:
        return f"needs about {1.5 * memory / 1e9:.1f} GB of memory, {available / 1e9:.1f} GB is available"
    if 1.5 * disk > free:
        return f"needs about {1.5 * disk / 1e9:.1f} GB of disk in {where}, {free / 1e9:.1f} GB is free"
    return None


def new_state(client: int, round_idx: int, old: np.ndarray | None, base: np.ndarray) -> np.ndarray:
    """A client's state after round `round_idx`: its old one plus one (the base for a first one); [0], [1] name it."""
    state = old + np.float32(1) if old is not None else base.copy()
    state[0], state[1] = client, round_idx
    return state


class Server:
    """The embedded server, the store on it, and a plain client for what the store does not say (sizes, INFO)."""

    def __init__(self, tmp: Path) -> None:
        self.server = EmbeddedRedis(tmp / "redis").start()
        self.store = RedisStore(self.server.url)
        self.raw = redis.Redis.from_url(self.server.url)
        self.base = f"{self.store.prefix}run:{RUN}:"

    def aof(self) -> tuple[int, int]:
        """(the AOF's size, its size at its last rewrite): a rewrite between two calls changes the second."""
        info = self.raw.info("persistence")
        return int(info["aof_current_size"]), int(info["aof_base_size"])

    def appended(self, before: tuple[int, int]) -> int | None:
        """What the AOF grew by since `before`, or None if it was rewritten meanwhile (a background fork)."""
        size, base = self.aof()
        return size - before[0] if base == before[1] else None

    def sizes(self, key: str, fields: list[str]) -> int:
        """The bytes of `fields` of hash `key`, summed."""
        p = self.raw.pipeline(transaction=False)
        for name in fields:
            p.hstrlen(key, name)
        return sum(p.execute())

    def figures(self) -> dict:
        return {"redis_used_mib": int(self.raw.info("memory")["used_memory"]) / MIB,
                "redis_forks": int(self.raw.info("stats")["total_forks"]),
                "redis_version": self.raw.info("server")["redis_version"]}

    def close(self) -> None:
        self.raw.close()
        self.store.close()
        self.server.stop()


def per_checkpoint(clients: int, floats: int, per_round: int, rounds: int, fill: bool, seed: int,
                   where: str | None) -> dict:
    """The coordinator's rounds at K = `clients` (in a process of its own: its RSS is the coordinator's)."""
    rng = np.random.default_rng(seed)
    base, weights = rng.standard_normal((2, floats), dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=where, prefix="client-state-") as tmp:
        s = Server(Path(tmp))
        try:
            states = ClientStates()
            states.bind(s.store, RUN)

            def one_round(round_idx: int, ids: list[int]) -> dict:
                t0 = time.perf_counter()
                before = states.get(ids)  # as run_round: the round's clients' state, read once
                read_seconds = time.perf_counter() - t0
                for c in ids:
                    old = before[c].get(NAME)
                    if old is not None and (old[0], old[1]) != (c, states.stored[c]):
                        raise RuntimeError(f"client {c}'s state read back is not the one written")
                    states.put(c, {NAME: new_state(c, round_idx, old, base)})
                aof = s.aof()
                t0 = time.perf_counter()
                changed, manifest = states.checkpoint(round_idx)
                ckpt = Checkpoint(RUN, round_idx, weights, FINGERPRINT, {}, [],
                                  {"state_layout": STATE_LAYOUT, "clients": manifest})
                s.store.save(ckpt, keep=KEEP, clients=changed)
                states.saved(round_idx)
                seconds = time.perf_counter() - t0
                return {"seconds": seconds, "read_seconds": read_seconds, "read": sum(bool(b) for b in before.values()),
                        "client_bytes": s.sizes(s.base + "clients", [f"{c}@{round_idx}" for c in changed]),
                        "checkpoint_bytes": s.raw.strlen(f"{s.base}ckpt:{round_idx}"),
                        "aof_bytes": s.appended(aof)}

            round_idx = 0
            if fill:  # every client once, in a seeded order, before anything is measured
                for chunk in np.array_split(rng.permutation(clients), -(-clients // per_round)):
                    round_idx += 1
                    one_round(round_idx, sorted(chunk.tolist()))
            rss_before = rss_mib()
            exact_peak = reset_peak()
            rows, rss = [], []
            for _ in range(rounds):
                round_idx += 1
                rows.append(one_round(round_idx, sample_clients(seed, round_idx, clients, per_round).tolist()))
                rss.append(rss_mib())
            peak = proc_kib("/proc/self/status", "VmHWM")[0] / 1024 if exact_peak else max(rss)
            return {"clients": clients, "with_state": len(states), "rounds": rows, "rss_before_mib": rss_before,
                    "rss_mib": rss, "peak_rss_mib": peak, "peak_source": "VmHWM" if exact_peak else "samples",
                    **s.figures()}
        finally:
            s.close()


def whole_set(clients: int, floats: int, repeats: int, seed: int, where: str | None) -> dict:
    """The reference: every client's state a buffer of each checkpoint, as SCAFFOLD's c_i were before."""
    rng = np.random.default_rng(seed)
    base, weights = rng.standard_normal((2, floats), dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=where, prefix="client-state-whole-") as tmp:
        s = Server(Path(tmp))
        try:
            rss_before = rss_mib()
            exact_peak = reset_peak()
            state = {f"{ALGORITHM}c{k}": new_state(k, 0, None, base) for k in range(clients)}
            rows = []
            for round_idx in range(1, repeats + 1):
                aof = s.aof()
                t0 = time.perf_counter()
                s.store.save(Checkpoint(RUN, round_idx, weights, FINGERPRINT, {}, [], {"state_layout": STATE_LAYOUT},
                                        state), keep=KEEP)
                seconds = time.perf_counter() - t0
                rows.append({"seconds": seconds, "aof_bytes": s.appended(aof),
                             "client_bytes": s.sizes(f"{s.base}state:{round_idx}", list(state)),
                             "checkpoint_bytes": s.raw.strlen(f"{s.base}ckpt:{round_idx}")})
            peak = proc_kib("/proc/self/status", "VmHWM")[0] / 1024 if exact_peak else rss_mib()
            return {"clients": clients, "rounds": rows, "rss_before_mib": rss_before, "peak_rss_mib": peak,
                    **s.figures()}
        finally:
            s.close()


def fail(message: str, status: int) -> None:
    print(f"client_state: {message}", file=sys.stderr)
    sys.exit(status)


def in_fresh_process(fn, *args):
    """fn(*args) in a new interpreter (spawn), so that each measurement's RSS is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def summary(run: dict) -> dict:
    rows = run["rounds"]
    def med(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]  # the AOF's growth is unknown across a rewrite
        return statistics.median(values) if values else None
    out = {"clients": run["clients"], "checkpoint_seconds": med("seconds"),
           "checkpoint_seconds_max": max(r["seconds"] for r in rows), "client_bytes": med("client_bytes"),
           "checkpoint_bytes": med("checkpoint_bytes"), "aof_bytes": med("aof_bytes"),
           "peak_rss_growth_mib": run["peak_rss_mib"] - run["rss_before_mib"],
           "rss_before_mib": run["rss_before_mib"], "redis_used_mib": run["redis_used_mib"],
           "redis_forks": run["redis_forks"]}
    if "rss_mib" in run:
        out.update(with_state=run["with_state"], read_seconds=med("read_seconds"), read_clients=med("read"),
                   rss_growth_mib=run["rss_mib"][-1] - run["rss_before_mib"],
                   rss_drift_mib=run["rss_mib"][-1] - run["rss_mib"][0])
    return out


def main() -> None:
    args = parse_args()
    where = str(args.dir) if args.dir is not None else tempfile.gettempdir()
    if not Path(where).is_dir():
        fail(f"--dir {where} is not a directory", 2)
    short = resources(args, where)
    if short:
        fail(f"the largest measurement {short}", 2)
    free_gb = shutil.disk_usage(where).free / 1e9
    try:
        runs = [in_fresh_process(per_checkpoint, k, args.state_floats, args.per_round, args.rounds, args.fill,
                                 args.seed, where) for k in (args.clients_small, args.clients)]
        whole = in_fresh_process(whole_set, args.whole_clients, args.state_floats, args.whole_repeats, args.seed,
                                 where)
    except FedActorsError as e:
        fail(str(e), 1)
    small, big = (summary(r) for r in runs)
    ref = summary(whole)
    scale = args.clients / args.whole_clients
    ref_big = {"clients": args.clients, "client_bytes": ref["client_bytes"] * scale,
               "checkpoint_seconds": ref["checkpoint_seconds"] * scale, "measured": scale == 1}
    same_k = next((r for r in (small, big) if r["clients"] == args.whole_clients), None)
    ratios = {
        "bytes_vs_whole_set": big["client_bytes"] / ref_big["client_bytes"],
        "seconds_vs_whole_set": big["checkpoint_seconds"] / ref_big["checkpoint_seconds"],
        "bytes_vs_whole_set_same_k": same_k and same_k["client_bytes"] / ref["client_bytes"],
        "seconds_vs_whole_set_same_k": same_k and same_k["checkpoint_seconds"] / ref["checkpoint_seconds"],
        "bytes_per_state": big["client_bytes"] / (args.per_round * 4 * args.state_floats),
        "bytes_big_vs_small_k": big["client_bytes"] / small["client_bytes"],
        "seconds_big_vs_small_k": big["checkpoint_seconds"] / small["checkpoint_seconds"],
        "rss_growth_big_minus_small_mib": big["rss_growth_mib"] - small["rss_growth_mib"],
        "peak_rss_growth_big_vs_small_k": big["peak_rss_growth_mib"] / max(small["peak_rss_growth_mib"], 1 / 1024),
        "peak_rss_growth_vs_whole_set": big["peak_rss_growth_mib"] * MIB / (args.clients * 4 * args.state_floats),
    }

    mb = 4 * args.state_floats / 1e6
    print(f"client state at scale: S = {args.state_floats:,} float32 ({mb:.2f} MB) a client, m = {args.per_round} a "
          f"round, {args.rounds} measured rounds, a checkpoint every round, keep {KEEP}"
          + (", every client given a state first (--fill)" if args.fill else ", the store empty at round 1"))
    print(f"CPU: {cpu_name()}; embedded redis-server {whole['redis_version']}, appendfsync always; "
          f"{free_gb:.0f} GB free in {where}")
    print(f"\n{'per checkpoint (median over rounds)':44s} {'K = ' + format(small['clients'], ','):>12s} "
          f"{'K = ' + format(big['clients'], ','):>12s}")
    rows = [("clients with state at the end", "with_state", 1, "{:,.0f}"),
            ("client blobs written (MB)", "client_bytes", 1e6, "{:.2f}"),
            ("checkpoint blob, weights + manifest (MB)", "checkpoint_bytes", 1e6, "{:.3f}"),
            ("AOF appended (MB; rounds without a rewrite)", "aof_bytes", 1e6, "{:.2f}"),
            ("seconds: checkpoint() + save() + saved()", "checkpoint_seconds", 1, "{:.3f}"),
            ("seconds, slowest round", "checkpoint_seconds_max", 1, "{:.3f}"),
            ("clients read from the store a round", "read_clients", 1, "{:.0f}"),
            ("seconds: get() of the round's clients", "read_seconds", 1, "{:.3f}"),
            ("coordinator RSS before round 1 (MiB)", "rss_before_mib", 1, "{:.0f}"),
            ("coordinator RSS growth to round R (MiB)", "rss_growth_mib", 1, "{:.0f}"),
            ("  of which after round 1 (MiB)", "rss_drift_mib", 1, "{:.0f}"),
            ("coordinator peak RSS growth (MiB)", "peak_rss_growth_mib", 1, "{:.0f}"),
            ("redis used memory at the end (MiB)", "redis_used_mib", 1, "{:.0f}"),
            ("redis forks (AOF rewrites)", "redis_forks", 1, "{:.0f}")]
    for label, key, unit, fmt in rows:
        cells = ("-" if r[key] is None else fmt.format(r[key] / unit) for r in (small, big))
        print(f"{label:44s} " + " ".join(f"{c:>12s}" for c in cells))
    how = f"scaled x{scale:g} from K = {args.whole_clients:,}: bytes are linear in K, seconds assumed so"
    print(f"\nthe whole set in one checkpoint (SCAFFOLD before), median of {args.whole_repeats}: at "
          f"K = {args.whole_clients:,} {ref['client_bytes'] / 1e6:,.1f} MB in {ref['checkpoint_seconds']:.2f} s, "
          f"coordinator peak RSS +{ref['peak_rss_growth_mib']:,.0f} MiB"
          + ("" if ref_big["measured"] else f"; at K = {args.clients:,} {ref_big['client_bytes'] / 1e6:,.1f} MB in "
             f"{ref_big['checkpoint_seconds']:.2f} s ({how})"))
    print(f"per checkpoint / whole set at K = {args.clients:,}: bytes {ratios['bytes_vs_whole_set']:.4f}x, "
          f"seconds {ratios['seconds_vs_whole_set']:.4f}x")
    if same_k:
        print(f"per checkpoint / whole set at K = {same_k['clients']:,} (both measured): bytes "
              f"{ratios['bytes_vs_whole_set_same_k']:.4f}x, seconds {ratios['seconds_vs_whole_set_same_k']:.4f}x")
    print(f"K = {args.clients:,} against K = {args.clients_small:,}: bytes a checkpoint "
          f"{ratios['bytes_big_vs_small_k']:.3f}x, seconds {ratios['seconds_big_vs_small_k']:.2f}x, coordinator RSS "
          f"growth {ratios['rss_growth_big_minus_small_mib']:+.0f} MiB, peak growth "
          f"{ratios['peak_rss_growth_big_vs_small_k']:.2f}x; the coordinator's peak growth at K = {args.clients:,} is "
          f"{ratios['peak_rss_growth_vs_whole_set']:.4f}x the whole set's bytes")
    print(json.dumps({"benchmark": "client_state", "cpu": cpu_name(), "settings": vars(args) | {"dir": where},
                      "per_checkpoint": [small, big], "whole_set": ref, "whole_set_at_clients": ref_big,
                      "ratios": ratios, "rounds": [r["rounds"] for r in runs]},
                     default=str))


if __name__ == "__main__":
    main()
