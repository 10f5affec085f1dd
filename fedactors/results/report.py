"""What runs achieved: rounds to a target accuracy, per-run summaries, tables (and the paper's Table 2).

Pure: reads run directories (metrics.jsonl, run.json), returns values and strings; prints nothing.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from fedactors.algorithms import DEFAULT_ALGORITHM, DP_STAGE, builtin
from fedactors.errors import ConfigError, DataError

# McMahan et al. 2017, Table 2, CNN on MNIST, C = 0.1: communication rounds to reach 99% test
# accuracy. Key (E, B, partition), B = None meaning B = inf (full batch). E=1, B=inf is FedSGD.
PAPER_TABLE2: dict[tuple[int, int | None, str], int] = {
    (1, None, "iid"): 626, (1, None, "noniid"): 483,
    (5, None, "iid"): 179, (5, None, "noniid"): 1000,
    (1, 50, "iid"): 65, (1, 50, "noniid"): 600,
    (20, None, "iid"): 234, (20, None, "noniid"): 672,
    (1, 10, "iid"): 34, (1, 10, "noniid"): 350,
    (5, 50, "iid"): 29, (5, 50, "noniid"): 334,
    (20, 50, "iid"): 32, (20, 50, "noniid"): 426,
    (5, 10, "iid"): 20, (5, 10, "noniid"): 229,
    (20, 10, "iid"): 18, (20, 10, "noniid"): 173,
}
PAPER_TABLE2_FRAC = 0.1
PAPER_TABLE2_CLIENTS = 100
PAPER_TABLE2_TARGET = 0.99


def paper_table2_grid() -> list[tuple[int, int | None, str]]:
    """The cells (E, B, partition) of Table 2, in the paper's row order, IID before non-IID per row."""
    return list(PAPER_TABLE2)


def _curve(history: list[dict], metric: str = "accuracy") -> list[tuple[int, float]]:
    """(round, accuracy or `metric`) of the evaluated rows, by round; rows without a finite value are skipped."""
    points = [
        (int(row["round"]), float(row[metric]))
        for row in history
        if _is_number(row.get(metric))
    ]
    return sorted(points, key=lambda p: p[0])


def rounds_to_target(history: list[dict], target: float, metric: str = "accuracy", lower: bool = False) -> int | None:
    """The first evaluated round whose test accuracy (or `metric`) is >= target (<= with `lower`); None if none is."""
    return next((r for r, value in _curve(history, metric) if (value <= target if lower else value >= target)), None)


def rounds_to_target_interpolated(history: list[dict], target: float) -> float | None:
    """Fractional rounds to reach `target` on the monotone curve, as McMahan et al. 2017 report them.

    The curve is the running maximum of test accuracy over the evaluated rounds r_1 < r_2 < ...
    (best accuracy so far, non-decreasing): M_i = max(acc_1, ..., acc_i). If M_1 >= target the
    answer is r_1. Otherwise let i be the first index with M_i >= target (the same round as the
    first crossing of the raw curve); then M_{i-1} < target <= M_i and the answer is the linear
    interpolation r_{i-1} + (target - M_{i-1}) / (M_i - M_{i-1}) * (r_i - r_{i-1}), which lies in
    (r_{i-1}, r_i]. Because the lower end is the best accuracy so far, not the value of round
    r_{i-1}, a dip just before the crossing does not pull the answer later. None if never reached.
    """
    previous: tuple[int, float] | None = None  # (round, running max) at the last evaluated point
    best = -math.inf
    for r, acc in _curve(history):
        best = max(best, acc)
        if best >= target:
            if previous is None:
                return float(r)
            r0, m0 = previous
            return r0 + (target - m0) / (best - m0) * (r - r0)
        previous = (r, best)
    return None


def summarise(history: list[dict], target: float, metric: str = "accuracy", lower: bool = False) -> dict:
    """What run.json reports of a history: best accuracy (earliest round of it), final accuracy, first round >= target.

    With another target `metric` (--target-metric: the loss, or a task's own metric; `lower` when smaller is
    better) rounds_to_target is its first crossing, and best_value / best_value_round its best."""
    curve = _curve(history)
    out = {"best_accuracy": None, "best_round": None, "final_accuracy": None}
    if curve:
        best_round, best_accuracy = max(curve, key=lambda p: (p[1], -p[0]))
        out = {"best_accuracy": best_accuracy, "best_round": best_round, "final_accuracy": curve[-1][1]}
    out["rounds_to_target"] = rounds_to_target(history, target, metric, lower)
    if metric != "accuracy":
        values = _curve(history, metric)
        pick = min if lower else max
        best = pick(values, key=lambda p: (p[1], -p[0] if not lower else p[0])) if values else (None, None)
        out.update(target_metric=metric, target_lower=lower, best_value=best[1], best_value_round=best[0])
    return out


