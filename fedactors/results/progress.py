"""What a run shows while it runs (`fedactors run`, or fedactors.run from Python): a live bar in a
terminal, plain lines elsewhere.

Four renderers share one small interface, chosen by `make_renderer`: `rich` (a terminal),
`plain` (stdout is a file or pipe: one line per round, so CI logs stay readable), `quiet`
(only the summary) and `json` (one JSON object per event on stdout, for scripts).
"""

from __future__ import annotations

import json
import os
import sys

from fedactors.algorithms import DEFAULT_ALGORITHM, DP_STAGE, builtin
from fedactors.config import RunConfig
from fedactors.messages import metrics_fields


def make_renderer(mode: str, config: RunConfig) -> Renderer:
    """mode: auto (rich on a terminal, else plain), plain, quiet or json."""
    if mode == "json":
        return JsonRenderer(config)
    if mode == "quiet":
        return QuietRenderer(config)
    if mode == "auto" and sys.stdout.isatty():
        return RichRenderer(config)
    return Renderer(config)


def _bs(config: RunConfig) -> str:
    return "inf" if config.batch_size is None else str(config.batch_size)


def _variant(c: RunConfig) -> str:
    """What departs from the paper's FedAvg: aggregator, faulty clients, precision; "" for none."""
    parts = []
    if c.aggregator == "trimmed-mean":
        parts.append(f"trimmed-mean({c.trim_fraction:g})")
    elif c.aggregator != "fedavg":
        parts.append(c.aggregator)
    if c.byzantine:
        scale = "" if c.attack == "nan" else f"x{c.attack_scale:g}"
        parts.append(f"byzantine={c.byzantine}:{c.attack}{scale}")
    if c.precision != "fp32":
        parts.append(c.precision)
    spec = builtin(c.strategy)
    if c.dp is not None:  # the DP stage around the method named next
        parts.append(DP_STAGE.banner(c))
    if spec is not None and spec.banner is not None:
        parts.append(spec.banner(c))
    elif c.strategy != DEFAULT_ALGORITHM:
        parts.append(c.strategy)
    if c.task != "mnist-cnn":
        parts.insert(0, c.task)
    return "".join(" " + p for p in parts)


def round_bytes(floats: int, clients_per_round: int) -> int:
    """Bytes a round moves each way: the global weights to each of m clients (down), as many back (up); float32."""
    return clients_per_round * 4 * floats


def frozen_text(host: dict, clients_per_round: int) -> str | None:
    """What frozen parameters save each round against training every parameter of the same module, or None."""
    if "frozen" not in host:
        return None
    sent, frozen = host["weights"], host["frozen"]["floats"]
    now, full = round_bytes(sent, clients_per_round), round_bytes(sent + frozen, clients_per_round)
    names = host["frozen"]["names"]
    return (f"frozen: {len(names)} parameter{'s' * (len(names) != 1)} ({frozen:,} floats) stay in the hosts; "
            f"{sent:,} floats travel: {now:,} bytes a round each way (down and up), "
            f"{100 * now / full:.1f}% of the {full:,} with every parameter trained")


