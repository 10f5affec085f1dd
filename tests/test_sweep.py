import json

import numpy as np
import pytest

from fedactors.config import RunConfig
from fedactors.errors import ConfigError
from fedactors.results.report import PAPER_TABLE2
from fedactors.results.sweep import SweepCell, cell_is_complete, load_sweep_toml, paper_table2_cells, plan_sweep


def test_plan_is_the_full_grid_in_a_fixed_order():
    cells = plan_sweep([1, 5], [10, "inf"], [0.1, 1.0], ["iid", "noniid"])
    assert len(cells) == 2 * 2 * 2 * 2
    assert [c.name for c in cells[:5]] == [
        "iid-E1-B10-C0.1", "iid-E5-B10-C0.1", "iid-E1-Binf-C0.1", "iid-E5-Binf-C0.1", "iid-E1-B10-C1",
    ]
    assert cells[-1] == SweepCell(epochs=5, batch_size=None, frac=1.0, partition="noniid")
    assert len({c.name for c in cells}) == len(cells)
    # The three spellings of B = inf mean the same cell.
    assert plan_sweep([1], [None], [0.1], ["iid"]) == plan_sweep([1], [float("inf")], [0.1], ["iid"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([], [10], [0.1], ["iid"]), r"epochs must be a non-empty list"),
        (([0], [10], [0.1], ["iid"]), r"epochs must hold positive integers, got 0"),
        (([True], [10], [0.1], ["iid"]), r"epochs must hold positive integers, got True"),
        (([1], [-10], [0.1], ["iid"]), r"batch_sizes must be a positive integer or 'inf', got -10"),
        (([1], ["many"], [0.1], ["iid"]), r"batch_sizes .* got 'many'"),
        (([1], [10], [0.0], ["iid"]), r"fracs must hold numbers in \(0, 1\], got 0.0"),
        (([1], [10], [1.5], ["iid"]), r"fracs .* got 1.5"),
        (([1], [10], [0.1], ["federated"]), r"partitions must hold iid, noniid, shards, dirichlet, unbalanced or natural, got 'federated'"),
        (([1, 1], [10], [0.1], ["iid"]), r"cell iid-E1-B10-C0.1 twice"),
        (([1], [None, "inf"], [0.1], ["iid"]), r"cell iid-E1-Binf-C0.1 twice"),
    ],
)
def test_plan_rejects_bad_grids(args, message):
    with pytest.raises(ConfigError, match=message):
        plan_sweep(*args)


def test_paper_table2_cells_are_the_18_settings_at_c_0_1():
    cells = paper_table2_cells()
    assert len(cells) == 18 and all(c.frac == 0.1 for c in cells)
    assert {(c.epochs, c.batch_size, c.partition) for c in cells} == set(PAPER_TABLE2)
    assert cells[0].name == "iid-E1-Binf-C0.1" and cells[1].name == "noniid-E1-Binf-C0.1"


def test_a_cell_makes_its_run_config():
    cfg = SweepCell(20, None, 0.1, "iid").run_config({"rounds": 700, "lr": 0.05, "seed": 3})
    assert cfg == RunConfig(rounds=700, lr=0.05, seed=3, epochs=20, batch_size=None, frac=0.1, partition="iid")


SWEEP = """\
epochs = [1, 5, 20]
batch_sizes = [10, 50, "inf"]
fracs = [0.1]
partitions = ["iid", "noniid"]

[run]
rounds = 500
lr = 0.1
target = 0.99
data_dir = "/data/mnist"
"""


