import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from fedactors.errors import ConfigError, DataError
from fedactors.results.report import (
    PAPER_TABLE2,
    format_table,
    format_table2,
    load_run,
    paper_table2_grid,
    rounds_to_target,
    rounds_to_target_interpolated,
)

CONFIG = {
    "clients": 100, "frac": 0.1, "rounds": 50, "epochs": 5, "batch_size": 10, "lr": 0.1, "partition": "noniid",
    "seed": 0, "eval_every": 1, "target": 0.99, "hosts": None, "address": None, "data_dir": None,
    "checkpoint_every": 1, "keep": 2,
}


def make_run(path: Path, accuracies, *, rounds=None, status="finished", wall_seconds=12.5, round_seconds=None,
             **config) -> Path:
    """A run directory as `fedactors run` writes it, by hand."""
    path.mkdir(parents=True)
    rounds = rounds or list(range(1, len(accuracies) + 1))
    round_seconds = round_seconds or [2.0 + 0.1 * i for i in range(len(accuracies))]
    with (path / "metrics.jsonl").open("w") as f:
        for r, acc, sec in zip(rounds, accuracies, round_seconds):
            f.write(json.dumps({"round": r, "accuracy": acc, "loss": 0.1, "round_seconds": sec, "num_updates": 10}) + "\n")
    info = {"config": {**CONFIG, **config}, "fingerprint": "0" * 64, "run_id": path.name, "status": status}
    if wall_seconds is not None:
        info["wall_seconds"] = wall_seconds
    (path / "run.json").write_text(json.dumps(info, indent=2))
    np.save(path / "weights.npy", np.zeros(4, np.float32))
    return path


def history(points):
    return [{"round": r, "accuracy": a} for r, a in points]


# --- rounds to target -------------------------------------------------------------------------

def test_first_crossing_and_interpolation_on_a_curve_with_a_dip():
    # Round 4 dips to 0.95 after 0.985 at round 3; the running max stays 0.985 there.
    h = history([(1, 0.5), (2, 0.9), (3, 0.985), (4, 0.95), (5, 0.992), (6, 0.97)])
    assert rounds_to_target(h, 0.99) == 5
    expected = 4 + (0.99 - 0.985) / (0.992 - 0.985)  # from (4, max so far 0.985) to (5, 0.992)
    naive = 4 + (0.99 - 0.95) / (0.992 - 0.95)  # interpolating the raw dip instead
    got = rounds_to_target_interpolated(h, 0.99)
    assert got == pytest.approx(expected, abs=1e-12)
    assert abs(got - naive) > 0.2


def test_interpolation_between_evaluated_rounds_that_are_apart():
    h = history([(5, 0.9), (10, 0.98), (15, 0.995), (20, 0.999)])
    assert rounds_to_target(h, 0.99) == 15
    assert rounds_to_target_interpolated(h, 0.99) == pytest.approx(10 + 5 * (0.01 / 0.015))


def test_first_evaluated_point_already_at_target_is_that_round():
    h = history([(3, 0.995), (6, 0.999)])
    assert rounds_to_target(h, 0.99) == 3
    assert rounds_to_target_interpolated(h, 0.99) == 3.0


def test_exactly_at_target_is_reached_at_that_round():
    h = history([(1, 0.9), (2, 0.99)])
    assert rounds_to_target(h, 0.99) == 2
    assert rounds_to_target_interpolated(h, 0.99) == pytest.approx(2.0)


def test_never_reaching_the_target_is_none():
    h = history([(1, 0.5), (2, 0.97), (3, 0.9899), (4, 0.98)])
    assert rounds_to_target(h, 0.99) is None
    assert rounds_to_target_interpolated(h, 0.99) is None
    assert rounds_to_target([], 0.99) is None and rounds_to_target_interpolated([], 0.99) is None