class Renderer:
    """Plain text, one line per round.

    Once stdout is closed (`fedactors run ... | head`), nothing more is written to it and
    `output_closed` is true: the run stops as if interrupted (api._drive), and says so on stderr."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.width = len(str(config.rounds))
        self.best: float | None = None
        self.output_closed = False

    def echo(self, text: str) -> None:
        self.write_stdout(text)

    def write_stdout(self, line: str) -> None:
        """One line on stdout, unless the reader is gone (then `output_closed`)."""
        if self.output_closed:
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:
            self.output_closed = True
            _silence_stdout()

    def header(self, run_id: str, out: str, resumed_from: int | None) -> None:
        c = self.config
        if resumed_from is not None:
            self.echo(f"resuming run {run_id} after round {resumed_from}")
        self.echo(
            f"fedactors run {run_id}: {_clients(c)} E={c.epochs} "
            f"B={_bs(c)} lr={c.lr} {c.partition}{_variant(c)}, {c.rounds} rounds -> {out}"
        )

    def privacy(self, check) -> None:
        """DP-FedAvg's pre-flight (fedactors.privacy.Preflight), under the header: its numbers, and its warning."""
        for line in check.lines():
            self.echo(line)
        self.privacy_warning(check)

    def privacy_warning(self, check) -> None:
        warning = check.warning()
        if warning:
            self.warning(warning)

    def start(self, hosts: list[dict], clients_per_round: int, first_round: int) -> None:
        nodes = len({h.get("node_id") for h in hosts})
        self.echo(f"{len(hosts)} client host{'s' * (len(hosts) != 1)} on {nodes} node{'s' * (nodes > 1)}; "
                  f"{clients_per_round} clients per round")
        frozen = frozen_text(hosts[0], clients_per_round) if hosts else None
        if frozen:
            self.echo(frozen)
        self.host_warnings(hosts)

    def warning(self, text: str) -> None:
        self.echo(f"warning: {text}")

    def host_warnings(self, hosts: list[dict]) -> None:
        """Each distinct host warning once, naming the hosts it applies to."""
        which: dict[str, list[int]] = {}
        for h in hosts:
            for text in h.get("warnings", []):
                which.setdefault(text, []).append(h["host"])
        for text, ids in which.items():
            self.warning(f"host{'s' * (len(ids) > 1)} {', '.join(map(str, ids))}: {text}")

    def round(self, ev: dict) -> None:
        if ev["accuracy"] is not None:
            self.best = ev["accuracy"] if self.best is None else max(self.best, ev["accuracy"])
        for failure in ev["failures"]:
            self.echo(f"  failed: {failure}")
        self.echo(self.round_text(ev))

    def round_text(self, ev: dict) -> str:
        acc = evaluated_text(ev)
        extra = f"  retried {len(ev['retried'])}" if ev["retried"] else ""
        extra += f"  dropped {len(ev['dropped'])}" if ev["dropped"] else ""
        extra += f"  rejected {len(ev['rejected'])}" if ev.get("rejected") else ""
        if ev.get("virtual_seconds") is not None:  # on the virtual clock (fedactors.runtime.systems)
            dropped = len(ev.get("late") or []) + len(ev.get("offline") or [])
            extra += f"  virtual {ev['virtual_seconds']:.0f} s" + (f", {dropped} late or offline" if dropped else "")
            if ev.get("staleness"):
                extra += f", staleness max {ev['staleness']['max']}"
        ckpt = "" if ev.get("checkpoint_seconds") is None else f", checkpoint {ev['checkpoint_seconds']:.2f}"
        eps = "" if ev.get("epsilon") is None else f"  epsilon {ev['epsilon']:.3f}"
        loss = "-" if ev["train_loss"] is None else f"{ev['train_loss']:.4f}"
        return (
            f"round {ev['round']:>{self.width}}/{self.config.rounds}{acc}{eps}  train_loss {loss}  "
            f"{ev['round_seconds']:.2f} s (train {ev['train_seconds']:.2f}, eval {ev['eval_seconds']:.2f}{ckpt}){extra}"
        )

    def summary(self, summary: dict, wall_seconds: float) -> None:
        metric = summary.get("target_metric")
        best = ((summary["best_accuracy"], summary["best_round"], "accuracy") if metric is None
                else (summary["best_value"], summary["best_value_round"], metric))
        if best[0] is None:
            return
        reached = summary["rounds_to_target"]
        target = (f"target {self.config.target}" if metric is None
                  else f"target {metric} {'<=' if summary['target_lower'] else '>='} {self.config.target}")
        self.echo(
            f"best {best[2]} {best[0]:.4f} at round {best[1]}; "
            f"{target}: {'reached at round ' + str(reached) if reached else 'not reached'}; "
            f"{wall_seconds:.1f} s in all"
        )

    def already_finished(self, run_id: str, rounds_done: int) -> None:
        self.echo(f"run {run_id} already finished: {rounds_done} of {self.config.rounds} rounds are done; nothing to do")

    def interrupted(self, resume_command: str) -> None:
        if self.output_closed:  # the command would be lost with stdout: the user still needs it
            print(f"fedactors: stdout was closed; interrupted; continue with: {resume_command}", file=sys.stderr, flush=True)
            return
        self.echo(f"interrupted; continue with: {resume_command}")

    def close(self) -> None:
        pass