@dataclass(frozen=True)
class RunSummary:
    """One run directory, summarised. Accuracies are fractions in [0, 1]; None where not known yet."""

    path: Path
    run_id: str | None
    status: str
    label: str
    config: dict  # run.json's "config", as written (batch_size is an int or "inf")
    clients: int | None  # None: --partition natural, whose run stopped before the data was read (so never counted)
    frac: float
    epochs: int
    batch_size: int | None  # None: B = inf
    partition: str
    lr: float
    target: float
    rounds: tuple[int, ...]  # the evaluated rounds, increasing
    accuracies: tuple[float, ...]  # test accuracy after each of `rounds`
    best_accuracy: float | None
    best_round: int | None
    rounds_to_target: int | None
    rounds_to_target_interpolated: float | None
    evaluated_rounds: int
    wall_seconds: float | None  # the run in all, resumed parts included; None until the run has stopped
    median_round_seconds: float | None  # a round evaluated every k rounds counts 1/k of its evaluation
    epsilon: float | None = None  # dp-fedavg: the privacy spent by the last evaluated round
    # Per-client evaluation, by evaluated round: (round, its client_accuracy row: mean, p10, p50, p90, worst, ...).
    clients_curve: tuple[tuple[int, dict], ...] = ()
    metric: str = "accuracy"  # what rounds_to_target counts to (report --best)
    metric_lower: bool = False  # whether that metric is better smaller
    final_value: float | None = None  # its last evaluated value
    # Bytes (fedactors.traffic): the run's totals down and up, and the uplink so far at each of `rounds`, in MB
    # (None where the run predates the count).
    bytes_down: int | None = None
    bytes_up: int | None = None
    bytes_rounds: int | None = None  # the rounds the totals count
    uplink_mb: tuple[float | None, ...] = ()
    # The virtual clock (fedactors.runtime.systems) at each of `rounds`, in seconds; None where a run has none.
    virtual_seconds: tuple[float | None, ...] = ()

    def history(self) -> list[dict]:
        return [{"round": r, "accuracy": a} for r, a in zip(self.rounds, self.accuracies)]

    def reached(self, target: float) -> tuple[int | None, float | None]:
        """(first round >= target, interpolated rounds) for another target than the configured one."""
        h = self.history()
        return rounds_to_target(h, target), rounds_to_target_interpolated(h, target)