def test_rows_out_of_order_and_without_accuracy_are_handled():
    h = history([(3, 0.995), (1, 0.9), (2, None), (4, 0.999)])
    assert rounds_to_target(h, 0.99) == 3
    assert rounds_to_target_interpolated(h, 0.99) == pytest.approx(1 + 2 * (0.09 / 0.095))


def test_interpolated_lies_in_the_bracket_and_rounds_up_to_the_first_crossing():
    rng = np.random.default_rng(0)
    for _ in range(200):
        acc = np.clip(np.cumsum(rng.normal(0.01, 0.03, size=40)) + 0.9, 0, 1)
        h = history(enumerate(acc.tolist(), start=1))
        first, interp = rounds_to_target(h, 0.99), rounds_to_target_interpolated(h, 0.99)
        assert (first is None) == (interp is None)
        if first is not None:
            running = np.maximum.accumulate(acc)
            i = int(np.argmax(running >= 0.99))  # NumPy oracle: index of the first crossing
            assert first == i + 1
            assert (first - 1 < interp <= first) if i > 0 else interp == first
            assert math.ceil(interp - 1e-12) == first


# --- load_run --------------------------------------------------------------------------------

def test_load_run_recomputes_its_numbers_from_metrics(tmp_path):
    acc = [0.6, 0.93, 0.985, 0.95, 0.992, 0.992, 0.97]
    seconds = [3.0, 2.0, 2.5, 9.0, 2.2, 2.4, 2.1]
    run = make_run(tmp_path / "r", acc, round_seconds=seconds, wall_seconds=40.25)
    s = load_run(run)
    assert s.label == "noniid E=5 B=10 C=0.1 lr=0.1"
    assert (s.status, s.run_id, s.evaluated_rounds) == ("finished", "r", 7)
    assert s.rounds == tuple(range(1, 8)) and s.accuracies == tuple(acc)
    assert (s.best_accuracy, s.best_round) == (0.992, 5)  # a tie goes to the earlier round
    assert s.rounds_to_target == 5
    assert s.rounds_to_target_interpolated == pytest.approx(4 + 0.005 / 0.007)
    assert s.median_round_seconds == pytest.approx(float(np.median(seconds)))
    assert s.wall_seconds == 40.25
    assert s.target == 0.99 and s.batch_size == 10 and s.partition == "noniid"


def test_median_round_seconds_counts_a_share_of_each_evaluation_when_not_every_round_is_evaluated(tmp_path):
    run = make_run(tmp_path / "every10", [0.9, 0.95, 0.97], rounds=[10, 20, 30], eval_every=10)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row, (total, evaluation) in zip(rows, [(6.0, 2.0), (5.5, 2.0), (7.0, 3.0)]):
        row.update(round_seconds=total, eval_seconds=evaluation)
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    # 4.0 + 0.2, 3.5 + 0.2, 4.0 + 0.3: the nine rounds between train alike and are not written
    assert load_run(run).median_round_seconds == pytest.approx(4.2)
    info = json.loads((run / "run.json").read_text())
    info["config"]["eval_every"] = 1  # every round evaluated: the rounds' own seconds
    (run / "run.json").write_text(json.dumps(info))
    assert load_run(run).median_round_seconds == pytest.approx(6.0)


def test_load_run_with_another_target_and_full_batch(tmp_path):
    run = make_run(tmp_path / "r", [0.9, 0.96, 0.975], batch_size="inf", partition="iid", frac=0.2, lr=0.05,
                   clients=50, status="running", wall_seconds=None)
    s = load_run(run, target=0.97)
    assert s.label == "iid E=5 B=inf C=0.2 lr=0.05 K=50"
    assert s.batch_size is None and s.wall_seconds is None and s.status == "running"
    assert s.rounds_to_target == 3
    assert s.rounds_to_target_interpolated == pytest.approx(2 + 0.01 / 0.015)
    assert s.reached(0.95) == (2, pytest.approx(1 + 0.05 / 0.06))


