"""`fedactors runs list` against real embedded stores holding checkpoints."""


import numpy as np
from conftest import run_main

from fedactors.checkpoint import Checkpoint, RedisStore
from fedactors.config import RunConfig
from fedactors.embedded_redis import EmbeddedRedis


def store_run(runs_dir, run_id, config: dict):
    """A run with one checkpoint of `config` in its own embedded store, as `fedactors run --out runs_dir/run_id`
    leaves it (stored settings only: nothing here trains)."""
    with EmbeddedRedis(runs_dir / run_id / "checkpoints") as server, RedisStore(server.url) as store:
        store.save(Checkpoint(run_id, 1, np.zeros(4, np.float32), "0" * 64, config, []), keep=1)


def test_runs_list_names_the_data_each_run_read(tmp_path, monkeypatch, capsys):
    # Prepare: four runs alike but for their data; two .npz files share a name, two LEAF sets their directory's.
    runs_dir = tmp_path / "runs"
    plain = RunConfig(clients=10).to_dict()
    data = {"own": None, "a": "npz:/sets/a/d.npz", "b": "npz:/sets/b/d.npz", "femnist": "leaf:/leaf/femnist/data",
            "shakespeare": "leaf:/leaf/shakespeare/data"}
    for run_id, spec in data.items():
        store_run(runs_dir, run_id, {**plain, "data": spec})

    # Execute
    status, out, err = run_main(monkeypatch, capsys, "runs", "list", "--runs-dir", str(runs_dir))

    # Assert: each named by as much of its path as tells it apart; no --data is the task's own.
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:7] == ["run", "id", "status", "round", "task", "data", "configuration"]
    column = header.index("data")
    assert {row.split()[0]: row[column:].split("  ")[0].strip() for row in rows} == {
        "own": "task's own", "a": "npz:a/d.npz", "b": "npz:b/d.npz", "femnist": "leaf:femnist/data",
        "shakespeare": "leaf:shakespeare/data"}