def config_label(config: dict, data: str | None = None) -> str:
    """E.g. "noniid E=5 B=10 C=0.1 lr=0.1"; K is added when it is not the paper's 100, the --data a run read in place
    of its task's own as "data=npz:rotated.npz" (`data`: that name as `data_names` gives it among other runs)."""
    label = (
        f"{config.get('partition', '?')} E={config.get('epochs', '?')} B={config.get('batch_size', '?')} "
        f"C={_num(config.get('frac', '?'))} lr={_num(config.get('lr', '?'))}"
    )
    clients = config.get("clients", PAPER_TABLE2_CLIENTS)
    if clients is not None and clients != PAPER_TABLE2_CLIENTS:  # None: natural data, never read
        label += f" K={clients}"
    if config.get("task", "mnist-cnn") != "mnist-cnn":
        label = f"{config['task']} {label}"
    if config.get("aggregator", "fedavg") != "fedavg":
        label += f" {config['aggregator']}"
    strategy = config.get("strategy", DEFAULT_ALGORITHM)
    spec = builtin(strategy)
    if config.get("dp"):  # the DP stage around the method named next
        label += DP_STAGE.label(config)
    if spec is not None and spec.label is not None:  # its name and settings, as its module writes them
        label += spec.label(config)
    elif strategy != DEFAULT_ALGORITHM:
        label += f" {strategy}"
        if config.get("server_lr") is not None:  # set by hand (a sweep's axis): which cell this is
            label += f" server_lr={_num(config['server_lr'])}"
    optimizer = config.get("client_optimizer", "sgd")  # the default local update's settings (fedactors.algorithms.local)
    if optimizer != "sgd":
        label += f" {optimizer}" + (f"({_num(config.get('client_momentum', 0.9))})" if optimizer == "momentum" else "")
    if config.get("weight_decay"):
        label += f" wd={_num(config['weight_decay'])}"
    if config.get("lr_schedule", "constant") != "constant":
        label += f" lr:{config['lr_schedule']}"
    if config.get("lr_warmup_steps"):
        label += f" warmup={config['lr_warmup_steps']}"
    if config.get("byzantine"):
        label += f" byz={config['byzantine']}:{config.get('attack')}"
    if config.get("precision", "fp32") != "fp32":
        label += f" {config['precision']}"
    if config.get("compress"):
        label += f" {config['compress']}"
    if spec is not None and spec.asynchronous:
        label += f" conc={config.get('concurrency') or 'm'}"
        if spec.fixed_buffer is None:
            label += f" buf={config.get('buffer') or 'default'}"
        if config.get("staleness"):
            label += f" s={config['staleness']}"
    for key, name in (("client_speed", "speed"), ("deadline", "deadline"), ("over_select", "over")):
        if config.get(key) is not None:
            label += f" {name}={_num(config[key]) if key != 'client_speed' else config[key]}"
    if config.get("client_trace"):
        label += f" trace={Path(config['client_trace']).name}"
    if config.get("finetune_steps"):  # personalized by fine-tuning (FedAvg-FT)
        label += f" ft={config['finetune_steps']}"
    if config.get("data"):
        label += f" data={data or data_name(config['data'])}"
    return label


def data_name(spec: str, parts: int = 1) -> str:
    """A --data setting (KIND:PATH, stored with PATH absolute) as labels show it: its kind and the last `parts`
    components of its path, e.g. npz:rotated.npz; run.json and `runs show` have the path whole."""
    kind, sep, where = spec.partition(":")
    tail = Path(where).parts[-parts:] if sep else ()
    return f"{kind}:{Path(*tail)}" if tail else spec


def data_names(specs: list[str | None]) -> dict[str, str]:
    """Each distinct --data of `specs` (None: a task's own data, left out) named by as few trailing path components
    as tell it apart from the others: two LEAF sets in femnist/data and shakespeare/data are leaf:femnist/data and
    leaf:shakespeare/data, not leaf:data twice."""
    distinct = sorted({s for s in specs if s})
    names = {}
    for spec in distinct:
        depth = 1
        while depth < len(Path(spec.partition(":")[2]).parts) and any(
                data_name(other, depth) == data_name(spec, depth) for other in distinct if other != spec):
            depth += 1
        names[spec] = data_name(spec, depth)
    return names


def run_labels(summaries: list[RunSummary]) -> list[str]:
    """Each run's label (config_label) among these runs: the data sets they read named so as to tell them apart."""
    names = data_names([s.config.get("data") for s in summaries])
    return [config_label(s.config, names.get(s.config.get("data"))) for s in summaries]