def test_not_a_run_directory_says_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"nowhere is not a run directory: it does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty is not a run directory: no run\.json and no metrics\.jsonl"):
        load_run(tmp_path / "empty")
    run = make_run(tmp_path / "r", [0.5])
    (run / "metrics.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"r is not a run directory: no metrics\.jsonl$"):
        load_run(run)


def test_corrupt_files_are_data_errors_naming_the_line(tmp_path):
    run = make_run(tmp_path / "r", [0.5, 0.6, 0.7])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl:2 is not valid JSON"):
        load_run(run)
    (run / "metrics.jsonl").write_text('{"round": 1, "accuracy": "high"}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:1 is not a metrics row"):
        load_run(run)
    (run / "run.json").write_text("{not json")
    with pytest.raises(DataError, match=r"run\.json cannot be read as JSON"):
        load_run(run)
    (run / "run.json").write_text('{"status": "finished"}')
    with pytest.raises(DataError, match=r'no "config" object'):
        load_run(run)


def test_a_half_appended_last_line_is_left_out(tmp_path):
    run = make_run(tmp_path / "r", [0.5, 0.6], status="running", wall_seconds=None)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"round": 3, "accu')
    s = load_run(run)
    assert s.rounds == (1, 2)


# --- tables ----------------------------------------------------------------------------------

def test_plain_table_is_aligned_and_holds_the_numbers(tmp_path):
    a = load_run(make_run(tmp_path / "a", [0.9, 0.985, 0.995]))
    b = load_run(make_run(tmp_path / "bb", [0.9, 0.95], partition="iid", status="interrupted", wall_seconds=None))
    text = format_table([a, b], markdown=False)
    lines = text.splitlines()
    assert len(lines) == 4 and set(lines[1]) == {"-", " "}
    # Every column starts where its rule starts.
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]
    assert len(starts) == 10
    for line in (lines[0], lines[2], lines[3]):
        assert all(line[s - 2:s] == "  " for s in starts[1:])
    assert "0.9950 (3)" in lines[2] and "2.5" in lines[2] and "noniid E=5 B=10 C=0.1 lr=0.1" in lines[2]
    assert "not reached" in lines[3] and "interrupted" in lines[3]


def test_markdown_table(tmp_path):
    a = load_run(make_run(tmp_path / "a|b", [0.9, 0.985, 0.995]))
    lines = format_table([a], markdown=True).splitlines()
    assert lines[0].startswith("| run | configuration |")
    assert re.fullmatch(r"\|(:---\|){3}(---:\|){7}", lines[1])
    assert "a\\|b" in lines[2]
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[2])[1:-1]]
    assert cells[3:8] == ["3", "0.9950 (3)", "0.99", "3", f"{2 + 0.005 / 0.01:.1f}"]


DESIGN_TABLE2 = (
    "FedSGD (E=1, B=inf) 626 / 483; E=5,B=inf 179 / 1000; E=1,B=50 65 / 600; E=20,B=inf 234 / 672; "
    "E=1,B=10 34 / 350; E=5,B=50 29 / 334; E=20,B=50 32 / 426; E=5,B=10 20 / 229; E=20,B=10 18 / 173"
)


def test_paper_table2_is_the_papers_numbers():
    expected = {}
    for e, b, iid, noniid in re.findall(r"E=(\d+),\s*B=(\w+)\)? (\d+) / (\d+)", DESIGN_TABLE2):
        batch = None if b == "inf" else int(b)
        expected[(int(e), batch, "iid")] = int(iid)
        expected[(int(e), batch, "noniid")] = int(noniid)
    assert len(expected) == 18
    assert PAPER_TABLE2 == expected
    assert sorted(paper_table2_grid(), key=str) == sorted(expected, key=str)
    assert paper_table2_grid()[:2] == [(1, None, "iid"), (1, None, "noniid")]  # FedSGD first, as printed


