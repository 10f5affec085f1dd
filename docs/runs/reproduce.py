"""Run cells of the paper's tables until their target and 20 rounds past it, then keep the evidence.

Table 2 (CNN, target 99%): the pathological non-IID cells; Table 1 (2NN, target 97%): E=1, B=10,
C=0.1, IID and non-IID.

    python docs/runs/reproduce.py [--work runs/noniid] [--cells noniid-E5-B10-C0.1 ...] [--fedactors PATH]

Every cell is K = 100, C = 0.1, lr = 0.1, fp32, seed 0 (one cell again with seed 1), on the
machine's default hosts. A cell first runs to a round count a little past the paper's; if it
has not crossed 99% by then it is resumed further in steps (bit-exact, so the pieces make one
run). The script follows metrics.jsonl: once the run is 20 rounds past its first crossing it
stops it (SIGTERM, a clean stop) and closes it at the rounds it completed, up to the cell's cap.
Interrupted, it continues where it stopped when run again. A finished cell's
metrics.jsonl and run.json (not its checkpoints or weights) go to docs/runs/<cell>/, from which
`fedactors plot` and `fedactors report --table2` regenerate the README's figure and table.

E=5 cells are evaluated every round (their rounds to 99% are read there), but for B=inf's 1,000 rounds (every 5:
evaluation is a tenth of its round); E=1 cells, whose training is as cheap as evaluating the 10,000 test images,
every 2 (B=10), 5 (B=50) or 10 (B=inf) rounds, so their first crossing is known to that many rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent
PAST_TARGET = 20  # rounds to run past the first crossing of 99%


@dataclass(frozen=True)
class Cell:
    name: str
    epochs: int
    batch: str
    eval_every: int
    first_rounds: int  # the first run's length: a little past the paper's rounds to the target
    step: int  # how much further each resume goes while the target is not reached
    cap: int  # never more rounds than this
    seed: int = 0
    task: str = "mnist-cnn"
    partition: str = "noniid"
    target: float = 0.99
    extra: tuple[str, ...] = ()  # more flags: a strategy and its settings
    clients: int = 100
    run_id: str = ""  # the run's id where it is not the cell's name (the sweep's cells, continued here)

    @property
    def id(self) -> str:
        return self.run_id or self.name


CELLS = [
    Cell("noniid-E5-B10-C0.1", 5, "10", 1, 260, 60, 600),  # paper: 229
    Cell("noniid-E1-B10-C0.1", 1, "10", 2, 400, 100, 1200),  # paper: 350
    Cell("noniid-E1-B50-C0.1", 1, "50", 5, 650, 150, 1500),  # paper: 600
    Cell("noniid-E1-Binf-C0.1", 1, "inf", 10, 600, 200, 2000),  # paper: 483 (FedSGD)
    Cell("noniid-E5-B50-C0.1", 5, "50", 1, 360, 60, 800),  # paper: 334
    # paper: 1000 rounds; at ~20 s a round here they take 5-6 h, more than one session: the run is resumed across
    # sessions. Evaluated every 5 rounds (evaluation is a tenth of a round's time).
    Cell("noniid-E5-Binf-C0.1", 5, "inf", 5, 300, 100, 1000),
    Cell("noniid-E5-B10-C0.1-seed1", 5, "10", 1, 260, 60, 600, seed=1),  # the spread of a second seed
    # Table 1, the 2NN at 97%: paper 87 (IID) and 664 (non-IID) rounds for E=1, B=10, C=0.1.
    Cell("2nn-iid-E1-B10-C0.1", 1, "10", 1, 120, 60, 600, task="mnist-2nn", partition="iid", target=0.97),
    Cell("2nn-noniid-E1-B10-C0.1", 1, "10", 1, 700, 150, 2000, task="mnist-2nn", target=0.97),
    # The strategies beside FedAvg's noniid-E1-B10-C0.1 (issue 14): defaults, not tuned; SCAFFOLD keeps a
    # 6.65 MB control variate per client (665 MB), so these checkpoint every 10 rounds.
    Cell("fedprox-noniid-E1-B10-C0.1", 1, "10", 2, 400, 100, 1200, extra=("--strategy", "fedprox", "--mu", "0.01",
                                                                            "--checkpoint-every", "10")),
    Cell("scaffold-noniid-E1-B10-C0.1", 1, "10", 2, 400, 100, 1200, extra=("--strategy", "scaffold",
                                                                             "--checkpoint-every", "10")),
    Cell("fedadam-noniid-E1-B10-C0.1", 1, "10", 2, 400, 100, 1200, extra=("--strategy", "fedadam",
                                                                            "--checkpoint-every", "10")),
    # Each method at its best (issue 28): the fastest cell to 97% of `fedactors sweep`'s grid (client lr for all,
    # server lr for FedAvgM; 100 rounds, checkpoints every 5), continued to 99%. FedAvg and FedProx are the cells
    # above (lr 0.1, mu 0.01).
    *(Cell(f"tune-noniid-E1-B10-{name}", 1, "10", 2, 100, 100, 400, run_id=f"{sweep}-noniid-E1-B10-C0.1-{cell}",
           extra=("--strategy", strategy, *flags, "--checkpoint-every", "5"))
      for name, sweep, cell, strategy, flags in (
          ("fedadam-lr0.05", "tune", "fedadam-lr0.05", "fedadam", ("--lr", "0.05")),
          ("fedyogi-lr0.05", "tune", "fedyogi-lr0.05", "fedyogi", ("--lr", "0.05")),
          ("fedadagrad", "defaults", "fedadagrad", "fedadagrad", ()),
          ("fedavgm-server_lr0.1", "avgm", "fedavgm-server_lr0.1", "fedavgm", ("--server-lr", "0.1")),
          ("scaffold-lr0.03", "tune", "scaffold-lr0.03", "scaffold", ("--lr", "0.03")))),
    # SCAFFOLD at 0.03 went NaN at round 133, before 99%: smaller client rates, from scratch.
    *(Cell(f"tune-noniid-E1-B10-scaffold-lr{lr}", 1, "10", 2, 100, 100, 400,
           extra=("--strategy", "scaffold", "--lr", lr, "--checkpoint-every", "5")) for lr in ("0.02", "0.01")),
    # DP-FedAvg (issue 17): the 2NN, K = 1,000 clients of 60 examples, q = 0.1 (100 expected a round),
    # clip 1, 200 rounds at three noise multipliers and none (clipping alone), IID and non-IID.
    *(Cell(f"dp-2nn-{p}-z{z:g}", 1, "10", 5, 200, 0, 200, task="mnist-2nn", partition=p, target=0.97, clients=1000,
           extra=("--strategy", "dp-fedavg", "--clip", "1.0", "--noise-multiplier", str(z)))
      for p in ("iid", "noniid") for z in (0.0, 0.5, 1.0, 2.0)),
]


def run_json(out: Path) -> dict | None:
    try:
        return json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None


def next_rounds(cell: Cell, info: dict, out: Path) -> int | None:
    """How many rounds the run should have in all, or None when it is done."""
    done = info.get("rounds_completed") or 0
    if info.get("status") != "finished":
        return info["config"]["rounds"]  # interrupted or killed: continue to where it was going
    reached = crossing(cell, evaluated(out))
    if reached is not None:
        past = -(-(reached + PAST_TARGET) // cell.eval_every) * cell.eval_every  # up to an evaluated round
        wanted = min(past, cell.cap)
        return wanted if done < wanted else None
    return min(done + cell.step, cell.cap) if done < cell.cap else None


def evaluated(out: Path) -> list[tuple[int, float]]:
    """(round, accuracy) of every evaluated round the run has written so far."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written
        if row.get("accuracy") is not None:
            rows.append((row["round"], row["accuracy"]))
    return rows