def load_run(path: str | Path, *, target: float | None = None, metric: str = "accuracy") -> RunSummary:
    """Summarise the run in directory `path`; `target` defaults to the run's configured one.

    With another `metric` (the loss, or a task's own metric in metrics.jsonl) rounds_to_target is its
    first crossing of `target` (which must be given), at or below it for the loss and for the metrics the
    run said are better smaller, at or above otherwise; `final_value` is its last value.

    ConfigError if `path` is not a run directory (says which file is missing), DataError if its
    files are not what `fedactors run` writes.
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a run directory: {'not a directory' if path.exists() else 'it does not exist'}")
    missing = [name for name in ("run.json", "metrics.jsonl") if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"{path} is not a run directory: no {' and no '.join(missing)}")
    info = _read_run_json(path / "run.json")
    config = info["config"]
    try:
        batch = config["batch_size"]
        summary_config = dict(
            clients=_clients(config), frac=float(config["frac"]), epochs=int(config["epochs"]),
            batch_size=None if batch == "inf" else int(batch), partition=str(config["partition"]),
            lr=float(config["lr"]),
        )
        configured_target = float(config["target"])
        eval_every = max(1, int(config.get("eval_every", 1)))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path / 'run.json'}: configuration lacks or garbles {exc}") from None
    if metric != "accuracy" and target is None:
        raise ConfigError(f"--best {metric}: give --target, the value of {metric} to reach")
    target = configured_target if target is None else target
    history = _read_metrics_rows(path / "metrics.jsonl")
    curve = _curve(history)
    lower = info.get("target_lower", False) if config.get("target_metric") == metric else metric == "loss"
    summary = summarise(history, target, metric, lower)
    values = _curve(history, metric)
    round_seconds = _round_seconds(history, eval_every)
    wall = info.get("total_wall_seconds", info.get("wall_seconds"))  # a resumed run's parts in all
    return RunSummary(
        path=path,
        run_id=info.get("run_id"),
        status=str(info.get("status", "unknown")),
        label=config_label(config),
        config=dict(config),
        target=target,
        **summary_config,
        rounds=tuple(r for r, _ in curve),
        accuracies=tuple(a for _, a in curve),
        best_accuracy=summary["best_accuracy"],
        best_round=summary["best_round"],
        rounds_to_target=summary["rounds_to_target"],
        rounds_to_target_interpolated=rounds_to_target_interpolated(history, target) if metric == "accuracy" else None,
        metric=metric,
        metric_lower=lower,
        final_value=values[-1][1] if values else None,
        evaluated_rounds=len(curve),
        wall_seconds=float(wall) if wall is not None else None,
        median_round_seconds=statistics.median(round_seconds) if round_seconds else None,
        epsilon=next((float(row["epsilon"]) for row in reversed(history) if row.get("epsilon") is not None), None),
        clients_curve=_clients_curve(history, path / "metrics.jsonl"),
        **_traffic(info, history, curve),
    )


def _clients(config: dict) -> int | None:
    """K as run.json's configuration records it. A natural-partition run counts its clients when it reads the
    data, so one that failed before then (a missing or empty data set) records none: that is a failed run to
    list, not a garbled file."""
    if config["clients"] is None and config.get("partition") == "natural":
        return None
    return int(config["clients"])


def _traffic(info: dict, history: list[dict], curve: list[tuple[int, float]]) -> dict:
    """RunSummary's byte fields from run.json's "bytes" and metrics.jsonl's cumulative uplink (MB = 10^6 bytes)."""
    kept = info.get("bytes") if isinstance(info.get("bytes"), dict) else {}
    by_round = {row["round"]: row.get("bytes_up_total") for row in history}
    done = info.get("rounds_completed")
    counted = done - int(kept.get("since_round", 0)) if isinstance(done, int) and kept else None
    clock = {row["round"]: row.get("virtual_seconds") for row in history}
    return {"bytes_down": kept.get("down"), "bytes_up": kept.get("up"), "bytes_rounds": counted,
            "uplink_mb": tuple(None if not _is_number(by_round.get(r)) else by_round[r] / 1e6 for r, _ in curve),
            "virtual_seconds": tuple(float(clock[r]) if _is_number(clock.get(r)) else None for r, _ in curve)}


CLIENT_KEYS = ("mean", "p10", "p50", "p90", "worst", "at_target")


def _clients_curve(history: list[dict], file: Path) -> tuple[tuple[int, dict], ...]:
    """(round, client_accuracy) for the rows that have it, each checked to hold CLIENT_KEYS as numbers."""
    curve = []
    for row in history:
        spread = row.get("client_accuracy")
        if spread is None:
            continue
        if not isinstance(spread, dict) or not all(_is_number(spread.get(k)) for k in CLIENT_KEYS):
            raise DataError(f"{file}: round {row['round']}'s client_accuracy lacks numbers for {', '.join(CLIENT_KEYS)}")
        curve.append((row["round"], spread))
    return tuple(sorted(curve, key=lambda item: item[0]))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _round_seconds(history: list[dict], k: int) -> list[float]:
    """Each recorded round's seconds as a typical round of the run costs: metrics.jsonl holds only
    the evaluated rounds, so with evaluation every k rounds each of them carries its evaluation
    at 1/k (the k - 1 rounds between train and aggregate alike, and are not written)."""
    seconds = []
    for row in history:
        if row.get("round_seconds") is None:
            continue
        evaluation = float(row.get("eval_seconds") or 0.0)
        seconds.append(float(row["round_seconds"]) - evaluation + evaluation / k)
    return seconds


