"""`fedactors plot`, `report` and `sweep` as a user runs them."""

import json
import struct

import pytest
from click.testing import CliRunner

from conftest import fedactors, run_main
from fedactors.cli import cli


def fake_run(path, accuracies, *, epochs=5, batch_size=10, partition="iid", frac=0.1, clients=100, target=0.99):
    """A run directory as `fedactors run` writes one, with a given accuracy curve."""
    path.mkdir(parents=True)
    rows = [{"round": r, "accuracy": a, "loss": 1 - a, "round_seconds": 2.0} for r, a in enumerate(accuracies, 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = {"clients": clients, "frac": frac, "rounds": len(accuracies), "epochs": epochs, "batch_size": batch_size,
              "lr": 0.1, "partition": partition, "seed": 0, "eval_every": 1, "target": target}
    (path / "run.json").write_text(json.dumps({"config": config, "run_id": path.name, "status": "finished", "wall_seconds": 9.0}))
    return path


def test_plot_writes_a_png_of_the_expected_size(tmp_path):
    a = fake_run(tmp_path / "a", [0.9, 0.95, 0.97, 0.985, 0.991])
    b = fake_run(tmp_path / "b", [0.8, 0.9, 0.93, 0.96, 0.97], partition="noniid")
    out = tmp_path / "fig.png"
    result = CliRunner().invoke(cli, ["plot", str(a), str(b), "-o", str(out)])
    assert result.exit_code == 0, result.output
    blob = out.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and blob[12:16] == b"IHDR"
    width, height = struct.unpack(">II", blob[16:24])
    assert height == 500 and width > 800  # 800 x 500 and the legend beside the axes


def test_plot_refuses_a_y_min_outside_the_accuracy_range_in_one_line(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path / "a", [0.9, 0.95, 0.97])
    out = tmp_path / "zoom.png"
    status, _, err = run_main(monkeypatch, capsys, "plot", str(run), "-o", str(out), "--y-min", "1.2")
    assert status == 2
    assert err == "fedactors: error: --y-min 1.2: the accuracy axis starts at a value in [0, 1)\n"
    assert not out.exists()


def test_report_recomputes_rounds_to_target(tmp_path):
    run = fake_run(tmp_path / "a", [0.95, 0.985, 0.97, 0.992, 0.993])
    result = CliRunner().invoke(cli, ["report", str(run), "--markdown"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in next(r for r in lines if r.startswith("| a")).strip("|").split("|"))))
    # First crossing of 0.99 is round 4; the monotone curve is 0.985 at round 3 (the dip to 0.97
    # does not count), so the interpolated figure is 3 + (0.99 - 0.985) / (0.992 - 0.985) = 3.714.
    assert row["rounds to target"] == "4"
    assert float(row["interpolated"]) == pytest.approx(3 + 0.005 / 0.007, abs=0.05)
    assert row["best acc (round)"] == "0.9930 (5)"


def test_report_table2_puts_ours_beside_the_papers(tmp_path):
    run = fake_run(tmp_path / "iid-E5-B10-C0.1", [0.97, 0.98, 0.985, 0.99, 0.991])
    result = CliRunner().invoke(cli, ["report", str(run), "--table2"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.split()[:3] == ["iid", "5", "10"])
    assert "20" in row.split() and "4" in row.split()  # the paper's 20 rounds, our first crossing at 4


def test_report_of_a_directory_that_is_not_a_run_is_one_line(tmp_path):
    result = fedactors("report", str(tmp_path))
    assert result.returncode == 2 and "is not a run directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def failed_natural_run(tmp_path, monkeypatch, capsys):
    """A real `fedactors run --partition natural` that fails before round 1 (its LEAF files hold no example), so its
    run.json keeps `clients: null`: the data that would have counted them was never read."""
    leaf = tmp_path / "leaf"
    for split in ("train", "test"):
        (leaf / split).mkdir(parents=True)
        (leaf / split / "all.json").write_text(json.dumps({"users": [], "num_samples": [], "user_data": {}}))
    out = tmp_path / "runs" / "failed"
    status, _, err = run_main(monkeypatch, capsys, "run", "--task", "digits-mlp", "--partition", "natural",
                              "--data", f"leaf:{leaf}", "--rounds", "2", "--out", str(out))
    assert status == 2, err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["config"]["clients"] is None
    return out


def test_a_failed_run_is_listed_as_failed_and_breaks_neither_report_nor_plot(tmp_path, monkeypatch, capsys):
    failed = failed_natural_run(tmp_path, monkeypatch, capsys)
    done = fake_run(tmp_path / "runs" / "done", [0.9, 0.95, 0.97])
    status, out, err = run_main(monkeypatch, capsys, "report", str(done), str(failed))
    assert status == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert set(rows) == {"done", "failed"}
    assert "finished" in rows["done"] and "0.9700 (3)" in rows["done"]
    assert rows["failed"].split()[1:3] == ["digits-mlp", "natural"] and " failed " in rows["failed"]
    figure = tmp_path / "fig.png"
    status, _, err = run_main(monkeypatch, capsys, "plot", str(done), str(failed), "-o", str(figure))
    assert status == 0, err
    blob = figure.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", blob[16:24])[1] == 500


def test_an_interrupted_sweep_skips_finished_cells(tmp_path):
    common = ["--batch-sizes", "50", "--fracs", "0.05", "--partitions", "iid", "--rounds", "1", "--hosts", "2",
              "--out", str(tmp_path / "sw"), "--quiet"]
    first = fedactors("sweep", "--epochs", "1", *common)
    assert first.returncode == 0, first.stderr
    done = tmp_path / "sw" / "iid-E1-B50-C0.05"
    stamp = (done / "weights.npy").stat().st_mtime_ns
    plan = fedactors("sweep", "--epochs", "1,2", *common, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "[1/2] iid-E1-B50-C0.05: finished; 0 rounds to run" in plan.stdout
    assert "[2/2] iid-E2-B50-C0.05: new; 1 rounds to run" in plan.stdout and "1 rounds in all" in plan.stdout
    assert not (tmp_path / "sw" / "iid-E2-B50-C0.05").exists()  # nothing started
    # The same sweep grown by a cell: the finished one is skipped, the new one runs.
    second = fedactors("sweep", "--epochs", "1,2", *common)
    assert second.returncode == 0, second.stderr
    assert "[1/2] iid-E1-B50-C0.05: complete, skipped" in second.stdout
    assert (done / "weights.npy").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "sw" / "iid-E2-B50-C0.05" / "run.json").read_text())["status"] == "finished"
    report_lines = [line for line in second.stdout.splitlines() if line.startswith("iid-E")]
    assert len(report_lines) == 2


def test_sweep_needs_a_grid(tmp_path):
    result = fedactors("sweep", "--out", str(tmp_path / "sw"))
    assert result.returncode == 2 and "a sweep needs --epochs and --batch-sizes" in result.stderr
    result = fedactors("sweep", "--epochs", "1,x", "--batch-sizes", "10", "--out", str(tmp_path / "sw"))
    assert result.returncode == 2 and "'x' is not a valid value" in result.stderr


def test_sweep_dry_run_names_the_round_a_cell_would_resume_after(tmp_path):
    import numpy as np

    from fedactors.store.checkpoint import Checkpoint, RedisStore
    from fedactors.store.embedded_redis import EmbeddedRedis
    from fedactors.results.sweep import SweepCell

    cell = SweepCell(1, 50, 0.05, "iid")
    config = cell.run_config({"rounds": 7})
    with EmbeddedRedis(tmp_path / "sw" / cell.name / "checkpoints") as server, RedisStore(server.url) as store:
        store.save(Checkpoint(f"sw-{cell.name}", 3, np.zeros(4, np.float32), config.fingerprint({}), config.to_dict(), []),
                   keep=1)
    plan = fedactors("sweep", "--epochs", "1", "--batch-sizes", "50", "--fracs", "0.05", "--partitions", "iid",
                     "--rounds", "7", "--out", str(tmp_path / "sw"), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert f"[1/1] {cell.name}: resumable after round 3; 4 rounds to run" in plan.stdout


def test_report_names_the_data_a_run_read(tmp_path):
    own = fake_run(tmp_path / "own", [0.9, 0.95])
    other = fake_run(tmp_path / "other", [0.9, 0.95])
    info = json.loads((other / "run.json").read_text())
    info["config"]["data"] = "npz:/sets/rotated.npz"
    (other / "run.json").write_text(json.dumps(info))
    result = CliRunner().invoke(cli, ["report", str(own), str(other)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[2:] if line.strip()}
    assert "data=npz:rotated.npz" in rows["other"] and "data=" not in rows["own"]