def test_table2_puts_our_rounds_beside_the_papers(tmp_path):
    curve = [0.9, 0.95, 0.97, 0.98, 0.985, 0.995]  # first crossing 6, interpolated 5.5
    runs = [
        load_run(make_run(tmp_path / "iid-lr0.05", [0.9] * 8 + [0.995], partition="iid", lr=0.05)),
        load_run(make_run(tmp_path / "iid-lr0.1", curve, partition="iid")),
        load_run(make_run(tmp_path / "noniid", [0.9, 0.97, 0.981, 0.975])),
        load_run(make_run(tmp_path / "iid-C0.2", [0.995], partition="iid", frac=0.2, epochs=20)),
    ]
    text = format_table2(runs)
    rows = {tuple(line.split()[:3]): line for line in text.splitlines()[2:]}
    assert len(rows) == 18
    iid = rows[("iid", "5", "10")].split()
    # The faster of the two lr runs is shown; ratio = interpolated / paper (20).
    # Then its lr, rounds run, wall time (12.5 s) and median seconds per round (2.0 + 0.1 i, i = 0..5).
    assert iid[3:] == ["20", "6", "5.5", f"{5.5 / 20:.2f}x", "0.1", "6", "12", "2.25", "iid-lr0.1"]
    assert "not reached (best 0.9810)" in rows[("noniid", "5", "10")]
    assert rows[("noniid", "5", "10")].split()[-5:] == ["0.1", "4", "12", "2.15", "noniid"]
    # C = 0.2 is not a Table 2 setting, so E=20, B=10 has no run.
    assert "no run" in rows[("iid", "20", "10")]
    assert sum("no run" in line for line in rows.values()) == 16
    md = format_table2(runs, markdown=True).splitlines()
    assert len(md) == 20 and md[0].startswith("| partition | E | B | paper |")


def test_dp_runs_get_an_epsilon_column(tmp_path):
    plain = load_run(make_run(tmp_path / "plain", [0.9, 0.95]))
    private = make_run(tmp_path / "dp", [0.8, 0.85], strategy="dp-fedavg", clip=1.0, noise_multiplier=2.0)
    rows = [json.loads(line) for line in (private / "metrics.jsonl").read_text().splitlines()]
    (private / "metrics.jsonl").write_text("".join(json.dumps({**r, "epsilon": 0.5 * r["round"]}) + "\n" for r in rows))
    dp = load_run(private)
    assert dp.epsilon == 1.0 and plain.epsilon is None and "dp(S=1,z=2)" in dp.label
    text = format_table([plain, dp])
    assert text.splitlines()[0].rstrip().endswith("epsilon") and text.splitlines()[3].rstrip().endswith("1")
    assert "epsilon" not in format_table([plain])


def test_table2_takes_only_the_papers_model_and_algorithm_and_shows_time(tmp_path):
    curve = [0.9, 0.98, 0.995]
    other = [load_run(make_run(tmp_path / name, curve, partition="iid", **config)) for name, config in [
        ("2nn", {"task": "mnist-2nn"}), ("prox", {"strategy": "fedprox"}), ("krum", {"aggregator": "krum"}),
        ("byz", {"byzantine": 2}), ("bf16", {"precision": "bf16"})]]
    assert all("no run" in line for line in format_table2(other).splitlines()[2:])
    run = make_run(tmp_path / "cnn", curve, partition="iid", round_seconds=[3.0, 4.0, 9.0], wall_seconds=20.0)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "total_wall_seconds": 61.0}))  # resumed: its parts in all
    row = next(line for line in format_table2([*other, load_run(run)]).splitlines() if line.startswith("iid") and
               line.split()[1:3] == ["5", "10"]).split()
    assert row[-5:] == ["0.1", "3", "61", "4.00", "cnn"]


