"""Test accuracy against communication rounds, one line per run, as in McMahan et al. 2017's figures.

Draws on a `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot, no global backend
switch, so it is safe to call from anywhere (a headless node, a test, a process with a GUI).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedactors.errors import ConfigError, DataError
from fedactors.results.report import (
    PAPER_TABLE2_TARGET,
    RunSummary,
    load_run,
    last_clients,
    paper_rounds,
    run_labels,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

X_AXES = ("rounds", "uplink", "virtual")  # plot --x
FIGSIZE_INCHES = (8.0, 5.0)  # without the legend, which widens it (legend_beside)
DPI = 100  # so the PNG is 800 x 500 pixels and the legend's width
LEGEND_PAD_INCHES = 0.15  # the room constrained layout keeps around the legend
# The y-axis starts a little below the lowest accuracy once the first few evaluated rounds are
# past, as the paper's figures do; the steep start would otherwise flatten the part that matters.
SKIP_EARLY_FRACTION = 0.2
SKIP_EARLY_MAX = 5


def plot_runs(run_dirs: list[str | Path], out_png: str | Path, *, target: float | None = None,
              title: str | None = None, paper: bool = False, y_min: float | None = None,
              clients: bool = False, x: str = "rounds") -> Path:
    """Plot the runs in `run_dirs` to the PNG `out_png` and return its path.

    `target` draws one dashed horizontal line; by default each distinct configured target of the
    runs gets one. `paper` marks, on the 99% line and in the run's colour, the paper's rounds to
    99% (Table 2) for each run of one of its cells. `y_min` is the bottom of the accuracy axis
    (default: a margin below the lowest accuracy after the first few evaluated rounds); a run with points off the
    axis says how many in its legend entry, and the legend sits right of the axes (legend_beside). ConfigError
    for a bad output path, run directory or `y_min`, DataError if no run has an evaluated round.
    `clients` shades, around each run's curve, the band from the 10th to the 90th percentile of
    its clients' own accuracies (runs evaluated client by client; DataError if none was). `x` is
    "rounds", "uplink" (the cumulative MB the clients sent: DataError for a run that predates it) or "virtual" (the
    simulated clock's seconds, fedactors.runtime.systems: DataError for a run not on it).
    """
    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise ConfigError(f"-o {out_png}: the plot is written as PNG; name the file *.png")
    if not out_png.parent.is_dir():
        raise ConfigError(f"-o {out_png}: directory {out_png.parent} does not exist")
    if y_min is not None and not 0.0 <= y_min < 1.0:
        raise ConfigError(f"--y-min {y_min}: the accuracy axis starts at a value in [0, 1)")
    if not run_dirs:
        raise ConfigError("no run directories to plot")
    runs = [load_run(d) for d in run_dirs]
    if not any(s.rounds for s in runs):
        raise DataError(f"nothing to plot: no evaluated rounds in {', '.join(str(s.path) for s in runs)}")
    if x not in X_AXES:
        raise ConfigError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    if x == "uplink":
        old = [str(s.path) for s in runs if not s.uplink_mb or None in s.uplink_mb]
        if old:
            raise DataError(f"--x uplink: {', '.join(old)} did not count its bytes (it ran before fedactors counted "
                            "them, or was resumed from such a run)")
    if x == "virtual":
        off = [str(s.path) for s in runs if not s.virtual_seconds or None in s.virtual_seconds]
        if off:
            raise DataError(f"--x virtual: {', '.join(off)} ran without a virtual clock (it needs --client-speed, "
                            "--client-trace, --deadline, --over-select, or --strategy fedbuff or fedasync)")
    if clients and not any(s.clients_curve for s in runs):
        raise DataError("--clients: none of these runs evaluated its clients one by one (natural data with "
                        "client_test, or --eval-clients)")
    fig = draw(runs, target=target, title=title, paper=paper, y_min=y_min, clients=clients, x=x)
    _write(fig, out_png)
    return out_png


def plot_client_distributions(run_dirs: list[str | Path], out_png: str | Path, *, title: str | None = None) -> Path | None:
    """The runs' per-client accuracies at their last evaluated round (draw_clients) to `out_png`, or None (nothing
    written) when none of them has clients.jsonl."""
    runs = [load_run(d) for d in run_dirs]
    tables = [(s, label) for s, label in zip(runs, legend_labels(runs)) if (s.path / "clients.jsonl").is_file()]
    if not tables:
        return None
    _write(draw_clients(tables, title=title), Path(out_png))
    return Path(out_png)


def clients_png(out_png: Path) -> Path:
    """Where `plot --clients` draws the runs' per-client distributions, beside the accuracy figure."""
    return out_png.with_name(out_png.stem + "-clients.png")