def test_load_sweep_toml(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    sweep = load_sweep_toml(path)
    assert sweep == {
        "epochs": [1, 5, 20], "batch_sizes": [10, 50, None], "fracs": [0.1], "partitions": ["iid", "noniid"],
        "grid": {}, "run": {"rounds": 500, "lr": 0.1, "target": 0.99, "data_dir": "/data/mnist"},
    }
    path.write_text(SWEEP.replace("[run]", "[grid]\nserver_lr = [0.01, 0.1]\n[run]"))  # any setting as an axis
    assert load_sweep_toml(path)["grid"] == {"server_lr": [0.01, 0.1]}
    cells = plan_sweep(sweep["epochs"], sweep["batch_sizes"], sweep["fracs"], sweep["partitions"])
    assert len(cells) == 18 and cells[0].run_config(sweep["run"]).rounds == 500
    # An int where RunConfig has a float is fine (TOML writes 1 for 1.0).
    path.write_text(SWEEP.replace("lr = 0.1", "lr = 1"))
    assert load_sweep_toml(path)["run"]["lr"] == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("fracs = [0.1]", "fracs = [0.1]\nfrac = 0.1"), r"unknown key 'frac'"),
        (("fracs = [0.1]\n", ""), r"missing key 'fracs'"),
        (("fracs = [0.1]", "fracs = 0.1"), r"fracs must be a non-empty list, got 0.1"),
        (("batch_sizes = [10, 50, \"inf\"]", "batch_sizes = [10, 50, inf]"), None),  # TOML's inf is fine
        (("[run]", "run = 3\n[other]"), r"unknown key 'other'"),
        (("rounds = 500", "round = 500"), r"unknown key run.'round'"),
        (("rounds = 500", "epochs = 5"), r"run.epochs is set by each cell; use the grid list 'epochs'"),
        (("rounds = 500", "batch_size = 10"), r"run.batch_size is set by each cell; use .*'batch_sizes'"),
        (("rounds = 500", "rounds = \"ten\""), r"run.rounds must be int, got 'ten'"),
        (("rounds = 500", "rounds = 5.0"), r"run.rounds must be int, got 5.0"),
        (("lr = 0.1", "lr = true"), r"run.lr must be float, got True"),
        (("data_dir = \"/data/mnist\"", "data_dir = 7"), r"run.data_dir must be str, got 7"),
        (("rounds = 500", "clients = 0"), r"--clients must be a positive integer"),  # RunConfig's own check, via each cell
        (("lr = 0.1", "lr = -0.1"), r"--lr must be a positive"),
        (("[run]", "[run\n"), r"is not valid TOML"),
    ],
)
def test_sweep_file_errors_name_the_file_and_the_key(tmp_path, edit, message):
    path = tmp_path / "sweep.toml"
    old, new = edit
    assert old in SWEEP
    path.write_text(SWEEP.replace(old, new, 1))
    if message is None:
        assert load_sweep_toml(path)["batch_sizes"] == [10, 50, None]
        return
    with pytest.raises(ConfigError, match=message) as info:
        load_sweep_toml(path)
    assert str(path) in str(info.value)


