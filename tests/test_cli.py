"""The command line: flags, one-line errors with exit status 2, refusing to overwrite a run."""

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from fedactors.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


def test_help_lists_every_run_flag(runner):
    result = runner.invoke(cli, ["run", "--help"])
    assert result.exit_code == 0
    for flag in ("--clients", "--frac", "--rounds", "--epochs", "--batch-size", "--lr", "--partition", "--seed",
                 "--hosts", "--address", "--data-dir", "--eval-every", "--target", "--out", "--aggregator",
                 "--trim-fraction", "--byzantine", "--attack", "--attack-scale", "--precision"):
        assert flag in result.output


def _fedactors(*args, env=None, cwd=None):
    """The installed console script, as a user runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "fedactors")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frac", "1.5"], "--frac must be in (0, 1], got 1.5"),
        (["--clients", "7"], "--clients 7: noniid cuts 60000 images into 2 x clients shards"),
        (["--clients", "7", "--partition", "iid"], "--clients 7 does not divide the 60000"),
        (["--batch-size", "zero"], "--batch-size must be a positive integer or 'inf'"),
        (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
        (["--lr", "-0.1"], "--lr must be a positive finite number"),
        (["--partition", "dirichlet"], "Invalid value for '--partition'"),
        (["--clients", "many"], "Invalid value for '--clients'"),
        (["--bogus"], "No such option '--bogus'"),
        (["--aggregator", "krum"], "Invalid value for '--aggregator'"),
        (["--trim-fraction", "0.2"], "--trim-fraction applies to --aggregator trimmed-mean only, not fedavg"),
        (["--aggregator", "trimmed-mean", "--trim-fraction", "0.5"], "--trim-fraction must be in [0, 0.5), got 0.5"),
        (["--attack", "nan"], "--attack needs --byzantine N"),
        (["--byzantine", "2", "--attack-scale", "0"], "--attack-scale must be a positive finite number"),
        (["--byzantine", "100"], "--byzantine must be an integer in [0, --clients), got 100"),
        (["--precision", "fp16"], "Invalid value for '--precision'"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(args, message, tmp_path):
    result = _fedactors("run", *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedactors: error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing is created for a refused command


def test_unusable_data_dir_is_one_clear_line(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = _fedactors("run", "--data-dir", str(not_a_dir), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MNIST not found in" in lines[0] and "--data-dir" in lines[0], result.stderr


def test_an_existing_run_is_never_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"precious": True}))
    result = _fedactors("run", "--out", str(out))
    assert result.returncode == 2
    assert "already holds a run" in result.stderr
    assert json.loads((out / "run.json").read_text()) == {"precious": True}


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    out = tmp_path / "out"
    result = _fedactors("run", "--dry-run", "--json", "--clients", "10", "--partition", "iid", "--out", str(out))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["event"] == "dry_run" and plan["hosts"] >= 1 and plan["clients_per_round"] == 1
    assert plan["config"]["clients"] == 10 and plan["threads_per_host"] == 1
    assert not out.exists()


def test_config_file_sets_defaults_that_flags_override(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('clients = 10\npartition = "iid"\nbatch-size = "inf"\nepochs = 3\n')
    result = _fedactors("run", "--config", str(cfg), "--epochs", "2", "--dry-run", "--json")
    plan = json.loads(result.stdout)["config"]
    assert (plan["clients"], plan["partition"], plan["batch_size"], plan["epochs"]) == (10, "iid", "inf", 2)
    cfg.write_text("clientz = 10\n")
    result = _fedactors("run", "--config", str(cfg), "--dry-run")
    assert result.returncode == 2 and "unknown setting 'clientz'" in result.stderr
    cfg.write_text("clients = \n")
    result = _fedactors("run", "--config", str(cfg), "--dry-run")
    assert result.returncode == 2 and "is not valid TOML" in result.stderr
    result = _fedactors("run", "--config", str(cfg), "--config", str(tmp_path / "missing.toml"), "--dry-run")
    assert result.returncode == 2 and "No such file" in result.stderr


def test_ctrl_c_is_remembered_even_if_its_exception_is_swallowed():
    import signal

    from fedactors.cli.run import _CtrlC

    with _CtrlC() as ctrl_c:
        ctrl_c.check()  # nothing yet
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here at the latest
            pytest.fail("SIGINT did not raise KeyboardInterrupt")
        except KeyboardInterrupt:
            pass  # swallowed, as by a library
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()  # the next event stops the run
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_latch_leaves_an_ignored_sigint_ignored():
    import signal

    from fedactors.cli.run import _CtrlC

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _CtrlC() as ctrl_c:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            ctrl_c.check()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