def _read_run_json(file: Path) -> dict:
    try:
        info = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{file} cannot be read as JSON: {exc}") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise DataError(f"{file} has no \"config\" object; it was not written by fedactors run")
    return info


def _read_metrics_rows(file: Path) -> list[dict]:
    """The rows of metrics.jsonl, naming the line of anything malformed.

    A final line without its newline that does not parse is a row being appended right now (a
    run in progress, or one killed mid-write): it is left out rather than reported as corrupt.
    """
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file} cannot be read: {exc}") from None
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: still being written
                break
            raise DataError(f"{file}:{number} is not valid JSON: {exc}") from None
        if not _is_metrics_row(row):
            raise DataError(f"{file}:{number} is not a metrics row (needs an integer \"round\" and a numeric \"accuracy\")")
        rows.append(row)
    return rows


def _is_metrics_row(row: object) -> bool:
    if not isinstance(row, dict) or isinstance(row.get("round"), bool) or not isinstance(row.get("round"), int):
        return False
    acc = row.get("accuracy", "missing")
    return acc is None or (isinstance(acc, (int, float)) and not isinstance(acc, bool))


# ---------------------------------------------------------------------------------------------
# Tables


def format_table(summaries: list[RunSummary], *, markdown: bool = False, also: tuple[float, ...] = ()) -> str:
    """One row per run: configuration, status, best accuracy, rounds to its target, time; and for each accuracy in
    `also` (report --target given more than once) the rounds to it, first and interpolated."""
    headers = ["run", "configuration", "status", "evaluated", "best acc (round)", "target",
               "rounds to target", "interpolated"]
    align = "lllrrrrr"
    for t in also:
        headers += [f"rounds to {_num(t)}", "interpolated"]
        align += "rr"
    headers += ["wall s", "median s/round"]
    align += "rr"
    private = any(s.epsilon is not None for s in summaries)  # a column of its own only where DP runs are
    if private:
        headers.append("epsilon")
        align += "r"
    counted = any(s.bytes_up is not None for s in summaries)  # runs since fedactors counts bytes
    if counted:
        headers += ["MB down", "MB up", "MB up/round", "MB up to target"]
        align += "rrrr"
    clocked = any(v is not None for s in summaries for v in s.virtual_seconds)  # runs on the virtual clock
    if clocked:
        headers += ["virtual s", "virtual s to target"]
        align += "rr"
    per_client = any(s.clients_curve for s in summaries)  # likewise where clients were evaluated one by one
    if per_client:
        headers += ["clients mean", "p10", "worst", "at target"]
        align += "rrrr"
    rows = []
    for s, label in zip(summaries, run_labels(summaries)):
        rows.append([
            s.path.name or str(s.path), label, s.status, str(s.evaluated_rounds),
            "-" if s.best_accuracy is None else f"{s.best_accuracy:.4f} ({s.best_round})",
            _num(s.target),
            *_rounds(s.rounds_to_target, s.rounds_to_target_interpolated),
            *(cell for t in also for cell in _rounds(*s.reached(t))),
            "-" if s.wall_seconds is None else f"{s.wall_seconds:.1f}",
            "-" if s.median_round_seconds is None else f"{s.median_round_seconds:.2f}",
            *(["-" if s.epsilon is None else f"{s.epsilon:.3g}"] if private else []),
            *(_megabytes(s) if counted else []),
            *(_virtual(s) if clocked else []),
            *(_last_clients(s) if per_client else []),
        ])
    return _render(headers, rows, align, markdown)


def _rounds(first: int | None, interpolated: float | None) -> list[str]:
    """A pair of rounds-to-target cells: the first evaluated round at the target, and interpolated."""
    return ["not reached" if first is None else str(first), "-" if interpolated is None else f"{interpolated:.1f}"]


def _megabytes(s: RunSummary) -> list[str]:
    """The run's MB down and up in all, up per round, and up to its first round at the target (MB = 10^6 bytes;
    counted from its start, or from run.json's bytes since_round for a run resumed from an older checkpoint)."""
    if s.bytes_up is None:
        return ["-"] * 4
    per_round = f"{s.bytes_up / 1e6 / s.bytes_rounds:.2f}" if s.bytes_rounds else "-"
    at = dict(zip(s.rounds, s.uplink_mb)).get(s.rounds_to_target) if s.rounds_to_target is not None else None
    return [f"{s.bytes_down / 1e6:.1f}", f"{s.bytes_up / 1e6:.1f}", per_round, "-" if at is None else f"{at:.1f}"]