def _write(fig: Figure, out_png: Path) -> None:
    # print_png renders at the figure's own size and dpi; savefig would honour a user's
    # matplotlibrc (savefig.bbox = tight, savefig.dpi) and change the pixel size.
    try:
        fig.canvas.print_png(str(out_png))
    except OSError as exc:  # a read-only or full file system: a bad path, one line
        raise ConfigError(f"-o {out_png} cannot be written: {exc.strerror}") from None


def draw_clients(tables: list[tuple[RunSummary, str]], *, title: str | None = None) -> Figure:
    """Each run's clients at its last evaluated round, as the share of clients at or below each accuracy on their
    own split (an empirical CDF: the further right, the better the clients fare): the global model dashed, the
    personalized one solid, in the run's colour."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for s, label in tables:
        round_idx, clients = last_clients(s.path)
        share = np.arange(0, len(clients) + 1) / len(clients)  # from 0, below the worst client
        kinds = [("global", "--", "global model")] + ([("personal", "-", "personalized")]
                                                      if any("personal" in c for c in clients.values()) else [])
        colour = None
        for key, style, name in kinds:
            values = np.sort([c[key] for c in clients.values()])
            values = np.concatenate([values[:1], values])
            (line,) = ax.step(values, share, where="post", linestyle=style, color=colour, linewidth=1.5,
                              label=f"{label}: {name}, round {round_idx} ({len(clients)} clients)")
            colour = line.get_color()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("A client's accuracy on its own test split")
    ax.set_ylabel("Share of clients at or below it")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.4)
    legend_beside(fig, ax)
    return fig


def draw(runs: list[RunSummary], *, target: float | None = None, title: str | None = None,
         paper: bool = False, y_min: float | None = None, clients: bool = False, x: str = "rounds") -> Figure:
    """The figure plot_runs writes, on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    targets = sorted({s.target for s in runs}) if target is None else [target]
    marks = [paper_rounds(s) if paper and x == "rounds" else None for s in runs]
    if any(m is not None for m in marks) and PAPER_TABLE2_TARGET not in targets:
        targets.append(PAPER_TABLE2_TARGET)
    limits = y_limits(runs, targets, y_min, clients)
    fig = Figure(figsize=FIGSIZE_INCHES, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = []
    for s, label, shown in zip(runs, legend_labels(runs), legend_labels(runs, limits), strict=True):
        at = (dict(zip(s.rounds, s.uplink_mb)) if x == "uplink" else dict(zip(s.rounds, s.virtual_seconds))
              if x == "virtual" else {r: r for r in s.rounds})
        (line,) = ax.plot([at[r] for r in s.rounds], s.accuracies, linewidth=1.5, label=shown)
        if clients and s.clients_curve:
            band = [at[r] for r, _ in s.clients_curve]
            ax.fill_between(band, [c["p10"] for _, c in s.clients_curve], [c["p90"] for _, c in s.clients_curve],
                            color=line.get_color(), alpha=0.2, linewidth=0,
                            label=f"{label}: clients' own accuracy, 10th-90th percentile")
        colours.append(line.get_color())
    marked = False  # drawn after the curves, so that the legend lists the runs first
    for rounds, colour in zip(marks, colours, strict=True):
        if rounds is not None:
            ax.plot([rounds], [PAPER_TABLE2_TARGET], marker="v", markersize=9, linestyle="none",
                    color=colour, markeredgecolor="black", markeredgewidth=0.6,
                    label=None if marked else "paper's rounds to 99% (Table 2)", zorder=3)
            marked = True
    for t in targets:
        ax.axhline(t, color="0.3", linestyle="--", linewidth=1.0, label=f"target {t:.2%}".replace(".00%", "%"))
    ax.set_ylim(*limits)
    ax.set_xlim(left=0)
    if x == "rounds":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel({"rounds": "Communication rounds", "uplink": "Uplink: MB sent by the clients, cumulative",
                   "virtual": "Virtual time: seconds on the simulated clients' clock"}[x])
    ax.set_ylabel("Test accuracy")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.4)
    legend_beside(fig, ax)
    return fig


