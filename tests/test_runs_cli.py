"""`fedactors runs list` and `runs show --config` against real embedded stores holding checkpoints."""

import json
import tomllib

import numpy as np
import pytest
from conftest import run_main

from fedactors.store.checkpoint import Checkpoint, RedisStore
from fedactors.config import RunConfig
from fedactors.store.embedded_redis import EmbeddedRedis


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


def write_data(root):
    """The data the runs below read: an .npz of 28 x 28 images whose name has quotes, and a LEAF set of 8 x 8 digits
    with three writers in femnist/data."""
    x = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    np.savez(root / 'it\'s "x".npz', x_train=x, y_train=np.arange(20) % 10, x_test=x, y_test=np.arange(20) % 10)
    leaf = root / "femnist" / "data"
    for split in ("train", "test"):
        (leaf / split).mkdir(parents=True)
        users = {f"w{u}": {"x": [[float(u)] * 64] * 4, "y": [u, u, u + 1, u + 1]} for u in range(3)}
        (leaf / split / "all.json").write_text(json.dumps(
            {"users": list(users), "num_samples": [4] * 3, "user_data": users}))


CONFIGS = {
    # B = inf (stored "inf"), a cosine schedule (whose rounds count), compression, a data file with quotes in its name
    "plain": {"batch_size": None, "lr_schedule": "cosine:0.1", "rounds": 30, "compress": "q8",
              "data": "npz:{root}/it's \"x\".npz", "task": "mnist-2nn", "hosts": 2},
    # DP with a server optimizer and every DP setting; checkpointed before --accountant (stored without it): RDP
    "dp": {"strategy": "dp-fedavg", "clip": "adaptive", "noise_multiplier": 0.5, "server_optimizer": "fedavgm",
           "dp_seed": 3, "clients": 1000, "frac": 0.01, "target_epsilon": 8.0},
    # natural: the clients the data gave (stored after it was read) are not a setting to give back
    "natural": {"partition": "natural", "data": "leaf:{root}/femnist/data", "task": "digits-mlp", "clients": 3,
                "frac": 0.5},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_runs_show_config_is_a_toml_file_that_run_config_reads_back_to_the_same_settings(name, tmp_path, monkeypatch,
                                                                                         capsys):
    # Prepare: a run stored with these settings as RunConfig writes them (run.json's and the store's form), the data
    # directory it used recorded, as a run records it.
    write_data(tmp_path)
    settings = {k: v.format(root=tmp_path) if k == "data" else v for k, v in CONFIGS[name].items()}
    stored = RunConfig(**{"clients": 10, **settings, "data_dir": str(tmp_path)}).to_dict()
    if name == "dp":
        del stored["accountant"]
    store_run(tmp_path / "runs", "r", stored)

    # Execute: the settings as a file, then that file through `fedactors run --config`'s own reader.
    status, text, err = run_main(monkeypatch, capsys, "runs", "show", "r", "--config", "--runs-dir",
                                 str(tmp_path / "runs"))
    assert status == 0, err
    (tmp_path / "r.toml").write_text(text)
    status, out, err = run_main(monkeypatch, capsys, "run", "--config", str(tmp_path / "r.toml"), "--dry-run",
                                "--json", "--out", str(tmp_path / "replay"))

    # Assert: the same settings; where the store holds none (null, or no accountant), what resuming would take.
    assert status == 0, err
    replayed = json.loads(out)["config"]
    expected = {**stored, **({"accountant": "rdp"} if name == "dp" else {})}
    assert replayed == expected  # natural: its clients counted from the data again, not given (refused with it)
    file = tomllib.loads(text)
    if name == "plain":
        assert file["batch-size"] == "inf" and file["data"] == stored["data"]
    if name == "natural":
        assert "clients" not in file
    assert "round-timeout" not in file and stored["round_timeout"] is None  # null: not set, no line (TOML has none)
    assert not (tmp_path / "replay").exists()


def test_runs_show_config_refuses_settings_this_fedactors_does_not_run_in_one_line(tmp_path, monkeypatch, capsys):
    store_run(tmp_path / "runs", "old", {**RunConfig().to_dict(), "warp": 9})
    status, out, err = run_main(monkeypatch, capsys, "runs", "show", "old", "--config", "--runs-dir",
                                str(tmp_path / "runs"))
    assert status == 2 and out == "", out
    assert err == ("fedactors: error: run old's stored settings are not ones this fedactors runs: unknown configuration "
                   "keys: warp\n")


def test_settings_toml_keeps_any_string_whole():
    from fedactors.cli.runs import settings_toml

    odd = '/data/it\'s "x"\\y\x7f\t\U0001F600'  # quotes, a backslash, DEL and a tab (escaped in TOML), beyond the BMP
    stored = {**RunConfig().to_dict(), "data_dir": odd}
    assert tomllib.loads(settings_toml("r", stored))["data-dir"] == odd