def _virtual(s: RunSummary) -> list[str]:
    """The virtual clock at the run's last evaluated round and at its first round at the target."""
    last = s.virtual_seconds[-1] if s.virtual_seconds else None
    at = dict(zip(s.rounds, s.virtual_seconds)).get(s.rounds_to_target) if s.rounds_to_target is not None else None
    return ["-" if last is None else f"{last:.0f}", "-" if at is None else f"{at:.0f}"]


# What a sweep tunes, not what the method is: runs differing only in these are one method's cells (--best).
TUNED = ("lr", "server_lr", "server_momentum", "beta1", "beta2", "tau", "mu", "clip", "noise_multiplier", "seed")


def method(s: RunSummary) -> str:
    """The method a run is a cell of: its experiment settings less what a sweep tunes (TUNED), as text."""
    from fedactors.config import stored_experiment

    return json.dumps({k: v for k, v in stored_experiment(s.config).items() if k not in TUNED}, sort_keys=True)


def best_by_method(summaries: list[RunSummary]) -> list[RunSummary]:
    """Each method's best run: the fewest rounds to its target (a run that never reached it, or failed first, after
    every one that did), ties by the better final value; in the order the methods first appear."""
    best: dict[str, RunSummary] = {}

    def key(s: RunSummary) -> tuple:
        final = s.final_value if s.final_value is not None else (math.inf if s.metric_lower else -math.inf)
        return (s.rounds_to_target is None, s.rounds_to_target or 0, final if s.metric_lower else -final)

    for s in summaries:
        m = method(s)
        if m not in best or key(s) < key(best[m]):
            best[m] = s
    return list(best.values())


def _last_clients(s: RunSummary) -> list[str]:
    """The last evaluated round's clients: mean, 10th percentile and worst accuracy, and the share at the target."""
    if not s.clients_curve:
        return ["-"] * 4
    last = s.clients_curve[-1][1]
    return [f"{last['mean']:.4f}", f"{last['p10']:.4f}", f"{last['worst']:.4f}", f"{last['at_target']:.0%}"]


def is_table2_setup(s: RunSummary) -> bool:
    """The paper's Table 2 setting apart from E, B and the partition: its CNN on MNIST, K=100,
    C=0.1, plain FedAvg in fp32 with plain SGD at a constant rate and no faulty clients (another model, strategy or aggregator is
    another experiment, not a cell of the table)."""
    c = s.config
    return (s.clients == PAPER_TABLE2_CLIENTS and math.isclose(s.frac, PAPER_TABLE2_FRAC)
            and c.get("task", "mnist-cnn") == "mnist-cnn" and c.get("strategy", DEFAULT_ALGORITHM) == DEFAULT_ALGORITHM
            and c.get("aggregator", "fedavg") == "fedavg" and not c.get("byzantine")
            and c.get("precision", "fp32") == "fp32" and c.get("client_optimizer", "sgd") == "sgd"
            and not c.get("weight_decay") and c.get("lr_schedule", "constant") == "constant"
            and not c.get("lr_warmup_steps"))


def paper_rounds(s: RunSummary) -> int | None:
    """The paper's rounds to 99% for the Table 2 cell `s` runs, or None when it runs none."""
    return PAPER_TABLE2.get((s.epochs, s.batch_size, s.partition)) if is_table2_setup(s) else None


def match_table2_cell(summaries: list[RunSummary], cell: tuple[int, int | None, str]) -> RunSummary | None:
    """The run shown for a Table 2 cell: the paper's setup (is_table2_setup) with the cell's E, B and partition.

    The paper reports each cell at its best learning rate, so among several matching runs (an lr
    grid, or seeds) the one reaching 99% in the fewest interpolated rounds is taken; if none
    reaches it, the one with the highest best accuracy. None when no run matches.
    """
    epochs, batch, partition = cell
    matches = [
        s for s in summaries
        if (s.epochs, s.batch_size, s.partition) == (epochs, batch, partition) and is_table2_setup(s)
    ]
    if not matches:
        return None

    def key(s: RunSummary) -> tuple:
        interp = s.reached(PAPER_TABLE2_TARGET)[1]
        return (interp is None, interp if interp is not None else 0.0, -(s.best_accuracy or 0.0))

    return min(matches, key=key)


