"""What the virtual clock would do, without training: the `--dry-run` preview of a simulated run.

It replays the first rounds of fedactors.runtime.systems' clock (synchronous plans) or of
fedactors.runtime.asynchronous' schedule (FedBuff, FedAsync) from the run's seed and profiles alone,
and says how long one client's local training, and a round, would take in virtual seconds.
It lives apart from both because it drives both: systems.py knows nothing of the asynchronous
schedule, which builds on it. Under secure aggregation it also says what a round's masking costs
(`secure_preview`: bytes exactly, seconds estimated by fedactors.secagg.costs on this machine).
"""

from __future__ import annotations

import numpy as np

from fedactors.runtime.asynchronous import Schedule
from fedactors.runtime.systems import Systems, Trace, parse_speed, plan_round
from fedactors.traffic import per_client, secure_per_client

PREVIEW_ROUNDS = 20


def preview(config, sizes: np.ndarray, num_weights: int, trace: Trace | None = None) -> dict:
    """What the virtual clock would do, without training (for --dry-run): one local training's virtual seconds over
    the clients (10th, 50th, 90th percentile, slowest), and over the first PREVIEW_ROUNDS rounds (server updates for
    fedbuff, fedasync), or the run's rounds if fewer, the median virtual seconds a round and the clients dropped (or
    the mean staleness); `rounds` says how many were previewed (fewer still if the trace's windows all close)."""
    systems = Systems(config.clients, config.seed, parse_speed(config.client_speed), trace)
    down, up = per_client(config.strategy, num_weights, config.compress, config.compress_down)
    from fedactors.secagg.stage import planned_neighbours

    down, up = secure_per_client(down, up, num_weights, planned_neighbours(config))
    work = np.asarray(sizes, dtype=np.int64) * config.epochs
    one = systems.durations(work, down, up)
    p10, p50, p90 = np.percentile(one, [10, 50, 90])
    rounds = min(PREVIEW_ROUNDS, config.rounds)  # never more than the run has
    out = {"client_seconds": {"p10": float(p10), "p50": float(p50), "p90": float(p90), "max": float(one.max())},
           "rounds": rounds}
    lengths, dropped, staleness = [], [], []
    if config.asynchronous:
        schedule = Schedule(seed=config.seed, concurrency=config.concurrency_value, buffer=config.buffer_value,
                            systems=systems, work=work, bytes_down=down, bytes_up=up)
        for _ in range(rounds):
            before = schedule.now
            try:
                arrivals, lost, freed = schedule.next_buffer()
            except RuntimeError:
                break
            lengths.append(schedule.now - before)
            dropped.append(len(lost))
            staleness.extend(schedule.version - a.version for a in arrivals)
            schedule.applied(freed)
        out["mean_staleness"] = float(np.mean(staleness)) if staleness else None
    else:
        now = 0.0
        for r in range(1, rounds + 1):
            try:
                plan = plan_round(systems, now, seed=config.seed, round_idx=r, m=config.clients_per_round,
                                  over_select=config.over_select or 0.0, deadline=config.deadline, work=work,
                                  bytes_down=down, bytes_up=up)
            except RuntimeError:
                break
            now += plan.seconds
            lengths.append(plan.seconds)
            dropped.append(len(plan.late) + len(plan.offline))
    out["rounds"] = len(lengths)
    out["round_seconds"] = float(np.median(lengths)) if lengths else None
    out["dropped_per_round"] = float(np.mean(dropped)) if dropped else None
    return out


def preview_lines(p: dict, asynchronous: bool) -> list[str]:
    """--dry-run's lines for a preview()."""
    c = p["client_seconds"]
    lines = [f"virtual clock: one client's local training takes {c['p10']:.3g} s (10th percentile), {c['p50']:.3g} s "
             f"(median), {c['p90']:.3g} s (90th), {c['max']:.3g} s (slowest), transfers included"]
    if p["round_seconds"] is None:
        return lines
    what = "server update" if asynchronous else "round"
    tail = (f", mean staleness {p['mean_staleness']:.2f}" if asynchronous and p.get("mean_staleness") is not None
            else f", {p['dropped_per_round']:.1f} clients dropped a round (late or offline)")
    first = f"the first {p['rounds']} {what}s" if p["rounds"] > 1 else f"the first {what}"
    lines.append(f"{first}: median {p['round_seconds']:.3g} virtual s a {what}{tail}")
    return lines


def secure_preview(config, num_weights: int) -> dict:
    """--dry-run's secure aggregation: k and t for the planned clients of a round; a client's bytes for it, up (in
    place of its float32 update: `update_bytes`) and down (besides the model); and the seconds a client's masking
    and the server's unmasking would take on this machine (fedactors.secagg.costs: their operations counted, each
    timed once here), with every client answering and with DROPOUT_RATE of them dropped before masking."""
    from fedactors.secagg.costs import calibrate, client_bytes, client_work, estimate_seconds, server_work
    from fedactors.secagg.stage import DROPOUT_RATE, planned_cohort, round_params

    n = planned_cohort(config)
    k, t = round_params(config.secure_aggregation, n, config.secagg_neighbours, config.secagg_threshold)
    counted = client_bytes(k, num_weights)
    rates = calibrate(num_weights, k, t)
    dropped = int(DROPOUT_RATE * n)
    pairs = round(dropped * k * (n - dropped) / (n - 1))  # a dropped client's neighbours that sent their vectors
    return {"mode": config.secure_aggregation, "clients": n, "neighbours": k, "threshold": t,
            "bytes_up": counted.up, "bytes_down": counted.down, "update_bytes": 4 * num_weights,
            "client_seconds": estimate_seconds(client_work(k), rates),
            "server_seconds": estimate_seconds(server_work(n, 0, 0), rates), "dropped": dropped,
            "server_seconds_dropped": estimate_seconds(server_work(n - dropped, pairs, dropped), rates)}


def secure_lines(p: dict) -> list[str]:
    """--dry-run's lines for a secure_preview()."""
    def size(num_bytes: float) -> str:
        for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
            if num_bytes >= scale:
                return f"{num_bytes / scale:.3g} {unit}"
        return f"{num_bytes:g} bytes"

    graph = "all the others" if p["neighbours"] == p["clients"] - 1 else f"{p['neighbours']} neighbours"
    lines = [f"secure aggregation {p['mode']}: {p['clients']} clients a round, each masking with {graph}, t = "
             f"{p['threshold']} of them to unmask; a client sends {size(p['bytes_up'])} "
             f"({p['bytes_up'] / p['update_bytes']:.2f}x its float32 update) and receives {size(p['bytes_down'])} "
             "besides the model"]
    dropping = (f", {p['server_seconds_dropped']:.3g} s with {p['dropped']} dropped before masking"
                if p["dropped"] else "")
    lines.append(f"secure aggregation's seconds, estimated on this machine: a client's masking "
                 f"{p['client_seconds']:.3g} s, the server's sum and unmasking {p['server_seconds']:.3g} s{dropping}")
    return lines
