"""Test accuracy against the epsilon spent, for DP-FedAvg runs: the README's figures docs/dp-epsilon.png (fixed and
adaptive clipping) and docs/dp-epsilon-server.png (DP-FedAvg, DP-FedAvgM and DP-FedAdam, all clipping adaptively).

    python docs/runs/dp_epsilon_figure.py [--figure clipping|server] [-o PNG] [--accountant pld|rdp]

Reads each run's metrics.jsonl (the evaluated rounds) and run.json (q, z, delta) under docs/runs/. Each run is one
line, round after round: epsilon grows with the rounds, so a line is what the run would have released had it
stopped there. Epsilon is computed again here, by one accountant for every run (PLD by default), from the run's own
q, z and delta (fedactors.privacy.dp_epsilon); the runs' files hold what their own accountant said (the 2NN runs
with fixed clipping predate --accountant: RDP).

--figure clipping (the default, docs/dp-epsilon.png): the 2NN's dp-2nn-iid-* (left) and the CNN's
dp-cnn-iid-{fixed,adaptive}-z* (right), without a server optimizer. Fixed clipping is solid, adaptive dashed, one
colour per z.

--figure server (docs/dp-epsilon-server.png): the 2NN's adaptive z = 1 runs dp-2nn-iid-adaptive-z1*, one line per
server optimizer and server rate (issue 35); a run that failed ends in a cross. Left every point, right the last
stretch.
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
SERVER_CPU = "Intel Xeon (family 6 model 167), AVX-512 + AMX, KVM, 2 cores shared with other work"
SERVER_RUNS = "dp-2nn-iid-adaptive-z1*"
SERVER_ZOOM = (0.85, 0.95)  # the right panel's accuracy axis: where the runs that train end


def curve(run: Path, accountant: str) -> tuple[list[float], list[float], dict]:
    """(epsilon, accuracy) at each evaluated round of `run`, and its configuration."""
    from fedactors.privacy import dp_epsilon

    config = json.loads((run / "run.json").read_text())["config"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    eps = [dp_epsilon(config["frac"], config["noise_multiplier"], row["round"], config["delta"], accountant)
           for row in rows]
    return eps, [row["accuracy"] for row in rows], config


def optimizer_label(config: dict) -> str:
    """'DP-FedAvg', or e.g. 'DP-FedAvgM, server lr 0.1, momentum 0.9' for a run with a server optimizer."""
    name = config.get("server_optimizer")
    if not name:
        return "DP-FedAvg"
    label = {"fedavgm": "DP-FedAvgM", "fedadam": "DP-FedAdam", "fedadagrad": "DP-FedAdagrad",
             "fedyogi": "DP-FedYogi"}[name]
    label += f", server lr {config['server_lr']:g}"
    return label + (f", momentum {config['server_momentum']:g}" if name == "fedavgm" else "")


def clipping_figure(fig, accountant: str) -> None:
    """docs/dp-epsilon.png: fixed against adaptive clipping, the 2NN left, the CNN right."""
    colours = {0.5: "tab:blue", 1.0: "tab:orange", 2.0: "tab:green"}
    for i, (title, pattern) in enumerate(PANELS):
        ax = fig.add_subplot(1, 2, i + 1)
        for run in sorted(DOCS.glob(pattern)):
            eps, acc, config = curve(run, accountant)
            z = float(config["noise_multiplier"])
            if z == 0:  # clipping alone spends an infinite epsilon: no place on this axis
                continue
            if config.get("server_optimizer"):  # the other figure's
                continue
            adaptive = config["clip"] == "adaptive"
            label = f"z = {z:g}, " + ("adaptive clip (median)" if adaptive else f"fixed clip S = {config['clip']:g}")
            ax.plot(eps, acc, linestyle="--" if adaptive else "-", marker=".", color=colours.get(z, "tab:red"),
                    label=label)
        ax.set_xscale("log")
        ax.set_xlabel(f"epsilon spent at delta 1e-5 ({accountant.upper()} accountant)")
        ax.set_ylabel("test accuracy")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"DP-FedAvg on MNIST: accuracy against epsilon, round by round.\n{CPU}", fontsize=9)


def server_figure(fig, accountant: str) -> None:
    """docs/dp-epsilon-server.png: the server optimizers on the adaptive 2NN, every point left, the end right."""
    from matplotlib.ticker import ScalarFormatter

    runs = []
    for run in sorted(DOCS.glob(SERVER_RUNS)):
        eps, acc, config = curve(run, accountant)
        info = json.loads((run / "run.json").read_text())
        label = optimizer_label(config)
        if info["status"] == "failed":
            label += f" (NaN in round {info['rounds_completed'] + 1})"
        runs.append((label, eps, acc, info["status"] == "failed"))
    runs.sort(key=lambda r: (r[0] != "DP-FedAvg", r[0]))  # DP-FedAvg first, the others by name
    colours = ("black", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for i, zoom in enumerate((None, SERVER_ZOOM)):
        ax = fig.add_subplot(1, 2, i + 1)
        for (label, eps, acc, failed), colour in zip(runs, colours):
            ax.plot(eps, acc, marker=".", color=colour, label=label)
            if failed:
                ax.plot(eps[-1:], acc[-1:], marker="x", markersize=10, color=colour)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel(f"epsilon spent at delta 1e-5 ({accountant.upper()} accountant)")
        ax.set_ylabel("test accuracy")
        if zoom is None:
            ax.set_ylim(0.0, 1.0)
            ax.set_title("every evaluated round", fontsize=10)
        else:
            ax.set_ylim(*zoom)
            ax.set_xlim(left=4.0)
            ax.set_title(f"the last stretch (accuracy {zoom[0]:g}-{zoom[1]:g}, epsilon from 4)", fontsize=10)
            ax.legend(fontsize=8, loc="lower right")  # below the runs that train, right of the one that fails
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("DP-FedAvg with a server optimizer, adaptive clip (median), z = 1: 2NN on MNIST, K = 1,000, q K = 100, "
                 f"E = 1, B = 10, IID, --dp-seed 0.\n{SERVER_CPU}", fontsize=9)


FIGURES = {"clipping": (clipping_figure, "dp-epsilon.png"), "server": (server_figure, "dp-epsilon-server.png")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", choices=tuple(FIGURES), default="clipping",
                        help="clipping: fixed against adaptive (docs/dp-epsilon.png); server: DP-FedAvg, DP-FedAvgM "
                        "and DP-FedAdam with adaptive clipping (docs/dp-epsilon-server.png)")
    parser.add_argument("-o", "--out", type=Path, default=None, help="the PNG to write; default: the figure's in docs/")
    parser.add_argument("--accountant", choices=("pld", "rdp"), default="pld")
    args = parser.parse_args()

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    draw, name = FIGURES[args.figure]
    out = args.out or DOCS.parent / name
    fig = Figure(figsize=(12.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    draw(fig, args.accountant)
    fig.tight_layout()
    fig.canvas.print_png(str(out))
    print(out)


if __name__ == "__main__":
    main()