def format_table2(summaries: list[RunSummary], *, markdown: bool = False) -> str:
    """Our rounds to 99% beside the paper's Table 2 (CNN, C=0.1), with the ratio ours / paper.

    The ratio uses the interpolated rounds, as the paper's numbers are. Cells without a matching
    run say "no run"; runs that never reached 99% say "not reached (best X)". Each run's rounds,
    wall time and median seconds per round follow.
    """
    headers = ["partition", "E", "B", "paper", "ours (first)", "ours (interp.)", "ratio", "lr", "rounds run",
               "wall s", "s/round", "run"]
    align = "lrrrrrrrrrrl"
    rows = []
    for cell in paper_table2_grid():
        epochs, batch, partition = cell
        paper = PAPER_TABLE2[cell]
        row = [partition, str(epochs), "inf" if batch is None else str(batch), str(paper)]
        s = match_table2_cell(summaries, cell)
        if s is None:
            row += ["no run", "-", "-", "-", "-", "-", "-", "-"]
        else:
            first, interp = s.reached(PAPER_TABLE2_TARGET)
            if first is None:
                best = "-" if s.best_accuracy is None else f"{s.best_accuracy:.4f}"
                row += [f"not reached (best {best})", "-", "-"]
            else:
                row += [str(first), f"{interp:.1f}", f"{interp / paper:.2f}x"]
            row += [_num(s.lr), str(s.rounds[-1]) if s.rounds else "0",
                    "-" if s.wall_seconds is None else f"{s.wall_seconds:.0f}",
                    "-" if s.median_round_seconds is None else f"{s.median_round_seconds:.2f}",
                    s.path.name or str(s.path)]
        rows.append(row)
    return _render(headers, rows, align, markdown)


def _render(headers: list[str], rows: list[list[str]], align: str, markdown: bool) -> str:
    """Aligned plain text (two spaces between columns), or a GitHub Markdown table."""
    if markdown:
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        rule = "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|"
        return "\n".join([line(headers), rule, *(line(r) for r in rows)]) + "\n"
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)]) + "\n"


def _num(value: object) -> str:
    """A float without trailing noise: 0.1 -> "0.1", 1.0 -> "1"."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def last_clients(path: str | Path) -> tuple[int, dict[str, dict]]:
    """(round, {owner: {"examples", "global"[, "personal"]}}) of a run's last evaluated round in clients.jsonl (each
    client judged on its own split); DataError naming the run if it has none or the line is not such an object."""
    file = Path(path) / "clients.jsonl"
    if not file.is_file():
        raise DataError(f"{path}: no clients.jsonl: the run judged no client on its own split (run it with "
                        "--client-test-fraction F, or on data with owners' test sets)")
    lines = [line for line in file.read_text().splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{file}: no evaluated round yet")
    try:
        row = json.loads(lines[-1])
        clients = row["clients"]
        if not isinstance(row["round"], int) or not all(
                isinstance(c, dict) and _is_number(c.get("global")) and isinstance(c.get("examples"), int)
                for c in clients.values()):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DataError(f"{file}: its last line is not a round of per-client accuracies") from None
    return row["round"], clients


def format_worst_clients(path: str | Path, k: int, *, markdown: bool = False, label: str | None = None) -> str:
    """The `k` clients of a run whose own model did worst on their own split at its last evaluated round (the
    personalized model where the run personalized, else the global one), with the global model's accuracy beside."""
    round_idx, clients = last_clients(path)
    key = "personal" if any("personal" in c for c in clients.values()) else "global"
    worst = sorted(clients.items(), key=lambda item: (item[1][key], item[0]))[:k]
    headers = ["client", "examples", "global"] + (["personalized", "hurt"] if key == "personal" else [])
    rows = []
    for owner, c in worst:
        row = [owner, str(c["examples"]), f"{c['global']:.4f}"]
        if key == "personal":
            row += [f"{c['personal']:.4f}", "yes" if c["personal"] < c["global"] else ""]
        rows.append(row)
    title = (f"{label or path}: the {len(worst)} worst of {len(clients)} clients at round {round_idx}, by their "
             f"{'personalized' if key == 'personal' else 'global'} model's accuracy on their own split")
    return title + "\n" + _render(headers, rows, "lrrrl" if key == "personal" else "lrr", markdown)