def test_missing_sweep_file(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep file .*nope.toml does not exist"):
        load_sweep_toml(tmp_path / "nope.toml")


def write_run(run_dir, *, status, weights=True, config: RunConfig | None = None):
    run_dir.mkdir(parents=True, exist_ok=True)
    config = config or RunConfig()
    info = {"config": config.to_dict(), "fingerprint": config.fingerprint({}), "run_id": "x", "status": status}
    (run_dir / "run.json").write_text(json.dumps(info))
    (run_dir / "metrics.jsonl").write_text('{"round": 1, "accuracy": 0.5}\n')
    if weights:
        np.save(run_dir / "weights.npy", np.zeros(3, np.float32))


def test_cell_completeness(tmp_path):
    assert not cell_is_complete(tmp_path / "absent")
    write_run(tmp_path / "running", status="running", weights=False)
    assert not cell_is_complete(tmp_path / "running")
    write_run(tmp_path / "interrupted", status="interrupted")
    assert not cell_is_complete(tmp_path / "interrupted")
    write_run(tmp_path / "no-weights", status="finished", weights=False)
    assert not cell_is_complete(tmp_path / "no-weights")
    write_run(tmp_path / "done", status="finished")
    assert cell_is_complete(tmp_path / "done")
    (tmp_path / "done" / "run.json").write_text("{trunc")
    assert not cell_is_complete(tmp_path / "done")


def test_a_finished_run_of_another_configuration_is_not_taken_for_the_cell(tmp_path):
    cell = SweepCell(5, 10, 0.1, "noniid")
    expected = cell.run_config({"rounds": 300})
    write_run(tmp_path / cell.name, status="finished", config=expected)
    assert cell_is_complete(tmp_path / cell.name, expected)
    for other in (cell.run_config({"rounds": 300, "lr": 0.05}), cell.run_config({"rounds": 200})):
        with pytest.raises(ConfigError, match=r"holds a finished run of another configuration"):
            cell_is_complete(tmp_path / cell.name, other)
    # Where it ran does not matter.
    assert cell_is_complete(tmp_path / cell.name, cell.run_config({"rounds": 300, "hosts": 4}))


def test_a_natural_cell_leaves_the_clients_to_the_data_and_its_finished_run_is_recognised(tmp_path):
    import dataclasses

    cell = SweepCell(1, 10, 0.3, "natural")
    expected = cell.run_config({"task": "char-lm-tiny", "rounds": 5})
    assert expected.clients is None
    with pytest.raises(ConfigError, match="run.clients does not go with the natural partition"):
        cell.run_config({"task": "char-lm-tiny", "clients": 17})
    write_run(tmp_path / cell.name, status="finished", config=dataclasses.replace(expected, clients=17))  # as it ran
    assert cell_is_complete(tmp_path / cell.name, expected)


@pytest.mark.slow
def test_sweep_data_dir_is_the_directory_every_cells_task_reads(tmp_path):
    """As run's --data-dir: here the only place the task's loader finds its file ($FEDACTORS_DATA holds MNIST)."""
    from conftest import fedactors

    data_dir = tmp_path / "mine"
    data_dir.mkdir()
    x = np.random.default_rng(0).standard_normal((40, 2)).astype(np.float32)
    np.savez(data_dir / "points.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    (tmp_path / "task.py").write_text(
        "import numpy as np\nfrom torch import nn\nfrom fedactors.task import Arrays, Task\n"
        "def load(data_dir):\n    d = np.load(data_dir / 'points.npz')\n    return Arrays(d['x'], d['y'], d['x'], d['y'])\n"
        "task = Task(name='points', model=lambda: nn.Linear(2, 2), load=load, num_classes=2)\n")
    (tmp_path / "grid.toml").write_text(f'epochs = [1]\nbatch_sizes = [10]\nfracs = [1.0]\npartitions = ["iid"]\n[run]\n'
                                        f'task = "{tmp_path}/task.py:task"\nclients = 4\nhosts = 1\n')
    out = tmp_path / "sweep"
    result = fedactors("sweep", "--config", str(tmp_path / "grid.toml"), "--rounds", "1", "--data-dir", str(data_dir),
                       "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "iid-E1-B10-C1" / "run.json").read_text())
    assert run["status"] == "finished" and run["config"]["data_dir"] == str(data_dir)


# ---- Any setting as a grid axis; failed cells; each method at its best --------------------------

def test_grid_axes_are_typed_run_settings_and_name_their_cells():
    from fedactors.results.sweep import parse_grid, plan_sweep

    grid = parse_grid(["lr=0.02,0.1", "server-lr=0.01", "strategy=fedadam,fedyogi", "host_sums=false"])
    assert grid == {"lr": [0.02, 0.1], "server_lr": [0.01], "strategy": ["fedadam", "fedyogi"], "host_sums": [False]}
    cells = plan_sweep([1], [10], [0.1], ["noniid"], grid)
    assert [c.name for c in cells] == [
        "noniid-E1-B10-C0.1-lr0.02-server_lr0.01-fedadam-host_sumsFalse",
        "noniid-E1-B10-C0.1-lr0.02-server_lr0.01-fedyogi-host_sumsFalse",
        "noniid-E1-B10-C0.1-lr0.1-server_lr0.01-fedadam-host_sumsFalse",
        "noniid-E1-B10-C0.1-lr0.1-server_lr0.01-fedyogi-host_sumsFalse",
    ]
    config = cells[3].run_config({"rounds": 7})
    assert (config.lr, config.server_lr, config.strategy, config.rounds, config.host_sums) == (0.1, 0.01, "fedyogi", 7, False)
    with pytest.raises(ConfigError, match="lr is a grid axis and a run setting too"):
        cells[0].run_config({"lr": 0.5})


@pytest.mark.parametrize(("items", "message"), [
    (["lr"], "expected KEY=V1,V2"), (["speed=1,2"], "speed is not a run setting"), (["lr=fast"], "'fast' is not a number"),
    (["epochs=1,5"], "use --epochs"), (["rounds=10"], "every cell runs --rounds"), (["lr=0.1", "lr=0.2"], "given twice"),
])
def test_bad_grid_axes_are_one_clear_error(items, message):
    from fedactors.results.sweep import parse_grid, plan_sweep

    with pytest.raises(ConfigError, match=message):
        plan_sweep([1], [10], [0.1], ["iid"], parse_grid(items))


def test_each_methods_best_cell_is_the_fewest_rounds_to_target_then_the_better_final_value(tmp_path):
    from fedactors.results.report import best_by_method, load_run

    runs = {  # (strategy, lr, accuracies by round, status)
        "adam-a": ("fedadam", 0.1, [0.5, 0.8, 0.9], "finished"), "adam-b": ("fedadam", 0.05, [0.6, 0.9, 0.95], "finished"),
        "adam-c": ("fedadam", 0.3, [0.9], "failed"), "avg-a": ("fedavg", 0.1, [0.4, 0.5, 0.6], "finished"),
        "avg-b": ("fedavg", 0.2, [0.4, 0.5, 0.7], "finished"),
    }
    for name, (strategy, lr, accs, status) in runs.items():
        d = tmp_path / name
        d.mkdir()
        config = RunConfig(strategy=strategy, lr=lr).to_dict()
        (d / "run.json").write_text(json.dumps({"config": config, "status": status, "run_id": name}))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"round": r + 1, "accuracy": a, "loss": 1.0 - a}) + "\n"
                                                 for r, a in enumerate(accs)))
    best = best_by_method([load_run(tmp_path / n, target=0.85) for n in runs])
    # fedadam: adam-c reached 0.9 in round 1 before it failed: a result, and the fastest; fedavg: none reached 0.85,
    # so the better final accuracy.
    assert [s.path.name for s in best] == ["adam-c", "avg-b"]
    by_loss = best_by_method([load_run(tmp_path / n, target=0.07, metric="loss") for n in runs])
    assert [s.path.name for s in by_loss] == ["adam-b", "avg-b"]  # only adam-b's loss gets to 0.07 (round 3)