def crossing(cell: Cell, rows: list[tuple[int, float]]) -> int | None:
    """The first of the evaluated `rows` at the cell's target (metrics.jsonl's, not run.json's rounds_to_target:
    a sweep's cell continued here was started with its own target)."""
    return next((r for r, acc in rows if acc >= cell.target), None)


def enough(cell: Cell, out: Path) -> bool:
    """Whether the run has an evaluated round PAST_TARGET rounds past its first crossing of the target."""
    rows = evaluated(out)
    crossed = crossing(cell, rows)
    return crossed is not None and rows[-1][0] >= crossed + PAST_TARGET


def follow(command: list[str], cell: Cell, out: Path, watch: bool) -> int:
    """Run one fedactors command; if watched, stop it (SIGTERM: a clean, resumable stop) once the cell has what it
    needs, instead of running to its round count."""
    process = subprocess.Popen(command)
    while process.poll() is None:
        time.sleep(5)
        if watch and enough(cell, out):
            process.send_signal(signal.SIGTERM)
            process.wait()
            return 0
    return process.returncode


def failed(info: dict | None) -> bool:
    """Whether the run failed after completing rounds (a round failure, e.g. a NaN update: a result, not an error
    of this script)."""
    return info is not None and info.get("status") == "failed" and bool(info.get("rounds_completed"))


