"""`fedactors run --config`: settings from a TOML file or a run's run.json, flags over them, bad files refused."""

import json

import pytest

from conftest import ROUNDS, fedactors


def _dry_run_config(*args) -> dict:
    result = fedactors("run", *args, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["config"]


def test_a_runs_stored_settings_replay_it_to_the_same_bytes(reference):
    """`--config RUN_DIR/run.json` resolves to the very configuration the run was made from: every setting, each of
    its type (1 is not 1.0), data_dir included. `fedactors run` builds the run from that configuration alone, the
    dry run's and the run's alike (cli/run.py), and one configuration gives one set of bytes: every comparison with
    the reference (tests/test_tasks.py's recorded digest, tests/test_resume.py, tests/test_cluster.py) runs on it.
    So the replay is checked in a dry run, not in a second Ray run of the reference (37 s)."""
    # Prepare: run A is the reference (ARGS through the CLI, real Ray); only its run.json is given to the dry run.
    stored = json.loads((reference / "run.json").read_text())["config"]

    # Execute
    config = _dry_run_config("--config", str(reference / "run.json"))

    # Assert
    assert json.dumps(config, sort_keys=True) == json.dumps(stored, sort_keys=True)
    assert (config["rounds"], config["seed"], config["hosts"]) == (ROUNDS, 2, 2)  # ARGS's, not the defaults


def test_flags_override_a_replayed_run(reference):
    stored = json.loads((reference / "run.json").read_text())["config"]
    config = _dry_run_config("--config", str(reference / "run.json"), "--rounds", str(ROUNDS + 3), "--seed", "7")
    assert (config["rounds"], config["seed"]) == (ROUNDS + 3, 7)
    assert {k: v for k, v in config.items() if k not in ("rounds", "seed")} == \
        {k: v for k, v in stored.items() if k not in ("rounds", "seed")}


def test_dashed_and_underscored_keys_and_a_sweep_files_run_table(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('[run]\nclients = 10\npartition = "iid"\nbatch_size = 20\nmin-fit-fraction = 0.5\nhost-sums = false\n')
    config = _dry_run_config("--config", str(cfg))
    assert (config["clients"], config["batch_size"], config["min_fit_fraction"], config["host_sums"]) == (10, 20, 0.5, False)


def test_settings_at_their_defaults_are_not_refused_as_idle(tmp_path):
    # A stored configuration lists every setting: trim_fraction and alpha at their defaults are not "given".
    cfg = tmp_path / "exp.toml"
    cfg.write_text('aggregator = "fedavg"\ntrim_fraction = 0.1\nalpha = 0.5\nclients = 10\n')
    assert _dry_run_config("--config", str(cfg))["clients"] == 10
    cfg.write_text("trim_fraction = 0.2\n")  # not the default: idle under fedavg, refused as the flag is
    result = fedactors("run", "--config", str(cfg), "--dry-run")
    assert result.returncode == 2 and "--trim-fraction applies to --aggregator trimmed-mean only" in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("clients = 1.5\n", "clients must be an integer, got 1.5"),  # click would truncate it to 1
        ('clients = "many"\n', "clients must be an integer, got 'many'"),
        ("frac = true\n", "frac must be a number, got True"),
        ('partition = "federated"\n', "partition must be one of iid, noniid, shards, dirichlet, unbalanced, natural"),
        ('batch-size = "zero"\n', "batch-size must be a positive integer or 'inf', got 'zero'"),
        ('clip = "big"\n', "clip must be a positive number or 'adaptive', got 'big'"),
        ("host-sums = 1\n", "host-sums must be true or false, got 1"),
        ("task = 3\n", "task must be a string, got 3"),
        ("clientz = 10\n", "unknown setting 'clientz'"),
        ('out = "elsewhere"\n', "'out' is not a run setting (give --out on the command line)"),
        ("batch-size = 5\nbatch_size = 5\n", "batch-size is given twice"),
        ("clients = \n", "is not valid TOML"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_file_and_key_exit_2(text, message, tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text(text)
    result = fedactors("run", "--config", str(cfg), "--out", str(tmp_path / "out"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fedactors: error: --config {cfg}: ") or lines[0].startswith(f"fedactors: error: --config {cfg} is ")
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.toml", None, "does not exist"),
        ("run.json", "{not json", "is not valid JSON"),
        ("run.json", '{"clients": 10}', "is not a run's run.json"),
        ("run.json", '{"config": {"clients": 10, "warp": 9}}', "unknown setting 'warp'"),
    ],
)
def test_a_missing_or_foreign_file_is_one_line_exit_2(name, text, message, tmp_path):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    result = fedactors("run", "--config", str(path), "--out", str(tmp_path / "out"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"fedactors: error: --config {path}"), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_help_documents_config():
    result = fedactors("run", "--help")
    text = " ".join(result.stdout.split())
    assert "--config FILE.toml|RUN_DIR/run.json" in text and "run.json, which replays that run" in text