def legend_beside(fig: Figure, ax) -> None:
    """The legend to the right of the axes, off the curves, and the figure widened by it (taller too where the
    legend is), so that the axes keep FIGSIZE_INCHES' room and no label is cut."""
    legend = fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    width, height = legend.get_window_extent(fig.canvas.get_renderer()).size / DPI
    fig.set_size_inches(FIGSIZE_INCHES[0] + width + LEGEND_PAD_INCHES, max(FIGSIZE_INCHES[1], height + LEGEND_PAD_INCHES))


def legend_labels(runs: list[RunSummary], y_range: tuple[float, float] | None = None) -> list[str]:
    """Each run's configuration label (report.run_labels: the data sets named as tell them apart); runs sharing one
    are told apart by their directory name, and a run with nothing to draw (one that failed before its first evaluated
    round) says so. With the accuracy axis' `y_range`, a run with points outside it says how many."""
    labels = run_labels(runs)
    named = [f"{label} ({s.path.name})" if labels.count(label) > 1 else label for s, label in zip(runs, labels)]
    out = []
    for s, label in zip(runs, named):
        if not s.rounds:
            label += f": {s.status}, no evaluated round"
        elif y_range is not None:
            below = sum(a < y_range[0] for a in s.accuracies)
            above = sum(a > y_range[1] for a in s.accuracies)
            n = len(s.accuracies)
            hidden = [f"{below} of {n} points below the axis"] if below else []
            if above:
                hidden.append(f"{above} above" if below else f"{above} of {n} points above the axis")
            if hidden:  # e.g. [3 of 30 points below the axis, 1 above]
                label += f" [{', '.join(hidden)}]"
        out.append(label)
    return out


def y_limits(runs: list[RunSummary], targets: list[float], y_min: float | None = None,
             clients: bool = False) -> tuple[float, float]:
    """(bottom, top): a margin below the lowest accuracy after the early rounds (or `y_min`),
    top <= 1.0, and every target line inside with room to spare (those above `y_min`); with
    `clients` the clients' bands count as well."""
    late = []
    for s in runs:
        skip = min(SKIP_EARLY_MAX, int(len(s.accuracies) * SKIP_EARLY_FRACTION))
        late.extend(s.accuracies[skip:])
        if clients:
            band = s.clients_curve[min(SKIP_EARLY_MAX, int(len(s.clients_curve) * SKIP_EARLY_FRACTION)):]
            late.extend(v for _, c in band for v in (c["p10"], c["p90"]))
    values = late + list(targets)
    low, high = min(values), max(values)
    if y_min is not None:
        top = high + max(0.1 * (high - y_min), 0.005)
        return y_min, min(1.0, top) if top > y_min else 1.0
    margin = max(0.1 * (high - low), 0.005)
    return max(0.0, low - margin), min(1.0, high + margin)