def test_more_targets_add_a_rounds_column_pair_each_and_best_ranks_by_the_first(tmp_path):
    from click.testing import CliRunner

    from fedactors.cli import cli

    # Two cells of one method: "fast" reaches 0.97 first (round 2) but never 0.99; "slow" gets to both later.
    fast = make_run(tmp_path / "fast", [0.9, 0.975, 0.98, 0.985], eval_every=1)
    slow = make_run(tmp_path / "slow", [0.9, 0.95, 0.97, 0.995], lr=0.05)
    a, b = (load_run(p, target=0.97) for p in (fast, slow))
    lines = format_table([a, b], markdown=True, also=(0.99,)).splitlines()
    assert "| rounds to target | interpolated | rounds to 0.99 | interpolated |" in lines[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert rows[0][6:10] == ["2", f"{1 + 0.07 / 0.075:.1f}", "not reached", "-"]
    assert rows[1][6:10] == ["3", "3.0", "4", f"{3 + 0.02 / 0.025:.1f}"]

    result = CliRunner().invoke(cli, ["report", str(fast), str(slow), "--target", "0.97", "--target", "0.99",
                                      "--best", "accuracy", "--markdown"])
    assert result.exit_code == 0, result.output
    assert "| fast |" in result.output and "| slow |" not in result.output and "rounds to 0.99" in result.output
    refused = CliRunner().invoke(cli, ["report", str(fast), "--target", "0.1", "--target", "0.05", "--best", "loss"])
    assert isinstance(refused.exception, ConfigError) and "--best loss takes one --target" in str(refused.exception)


def test_a_label_names_the_server_lr_set_by_hand_and_fedproxs_mu(tmp_path):
    avgm = load_run(make_run(tmp_path / "m", [0.9], strategy="fedavgm", server_lr=0.1))
    prox = load_run(make_run(tmp_path / "p", [0.9], strategy="fedprox", mu=0.01, server_lr=None))
    plain = load_run(make_run(tmp_path / "a", [0.9], strategy="fedadam", server_lr=None))
    assert avgm.label.endswith("fedavgm server_lr=0.1") and prox.label.endswith("fedprox mu=0.01")
    assert plain.label.endswith("lr=0.1 fedadam")


def test_best_keeps_a_method_with_an_optional_setting_apart_from_the_one_without(tmp_path):
    from fedactors.results.report import best_by_method

    # Compression and the client optimizer are part of the method: before, `--best` read only the paper-era
    # fields and kept one of {plain, q8, momentum} as if they were one method tuned three ways.
    runs = [load_run(make_run(tmp_path / name, curve, **config), target=0.97) for name, curve, config in [
        ("plain", [0.9, 0.98], {}), ("plain-lr", [0.9, 0.95, 0.98], {"lr": 0.05}),
        ("q8", [0.9, 0.95, 0.98], {"compress": "q8"}), ("momentum", [0.98], {"client_optimizer": "momentum"})]]
    assert [s.path.name for s in best_by_method(runs)] == ["plain", "q8", "momentum"]


def test_the_table_names_the_data_each_run_read_as_far_as_tells_them_apart(tmp_path):
    # Two LEAF sets in directories of the same name (LEAF's own layout, femnist/data and shakespeare/data), an .npz,
    # and the task's own data (no --data: nothing said, as before).
    specs = {"own": None, "fem": "leaf:/leaf/femnist/data", "shake": "leaf:/leaf/shakespeare/data",
             "npz": "npz:/sets/rotated.npz"}
    runs = [load_run(make_run(tmp_path / name, [0.9, 0.95], **({"data": spec} if spec else {})))
            for name, spec in specs.items()]
    lines = format_table(runs, markdown=True).splitlines()[2:]
    labels = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines}
    assert labels == {"own": "noniid E=5 B=10 C=0.1 lr=0.1", "fem": "noniid E=5 B=10 C=0.1 lr=0.1 data=leaf:femnist/data",
                      "shake": "noniid E=5 B=10 C=0.1 lr=0.1 data=leaf:shakespeare/data",
                      "npz": "noniid E=5 B=10 C=0.1 lr=0.1 data=npz:rotated.npz"}
    # Alone, a run's label names its data by its last path component.
    assert runs[1].label == "noniid E=5 B=10 C=0.1 lr=0.1 data=leaf:data"
