"""Test accuracy against the epsilon spent, for DP-FedAvg runs: docs/dp-epsilon.png, the README's figure.

    python docs/runs/dp_epsilon_figure.py [-o docs/dp-epsilon.png] [--accountant pld|rdp]

Reads each run's metrics.jsonl (the evaluated rounds) and run.json (q, z, delta) under docs/runs/: the
2NN's dp-2nn-iid-* (left) and the CNN's dp-cnn-iid-{fixed,adaptive}-z* (right). Each run is one line,
round after round: epsilon grows with the rounds, so a line is what the run would have released had it
stopped there. Epsilon is computed again here, by one accountant for every run (PLD by default), from
the run's own q, z and delta (fedactors.privacy.dp_epsilon); the runs' files hold what their own
accountant said (the 2NN runs predate --accountant: RDP). Fixed clipping is solid, adaptive dashed,
one colour per z.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DOCS = Path(__file__).resolve().parent
PANELS = (
    ("2NN, K = 1,000, q K = 100, E = 1, B = 10 (IID)", "dp-2nn-iid-*"),
    ("CNN, K = 6,000, q K = 120, E = 2, B = 10 (IID)", "dp-cnn-iid-*"),
)
# Where the runs ran (accuracy and epsilon do not depend on it; their files' timings do).
CPU = ("CNN runs and the adaptive 2NN: Intel Xeon (family 6 model 167), AVX-512 + AMX, KVM, 2 cores; "
       "fixed-clip 2NN runs: Zen 4 VM, 2 cores")


def curve(run: Path, accountant: str) -> tuple[list[float], list[float], dict]:
    """(epsilon, accuracy) at each evaluated round of `run`, and its configuration."""
    from fedactors.privacy import dp_epsilon

    config = json.loads((run / "run.json").read_text())["config"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    eps = [dp_epsilon(config["frac"], config["noise_multiplier"], row["round"], config["delta"], accountant)
           for row in rows]
    return eps, [row["accuracy"] for row in rows], config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=DOCS.parent / "dp-epsilon.png")
    parser.add_argument("--accountant", choices=("pld", "rdp"), default="pld")
    args = parser.parse_args()

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    colours = {0.5: "tab:blue", 1.0: "tab:orange", 2.0: "tab:green"}
    for i, (title, pattern) in enumerate(PANELS):
        ax = fig.add_subplot(1, 2, i + 1)
        for run in sorted(DOCS.glob(pattern)):
            eps, acc, config = curve(run, args.accountant)
            z = float(config["noise_multiplier"])
            if z == 0:  # clipping alone spends an infinite epsilon: no place on this axis
                continue
            adaptive = config["clip"] == "adaptive"
            label = f"z = {z:g}, " + ("adaptive clip (median)" if adaptive else f"fixed clip S = {config['clip']:g}")
            ax.plot(eps, acc, linestyle="--" if adaptive else "-", marker=".", color=colours.get(z, "tab:red"),
                    label=label)
        ax.set_xscale("log")
        ax.set_xlabel(f"epsilon spent at delta 1e-5 ({args.accountant.upper()} accountant)")
        ax.set_ylabel("test accuracy")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"DP-FedAvg on MNIST: accuracy against epsilon, round by round.\n{CPU}", fontsize=9)
    fig.tight_layout()
    fig.canvas.print_png(str(args.out))
    print(args.out)


if __name__ == "__main__":
    main()