@pytest.mark.slow
def test_a_sweep_over_learning_rates_reports_a_diverged_cell_as_failed_and_goes_on(tmp_path):
    from conftest import fedactors

    out = tmp_path / "sweep"
    result = fedactors("sweep", "--grid", "task=digits-mlp", "--epochs", "1", "--batch-sizes", "20", "--fracs", "0.5",
                       "--partitions", "iid", "--grid", "lr=0.3,1e9", "--rounds", "3", "--hosts", "2", "--out", str(out),
                       "-q")
    assert result.returncode == 0, result.stderr
    assert "iid-E1-B20-C0.5-digits-mlp-lr1e09: failed: round " in result.stderr
    statuses = {d.name: json.loads((d / "run.json").read_text())["status"] for d in out.iterdir()}
    assert statuses == {"iid-E1-B20-C0.5-digits-mlp-lr0.3": "finished", "iid-E1-B20-C0.5-digits-mlp-lr1e09": "failed"}
    assert "failed" in result.stdout  # the closing report shows the cell, as failed
    best = fedactors("report", *(str(d) for d in sorted(out.iterdir())), "--best", "accuracy", "--target", "0.2")
    assert best.returncode == 0 and "lr0.3" in best.stdout and "lr1e09" not in best.stdout


@pytest.mark.parametrize("setting", [{"compress": "q8"}, {"client_optimizer": "momentum"}, {"weight_decay": 1e-4},
                                     {"lr_schedule": "cosine", "rounds": 300}])
def test_a_finished_cell_with_an_optional_setting_is_its_own_and_no_other(tmp_path, setting):
    # A finished cell whose run set an optional setting (compression, a client optimizer) is that cell's, and not
    # the cell without it: before, the stored run was read with the default settings' fields only, so re-running
    # such a sweep refused its own finished cells and took a plain run for a compressed one.
    cell = SweepCell(5, 10, 0.1, "noniid")
    expected = cell.run_config({"rounds": 300, **setting})
    write_run(tmp_path / cell.name, status="finished", config=expected)
    assert cell_is_complete(tmp_path / cell.name, expected)
    with pytest.raises(ConfigError, match=r"holds a finished run of another configuration"):
        cell_is_complete(tmp_path / cell.name, cell.run_config({"rounds": 300}))


@pytest.mark.parametrize("config", [RunConfig(), RunConfig(compress="topk:0.01", client_optimizer="adam"),
                                    RunConfig(strategy="fedbuff", concurrency=20, buffer=5), RunConfig(lr_schedule="cosine", rounds=50),
                                    RunConfig(batch_size=None, weight_decay=0.01, lr_warmup_steps=3)])
def test_a_stored_configuration_reads_as_the_experiment_it_ran(config):
    from fedactors.config import stored_experiment

    stored = json.loads(json.dumps(config.to_dict()))  # as run.json holds it
    assert stored_experiment(stored) == json.loads(json.dumps(config.experiment()))