def _silence_stdout() -> None:
    """Point stdout's file descriptor at /dev/null: Python flushes stdout again at exit, and a closed pipe
    would end the command with a second BrokenPipeError (what Python's documentation on SIGPIPE advises)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a file descriptor (captured, in tests): nothing to flush later
        pass


class QuietRenderer(Renderer):
    """Nothing but warnings (on stderr) and the closing summary."""

    def header(self, run_id: str, out: str, resumed_from: int | None) -> None:
        pass

    def privacy(self, check) -> None:
        self.privacy_warning(check)

    def start(self, hosts: list[dict], clients_per_round: int, first_round: int) -> None:
        self.host_warnings(hosts)

    def warning(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def round(self, ev: dict) -> None:
        pass


class JsonRenderer(Renderer):
    """One JSON object per line on stdout: {"event": ..., ...}."""

    def emit(self, event: str, **fields: object) -> None:
        self.write_stdout(json.dumps({"event": event, **fields}))

    def header(self, run_id: str, out: str, resumed_from: int | None) -> None:
        self.emit("header", run_id=run_id, out=out, resumed_from=resumed_from, config=self.config.to_dict())

    def privacy(self, check) -> None:
        self.emit("privacy", **check.to_dict())
        self.privacy_warning(check)

    def start(self, hosts: list[dict], clients_per_round: int, first_round: int) -> None:
        self.emit("start", hosts=hosts, clients_per_round=clients_per_round)
        self.host_warnings(hosts)

    def warning(self, text: str) -> None:
        self.emit("warning", message=text)

    def round(self, ev: dict) -> None:
        row = metrics_fields(ev)
        self.emit("round", **row, checkpoint_seconds=ev.get("checkpoint_seconds"))

    def summary(self, summary: dict, wall_seconds: float) -> None:
        self.emit("summary", **summary, wall_seconds=wall_seconds)

    def already_finished(self, run_id: str, rounds_done: int) -> None:
        self.emit("already_finished", run_id=run_id, rounds_completed=rounds_done)

    def interrupted(self, resume_command: str) -> None:
        if self.output_closed:
            super().interrupted(resume_command)
        else:
            self.emit("interrupted", resume_command=resume_command)


class RichRenderer(Renderer):
    """A live bar over rounds with ETA, latest and best accuracy; events print above it."""

    def __init__(self, config: RunConfig, console: object | None = None) -> None:
        super().__init__(config)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console if console is not None else Console()
        self.progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            # Our own ETA: rich's estimates speed from the updates of the last 30 s, and with rounds
            # of 20 s or more it has too few of them, so it showed -:--:-- for the whole run.
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=False,
        )
        self.task = None
        self.round_seconds: list[float] = []  # of the rounds this command ran

    def echo(self, text: str) -> None:
        # soft_wrap: a long line (the resume command) stays one line, so it can be pasted whole.
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def start(self, hosts: list[dict], clients_per_round: int, first_round: int) -> None:
        super().start(hosts, clients_per_round, first_round)
        self.task = self.progress.add_task("rounds", total=self.config.rounds, completed=first_round, eta="-:--:--",
                                           status="starting hosts")
        self.progress.start()

    def round(self, ev: dict) -> None:
        super().round(ev)  # the line goes above the bar, so the history stays on screen
        if self.task is not None:
            status = evaluated_text(ev).strip()
            if ev.get("epsilon") is not None:
                status += f"  epsilon {ev['epsilon']:.3f}"
            if self.best is not None:
                status += f"  best {self.best:.4f}"
            self.round_seconds.append(ev["round_seconds"])
            self.progress.update(self.task, completed=ev["round"], status=status, eta=self.eta(ev["round"]))

    def eta(self, round_done: int) -> str:
        """The remaining rounds at the mean pace of the rounds this command ran, as h:mm:ss."""
        seconds = int(round(sum(self.round_seconds) / len(self.round_seconds) * (self.config.rounds - round_done)))
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    def close(self) -> None:
        self.progress.stop()


def _clients(c: RunConfig) -> str:
    """K, C and m; a natural partition's K (and so m) is known only once the data is read."""
    if c.clients is None:
        return f"K=one per owner C={c.frac}"
    return f"K={c.clients} C={c.frac} (m={c.clients_per_round})"


def evaluated_text(ev: dict) -> str:
    """A round's evaluation for its progress line: accuracy (a classifier's), loss, the task's own metrics, and the
    clients' own accuracies where they were evaluated one by one; empty for a round not evaluated."""
    if ev.get("loss") is None:
        return ""
    text = ("" if ev["accuracy"] is None else f"  acc {ev['accuracy']:.4f}") + f"  loss {ev['loss']:.4f}"
    text += "".join(f"  {name} {value:.4f}" for name, value in (ev.get("metrics") or {}).items())
    spread = ev.get("client_accuracy")
    if spread:
        text += f"  clients mean {spread['mean']:.4f} p10 {spread['p10']:.4f} worst {spread['worst']:.4f}"
    mine = ev.get("personal_accuracy")
    if mine:
        text += (f"  personalized mean {mine['mean']:.4f} p10 {mine['p10']:.4f} worst {mine['worst']:.4f} "
                 f"hurt {mine['hurt']:.0%}")
        if mine.get("unseen"):  # --holdout-clients: the clients that never trained
            text += f"  unseen mean {mine['unseen']['mean']:.4f} (global {mine['unseen']['global_mean']:.4f})"
    return text