def run_cell(cell: Cell, work: Path, fedactors: str) -> None:
    out = work / cell.name
    run_id = cell.id
    while True:
        info = run_json(out)
        if failed(info):
            print(f"{cell.name}: failed after round {info['rounds_completed']}: the cell's result", flush=True)
            break  # a round failure (a client's update went NaN) is what this cell does: kept as its evidence
        closing = False
        if info is None or info.get("status") == "failed":  # never started, or failed before its first round
            command = [fedactors, "run", "--task", cell.task, "--target", str(cell.target), "--clients", str(cell.clients),
                       "--frac", "0.1", "--partition", cell.partition, "--lr", "0.1",
                       "--epochs", str(cell.epochs), "--batch-size", cell.batch, "--seed", str(cell.seed),
                       "--eval-every", str(cell.eval_every), "--rounds", str(cell.first_rounds),
                       "--run-id", run_id, "--out", str(out), *cell.extra]
        elif info.get("status") != "finished" and enough(cell, out):
            # stopped once it had what it needs: close the run at the rounds it completed
            command = [fedactors, "run", "--resume", run_id, "--out", str(out), "--rounds", str(info["rounds_completed"])]
            closing = True
        else:
            rounds = next_rounds(cell, info, out)
            if rounds is None:
                break
            command = [fedactors, "run", "--resume", run_id, "--out", str(out), "--rounds", str(rounds)]
        print("$", " ".join(command), flush=True)
        status = follow(command, cell, out, watch=not closing)
        if status != 0 and not failed(run_json(out)):
            sys.exit(f"{cell.name}: fedactors exited with {status}; run this script again to continue")
    target = DOCS / cell.name
    target.mkdir(exist_ok=True)
    for name in ("metrics.jsonl", "run.json"):
        shutil.copyfile(out / name, target / name)
    info = run_json(out)
    reached = crossing(cell, evaluated(out))
    print(f"{cell.name}: {info['rounds_completed']} rounds, {cell.target:.0%} first at round {reached}, "
          f"best {info['best_accuracy']:.4f}; evidence in {target}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/noniid"), help="where the runs (and checkpoints) go")
    parser.add_argument("--cells", nargs="+", choices=[c.name for c in CELLS], default=[c.name for c in CELLS])
    parser.add_argument("--fedactors", default=shutil.which("fedactors") or "fedactors", help="the command to run")
    args = parser.parse_args()
    for cell in CELLS:
        if cell.name in args.cells:
            run_cell(cell, args.work, args.fedactors)


if __name__ == "__main__":
    main()
