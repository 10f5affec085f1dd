import json
import struct
from pathlib import Path

import numpy as np
import pytest

from fedactors.errors import ConfigError, DataError
from fedactors.results.plot import legend_labels, plot_runs, y_limits
from fedactors.results.report import load_run

CONFIG = {
    "clients": 100, "frac": 0.1, "rounds": 50, "epochs": 5, "batch_size": 10, "lr": 0.1, "partition": "noniid",
    "seed": 0, "eval_every": 1, "target": 0.99, "hosts": None, "address": None, "data_dir": None,
    "checkpoint_every": 1, "keep": 2,
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(path: Path, accuracies, **config) -> Path:
    """A run directory as `fedactors run` writes it, by hand."""
    path.mkdir(parents=True)
    with (path / "metrics.jsonl").open("w") as f:
        for r, acc in enumerate(accuracies, start=1):
            f.write(json.dumps({"round": r, "accuracy": acc, "round_seconds": 2.0}) + "\n")
    info = {"config": {**CONFIG, **config}, "run_id": path.name, "status": "finished", "wall_seconds": 9.0}
    (path / "run.json").write_text(json.dumps(info))
    np.save(path / "weights.npy", np.zeros(4, np.float32))
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"  # the first chunk: length (4 bytes), type, then width and height
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(1)
    iid = np.minimum(0.999, 0.9 + 0.1 * (1 - np.exp(-np.arange(30) / 6)) + rng.normal(0, 0.002, 30))
    noniid = np.minimum(0.999, 0.7 + 0.29 * (1 - np.exp(-np.arange(30) / 10)))
    return [make_run(tmp_path / "iid", iid.tolist(), partition="iid"), make_run(tmp_path / "noniid", noniid.tolist())]


def test_writes_a_png_500_px_high_and_800_px_wide_plus_its_legend_with_both_curves(tmp_path, two_runs):
    out = plot_runs(two_runs, tmp_path / "acc.png", title="MNIST CNN")
    assert out == tmp_path / "acc.png"
    width, height = png_size(out)
    assert height == 500 and 800 + 200 < width < 800 + 600  # the legend's labels are some 400 px wide
    # Both lines were drawn: pixels of matplotlib's first two colours (C0 blue, C1 orange) are there.
    import matplotlib.image

    rgb = (matplotlib.image.imread(str(out))[..., :3] * 255).round().astype(int)
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        assert (np.abs(rgb - colour).sum(axis=-1) < 30).sum() > 200


def test_y_axis_is_zoomed_keeps_the_target_and_stops_at_one(tmp_path, two_runs):
    runs = [load_run(d) for d in two_runs]
    low, high = y_limits(runs, [0.99])
    late = [a for s in runs for a in s.accuracies[5:]]  # the first 20% (5 at most) of 30 points skipped
    assert min(late) - 0.05 < low < min(late)
    assert low > min(a for s in runs for a in s.accuracies)  # the first rounds fall below the axis
    assert 0.99 < high <= 1.0
    # A target below every curve stays visible.
    low, _ = y_limits(runs, [0.5])
    assert low < 0.5
    assert y_limits(runs, [1.0])[1] == 1.0


def test_legend_tells_apart_runs_with_the_same_configuration(tmp_path):
    a = load_run(make_run(tmp_path / "seed0", [0.9, 0.95]))
    b = load_run(make_run(tmp_path / "seed1", [0.9, 0.96], seed=1))
    c = load_run(make_run(tmp_path / "iid", [0.9, 0.96], partition="iid"))
    assert legend_labels([a, b, c]) == [
        "noniid E=5 B=10 C=0.1 lr=0.1 (seed0)", "noniid E=5 B=10 C=0.1 lr=0.1 (seed1)", "iid E=5 B=10 C=0.1 lr=0.1",
    ]


def test_the_legend_is_beside_the_axes_and_inside_the_figure_however_many_runs(tmp_path):
    from fedactors.results.plot import draw

    few = [load_run(make_run(tmp_path / "a", [0.9, 0.95])), load_run(make_run(tmp_path / "b", [0.9, 0.96], epochs=1))]
    many = [load_run(make_run(tmp_path / f"lr{i}", [0.9, 0.95], lr=0.01 * (i + 1), strategy="fedprox", mu=0.5))
            for i in range(40)]
    for runs in (few, many):
        fig = draw(runs)
        fig.canvas.draw()  # the layout is made when drawn
        (ax,), (legend,) = fig.axes, fig.legends
        box, frame, whole = legend.get_window_extent(), ax.get_window_extent(), fig.bbox
        assert box.x0 > frame.x1  # right of the curves, not on them
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1  # nothing cut
        assert frame.width > 0.8 * 800  # the axes keep their room: the figure grew by the legend
        assert len(legend.get_texts()) == len(runs) + 1  # each run and the target
    assert draw(many).get_size_inches()[1] > 5.0  # 41 entries do not fit 500 px: taller


def test_a_legend_entry_says_how_many_of_its_runs_points_are_off_the_axis(tmp_path):
    from fedactors.results.plot import draw

    early = load_run(make_run(tmp_path / "early", [0.5, 0.9, 0.96, 0.97, 0.98]))
    zoomed = draw([early], y_min=0.95)
    assert zoomed.legends[0].get_texts()[0].get_text() == "noniid E=5 B=10 C=0.1 lr=0.1 [2 of 5 points below the axis]"
    # By default the axis starts below every point after the first ones (20% of them): here the first.
    low, _ = draw([early]).axes[0].get_ylim()
    assert 0.5 < low < 0.9 and legend_labels([early], (low, 1.0))[0].endswith("[1 of 5 points below the axis]")
    # A run that fell after a good start: its early best is above a zoomed axis.
    fell = load_run(make_run(tmp_path / "fell", [0.999] + [0.5] * 9))
    assert legend_labels([fell], y_limits([fell], [0.6], y_min=0.4))[0].endswith("[1 of 10 points above the axis]")
    assert legend_labels([fell], (0.55, 0.6))[0].endswith("[9 of 10 points below the axis, 1 above]")
    assert legend_labels([fell], (0.0, 1.0)) == ["noniid E=5 B=10 C=0.1 lr=0.1"]  # all on it: nothing said


def test_legend_names_the_data_each_run_read_as_far_as_tells_them_apart(tmp_path):
    own = load_run(make_run(tmp_path / "own", [0.9]))
    a = load_run(make_run(tmp_path / "a", [0.9], data="npz:/sets/a/digits.npz"))
    b = load_run(make_run(tmp_path / "b", [0.9], data="npz:/sets/b/digits.npz"))
    assert legend_labels([own, a]) == ["noniid E=5 B=10 C=0.1 lr=0.1", "noniid E=5 B=10 C=0.1 lr=0.1 data=npz:digits.npz"]
    assert legend_labels([own, a, b]) == ["noniid E=5 B=10 C=0.1 lr=0.1",
                                          "noniid E=5 B=10 C=0.1 lr=0.1 data=npz:a/digits.npz",
                                          "noniid E=5 B=10 C=0.1 lr=0.1 data=npz:b/digits.npz"]


def test_bad_outputs_and_empty_runs_are_clear_errors(tmp_path, two_runs):
    with pytest.raises(ConfigError, match=r"name the file \*\.png"):
        plot_runs(two_runs, tmp_path / "acc.pdf")
    with pytest.raises(ConfigError, match=r"directory .*missing does not exist"):
        plot_runs(two_runs, tmp_path / "missing" / "acc.png")
    with pytest.raises(ConfigError, match=r"not a run directory"):
        plot_runs([tmp_path], tmp_path / "acc.png")
    empty = make_run(tmp_path / "empty", [])
    with pytest.raises(DataError, match=r"no evaluated rounds in .*empty"):
        plot_runs([empty], tmp_path / "acc.png")
    assert not (tmp_path / "acc.png").exists()


def test_paper_marks_sit_at_table2s_rounds_in_each_runs_colour_and_only_for_its_cells(tmp_path):
    from fedactors.results.plot import draw

    runs = [load_run(make_run(tmp_path / "e5b10", [0.9, 0.95, 0.97])),  # noniid E=5 B=10: the paper's 229
            load_run(make_run(tmp_path / "e1b50", [0.9, 0.96], epochs=1, batch_size=50)),  # noniid E=1 B=50: 600
            load_run(make_run(tmp_path / "2nn", [0.9, 0.93], task="mnist-2nn")),  # not a Table 2 model
            load_run(make_run(tmp_path / "prox", [0.9, 0.93], strategy="fedprox"))]  # nor its algorithm
    ax = draw(runs, paper=True).axes[0]
    curves = [line for line in ax.lines if line.get_marker() in ("None", None, "")]
    marks = [line for line in ax.lines if line.get_marker() == "v"]
    assert [(list(m.get_xdata()), list(m.get_ydata())) for m in marks] == [([229], [0.99]), ([600], [0.99])]
    assert [m.get_color() for m in marks] == [curves[0].get_color(), curves[1].get_color()]
    assert ax.get_xlim()[1] >= 600 and ax.get_ylim()[0] < 0.99 < ax.get_ylim()[1]
    assert not [line for line in draw(runs).axes[0].lines if line.get_marker() == "v"]  # only when asked


def test_y_min_sets_the_bottom_of_the_accuracy_axis_and_bad_values_are_refused(tmp_path, two_runs):
    from fedactors.results.plot import draw

    runs = [load_run(d) for d in two_runs]
    assert draw(runs).axes[0].get_ylim()[0] < 0.95  # the default follows the curves' low points
    low, high = draw(runs, y_min=0.95).axes[0].get_ylim()
    top = max(0.99, *(a for s in runs for a in s.accuracies))
    assert low == 0.95 and high == pytest.approx(min(1.0, top + 0.1 * (top - 0.95)))  # the margin of the zoomed axis
    # Above every curve and target the top moves to 1.0 rather than turning the axis upside down.
    assert draw(runs, target=0.5, y_min=0.9995).axes[0].get_ylim() == (0.9995, 1.0)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match=rf"--y-min {bad}: the accuracy axis starts at a value in \[0, 1\)"):
            plot_runs(two_runs, tmp_path / "acc.png", y_min=bad)
    assert not (tmp_path / "acc.png").exists()
