"""The command line: flags, one-line errors with exit status 2, refusing to overwrite a run."""

import errno
import json
import os
import re
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from conftest import run_main
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
        (["--clients", "0"], "--clients must be a positive integer, got 0"),
        (["--partition", "dirichlet", "--alpha", "0"], "--alpha must be a positive number, got 0.0"),
        (["--alpha", "0.3"], "--alpha applies to --partition dirichlet only, not noniid"),
        (["--task", "no-such-task"], "--task no-such-task: not a built-in task (mnist-cnn, mnist-2nn, femnist-cnn, digits-mlp, shakespeare-lstm, char-lm-tiny, mnist-cnn-bn)"),
        (["--task", "fedactors.nothing:task"], "--task fedactors.nothing:task: cannot import fedactors.nothing"),
        (["--task", "fedactors.config:PARTITIONS"], "PARTITIONS is a tuple, not a fedactors.task.Task"),
        (["--data", "csv:x.csv"], "--data must be npz:PATH, leaf:DIR or hf:DIR, got 'csv:x.csv'"),
        (["--batch-size", "zero"], "--batch-size must be a positive integer or 'inf'"),
        (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
        (["--lr", "-0.1"], "--lr must be a positive finite number"),
        (["--partition", "federated"], "Invalid value for '--partition'"),
        (["--clients", "many"], "Invalid value for '--clients'"),
        (["--bogus"], "No such option '--bogus'"),
        (["--aggregator", "bulyan"], "Invalid value for '--aggregator'"),
        (["--strategy", "fedprox", "--mu", "-1"], "--mu must be a number >= 0, got -1.0"),
        (["--mu", "0.1"], "--mu applies to --strategy fedprox only, not fedavg"),
        (["--aggregator", "krum", "--krum-f", "5"], "--aggregator krum with --krum-f 5 needs at least 13 clients a round"),
        (["--strategy", "fedadam", "--tau", "0"], "--tau must be a positive number"),
        (["--trim-fraction", "0.2"], "--trim-fraction applies to --aggregator trimmed-mean only, not fedavg"),
        (["--aggregator", "trimmed-mean", "--trim-fraction", "0.5"], "--trim-fraction must be in [0, 0.5), got 0.5"),
        (["--attack", "nan"], "--attack needs --byzantine N"),
        (["--byzantine", "2", "--attack-scale", "0"], "--attack-scale must be a positive finite number"),
        (["--byzantine", "100"], "--byzantine must be an integer in [0, --clients), got 100"),
        (["--precision", "fp16"], "Invalid value for '--precision'"),
        (["--aggregator", "median", "--host-sums"], "--host-sums applies to --aggregator fedavg with --strategy fedavg, "
                                                     "fedavgm, fedadagrad, fedadam, fedyogi, fedprox, not --aggregator median"),
        (["--strategy", "scaffold", "--host-sums"], "not --aggregator fedavg --strategy scaffold"),
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
    assert result.returncode == 2 and "missing.toml does not exist" in result.stderr


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_signal_is_remembered_even_if_its_exception_is_swallowed(name):
    import signal

    from fedactors.runtime.interrupts import Interrupted, Interrupts as _Interrupts

    signum = getattr(signal, name)
    before = signal.getsignal(signum)
    with _Interrupts() as interrupts:
        interrupts.check()  # nothing yet
        try:
            os.kill(os.getpid(), signum)
            time.sleep(1)  # the handler runs here at the latest
            pytest.fail(f"{name} did not raise")
        except KeyboardInterrupt as exc:
            assert isinstance(exc, Interrupted) and exc.signum == signum  # swallowed, as by a library
        with pytest.raises(Interrupted):
            interrupts.check()  # the next event stops the run
    assert signal.getsignal(signum) is before


def test_stop_signal_latch_leaves_an_ignored_signal_ignored():
    import signal

    from fedactors.runtime.interrupts import Interrupts as _Interrupts

    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGHUP)}
    try:
        with _Interrupts() as interrupts:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGHUP)
            interrupts.check()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---- How a run ends, driven in-process with the experiment replaced ------------------------------

SMALL = ["--clients", "10", "--partition", "iid", "--rounds", "1"]


def _one_round(config, on_event, *, run_id, store_url, round_done=1, checkpoint=True, **kwargs):
    """A stand-in for experiment.run: one evaluated round (`round_done`), checkpointed (unless not `checkpoint`),
    and the final weights."""
    import numpy as np

    from fedactors.store.checkpoint import Checkpoint, RedisStore

    identity = {"digest": "stand-in"}
    with RedisStore(store_url) as store:
        if checkpoint:
            store.save(Checkpoint(run_id, round_done, np.zeros(4, np.float32), config.fingerprint(identity),
                                  config.to_dict(), [], extra={"identity": identity}), keep=1)
    on_event({"type": "identity", "fingerprint": config.fingerprint(identity), "identity": identity, "partition": {}})
    on_event({"type": "start", "hosts": [], "clients_per_round": 1})
    on_event({"type": "round", "round": round_done, "accuracy": 0.5, "loss": 1.0, "train_loss": 1.0,
              "round_seconds": 1.0, "train_seconds": 1.0, "wait_seconds": 1.0, "aggregate_seconds": 0.0,
              "eval_seconds": 0.0, "num_updates": 1, "clients": [0], "retried": [], "dropped": [], "rejected": [],
              "byzantine": [], "failures": [], "hosts": {}, "lost_hosts": {}, "checkpoint_seconds": None})
    return {"type": "done", "round": round_done, "weights": np.zeros(4, np.float32)}


def test_an_unexpected_error_fails_the_run_with_one_line_and_keeps_the_traceback(tmp_path, monkeypatch, capsys):
    from fedactors.runtime import experiment

    def broken(config, on_event, **kwargs):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr(experiment, "run", broken)
    out = tmp_path / "run"
    status, _, err = run_main(monkeypatch, capsys, "run", *SMALL, "--out", str(out))
    assert status == 1
    assert err.strip().splitlines() == [f"fedactors: error: unexpected ValueError: a bug deep inside (traceback in {out / 'error.log'})"]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "unexpected ValueError: a bug deep inside"
    log = (out / "error.log").read_text()
    assert "Traceback" in log and "in broken" in log and "ValueError: a bug deep inside" in log


def test_error_log_goes_once_a_resume_gets_past_the_failure_it_describes(tmp_path, monkeypatch, capsys):
    from fedactors.runtime import experiment
    from fedactors.errors import DataError

    def round_then_bug(config, on_event, **kwargs):
        _one_round(config, on_event, **kwargs)
        raise ValueError("a bug after round 1")

    def no_data(config, on_event, **kwargs):
        raise DataError("MNIST not found (offline)")

    out = tmp_path / "run"
    monkeypatch.setattr(experiment, "run", round_then_bug)
    status, _, _ = run_main(monkeypatch, capsys, "run", *SMALL, "--rounds", "2", "--out", str(out), "--run-id", "r")
    assert status == 1 and "ValueError: a bug after round 1" in (out / "error.log").read_text()
    # A resume refused before it ran leaves the directory as it was: the failed run and its traceback.
    monkeypatch.setattr(experiment, "run", no_data)
    status, _, err = run_main(monkeypatch, capsys, "run", "--resume", "r", "--out", str(out))
    assert status == 2 and "MNIST not found" in err
    assert "a bug after round 1" in (out / "error.log").read_text()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    monkeypatch.setattr(experiment, "run", lambda config, on_event, **kw: _one_round(config, on_event, round_done=2, **kw))
    status, _, err = run_main(monkeypatch, capsys, "run", "--resume", "r", "--out", str(out))
    assert status == 0, err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and "error" not in info and not (out / "error.log").exists()


def test_a_run_that_failed_before_its_first_round_does_not_block_the_same_command(tmp_path, monkeypatch, capsys):
    from fedactors.runtime import experiment
    from fedactors.errors import DataError

    def no_data(config, on_event, **kwargs):
        raise DataError("MNIST not found (offline)")

    out = tmp_path / "run"
    monkeypatch.setattr(experiment, "run", no_data)
    status, _, err = run_main(monkeypatch, capsys, "run", *SMALL, "--out", str(out), "--run-id", "first")
    assert status == 2 and "MNIST not found" in err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "MNIST not found (offline)"  # the line the user saw
    status, _, err = run_main(monkeypatch, capsys, "run", "--resume", "first", "--out", str(out))
    assert status == 2 and "stopped before its first checkpoint" in err and "start it again" in err
    monkeypatch.setattr(experiment, "run", _one_round)
    status, stdout, err = run_main(monkeypatch, capsys, "run", *SMALL, "--out", str(out), "--run-id", "first")
    assert status == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    # Now it holds a round: the same command is refused, and nothing is overwritten.
    before = (out / "run.json").read_bytes()
    status, _, err = run_main(monkeypatch, capsys, "run", *SMALL, "--out", str(out))
    assert status == 2 and "already holds a run" in err and (out / "run.json").read_bytes() == before


def _fails_after_round_1(*, checkpoint):
    """A stand-in for experiment.run whose run evaluates round 1 (checkpointed or not) and then fails, as a round
    that diverged does."""
    from fedactors.errors import RoundFailed

    def run(config, on_event, **kwargs):
        _one_round(config, on_event, checkpoint=checkpoint, **kwargs)
        raise RoundFailed("round 2 failed: every update was NaN")

    return run


SLOW_TASK = """
import time
from pathlib import Path

from fedactors.task import Task


def load(data_dir):
    Path(__file__).with_name("loading").write_text("")  # the run is past its run.json and before round 1
    time.sleep(600)


def model():
    from torch import nn

    return nn.Linear(2, 2)


task = Task(name="slow", model=model, load=load, num_classes=2)
"""


def test_a_run_killed_before_its_first_checkpoint_leaves_its_directory_to_the_command_that_made_it(
        tmp_path, monkeypatch, capsys):
    """SIGKILL leaves run.json `running`. While that run lives its directory is refused; once it is dead, --resume
    says to start it again with the command that started it, and that command is not refused."""
    from conftest import EXE
    from fedactors.runtime import experiment

    (tmp_path / "slow.py").write_text(SLOW_TASK)
    out = tmp_path / "run"
    command = ["run", *SMALL, "--task", f"{tmp_path / 'slow.py'}:task", "--run-id", "first", "--out", str(out)]
    monkeypatch.setattr(experiment, "run", _one_round)
    with subprocess.Popen([EXE, *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True) as proc:
        try:
            deadline = time.monotonic() + 120
            while not (tmp_path / "loading").exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
            before = (out / "run.json").read_bytes()
            assert json.loads(before)["status"] == "running"
            # It is alive: the same command into its directory is refused, and nothing of it is touched.
            status, _, err = run_main(monkeypatch, capsys, *command)
            assert status == 2 and f"--out {out} is in use" in err, err
            assert (out / "run.json").read_bytes() == before
        finally:
            proc.kill()
    assert proc.returncode == -9 and json.loads((out / "run.json").read_text())["status"] == "running"
    status, _, err = run_main(monkeypatch, capsys, "run", "--resume", "first", "--out", str(out))
    assert status == 2 and "stopped before its first checkpoint" in err, err
    assert "start it again with the command that started it" in err
    status, _, err = run_main(monkeypatch, capsys, *command)
    assert status == 0, err
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_a_run_with_an_evaluated_round_but_no_checkpoint_is_not_told_to_start_again_in_place(
        tmp_path, monkeypatch, capsys):
    """With --checkpoint-every 5 a run can fail after evaluated rounds and before its first checkpoint: those rounds
    are results, so the command that started it is refused there, and --resume says to use another --out."""
    from fedactors.runtime import experiment

    out = tmp_path / "run"
    command = ["run", *SMALL, "--rounds", "5", "--checkpoint-every", "5", "--run-id", "first", "--out", str(out)]
    monkeypatch.setattr(experiment, "run", _fails_after_round_1(checkpoint=False))
    status, _, err = run_main(monkeypatch, capsys, *command)
    assert status == 1 and "every update was NaN" in err
    status, _, err = run_main(monkeypatch, capsys, "run", "--resume", "first", "--out", str(out))
    assert status == 2 and "stopped before its first checkpoint" in err
    assert f"its evaluated rounds stay in {out}: start it again with another --out" in err, err
    before = (out / "metrics.jsonl").read_bytes()
    status, _, err = run_main(monkeypatch, capsys, *command)
    assert status == 2 and "already holds a run" in err and (out / "metrics.jsonl").read_bytes() == before


def test_runs_list_and_show_say_failed_for_a_run_that_failed(tmp_path, monkeypatch, capsys):
    """The store is told when a run finishes, not when it fails: run.json's `failed` is what the list shows."""
    from fedactors.runtime import experiment

    runs_dir = tmp_path / "runs"
    monkeypatch.setattr(experiment, "run", _fails_after_round_1(checkpoint=True))
    status, _, err = run_main(monkeypatch, capsys, "run", *SMALL, "--rounds", "2", "--run-id", "broke",
                              "--out", str(runs_dir / "broke"))
    assert status == 1 and json.loads((runs_dir / "broke" / "run.json").read_text())["status"] == "failed", err
    monkeypatch.setattr(experiment, "run", _one_round)
    status, _, err = run_main(monkeypatch, capsys, "run", *SMALL, "--run-id", "fine", "--out", str(runs_dir / "fine"))
    assert status == 0, err
    status, out, err = run_main(monkeypatch, capsys, "runs", "list", "--runs-dir", str(runs_dir))
    assert status == 0, err
    assert {row.split()[0]: row.split()[1:3] for row in out.splitlines()[1:]} == \
        {"broke": ["failed", "1"], "fine": ["finished", "1"]}
    status, out, err = run_main(monkeypatch, capsys, "runs", "show", "broke", "--runs-dir", str(runs_dir))
    assert status == 0 and json.loads(out)["status"] == "failed", err


def test_the_resume_command_shown_can_be_pasted_into_a_shell(tmp_path, monkeypatch, capsys):
    """An --out with a space and a quote: the command printed on interrupt, and the one a refusal suggests, are
    quoted, so that the shell splits them back into the same words."""
    import shlex
    import signal

    from fedactors.runtime import experiment

    def interrupted(config, on_event, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, before round 1
        time.sleep(5)

    out = tmp_path / "sp ace" / "it's"
    monkeypatch.setattr(experiment, "run", interrupted)
    status, stdout, err = run_main(monkeypatch, capsys, "run", *SMALL, "--run-id", "paused", "--out", str(out))
    assert status == 130, err
    shown = next(line for line in stdout.splitlines() if "continue with: " in line).split("continue with: ", 1)[1]
    assert shlex.split(shown) == ["fedactors", "run", "--resume", "paused", "--out", str(out)]
    # Started again there and finished, the directory holds a result: the refusal's suggestion is quoted too.
    monkeypatch.setattr(experiment, "run", _one_round)
    status, _, err = run_main(monkeypatch, capsys, "run", *SMALL, "--run-id", "paused", "--out", str(out))
    assert status == 0, err
    status, _, err = run_main(monkeypatch, capsys, "run", *SMALL, "--out", str(out))
    assert status == 2 and "resume it: " in err, err
    assert shlex.split(err.strip().split("resume it: ", 1)[1]) == ["fedactors", "run", "--resume", "paused", "--out",
                                                                   str(out)]


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nothing can be written in, for root as well: a read-only tmpfs mounted there (EROFS); for
    another user, mode 555 (EACCES)."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
    else:
        path.chmod(0o555)
    try:
        with pytest.raises(OSError):
            (path / "probe").write_text("")
        yield path
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(path)], check=True)
        else:
            path.chmod(0o755)


@pytest.mark.parametrize("where", ["inside", "itself"])
def test_a_read_only_out_is_one_line_and_exit_2(read_only_dir, where):
    out = read_only_dir / "run" if where == "inside" else read_only_dir
    result = _fedactors("run", *SMALL, "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fedactors: error: {out}") and "cannot be written" in lines[0], \
        result.stderr
    assert lines[0].endswith(os.strerror(errno.EROFS if os.geteuid() == 0 else errno.EACCES)), result.stderr


def test_a_plot_into_a_read_only_directory_is_one_line_and_exit_2(read_only_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"round": 1, "accuracy": 0.5}) + "\n")
    config = {"clients": 10, "frac": 0.1, "epochs": 1, "batch_size": 10, "partition": "iid", "lr": 0.1, "target": 0.99}
    (run / "run.json").write_text(json.dumps({"config": config, "run_id": "run", "status": "finished"}))
    result = _fedactors("plot", str(run), "-o", str(read_only_dir / "fig.png"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"fedactors: error: -o {read_only_dir / 'fig.png'} cannot be written: "
                                                  f"{os.strerror(errno.EROFS if os.geteuid() == 0 else errno.EACCES)}"]


def test_runs_list_names_each_runs_task(tmp_path, monkeypatch, capsys):
    from conftest import REPO
    from fedactors.runtime import experiment

    monkeypatch.setattr(experiment, "run", _one_round)
    runs_dir = tmp_path / "runs"
    for run_id, task in [("cnn", "mnist-cnn"), ("digits", "digits-mlp"), ("mine", f"{REPO}/examples/spirals.py:task")]:
        status, _, err = run_main(monkeypatch, capsys, "run", *SMALL, "--task", task, "--run-id", run_id,
                                  "--out", str(runs_dir / run_id))
        assert status == 0, err
    status, out, err = run_main(monkeypatch, capsys, "runs", "list", "--runs-dir", str(runs_dir))
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:7] == ["run", "id", "status", "round", "task", "data", "configuration"]
    column = header.index("task")
    assert {row.split()[0]: row[column:].split()[0] for row in rows} == \
        {"cnn": "mnist-cnn", "digits": "digits-mlp", "mine": "spirals.py:task"}  # a file by its name: `show` has the path


def test_run_json_records_the_data_directory_actually_used(tmp_path, monkeypatch, capsys):
    from fedactors.runtime import experiment

    monkeypatch.setattr(experiment, "run", _one_round)
    monkeypatch.setenv("FEDACTORS_DATA", str(tmp_path / "from-env"))
    status, _, err = run_main(monkeypatch, capsys, "run", *SMALL, "--out", str(tmp_path / "run"))
    assert status == 0, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["data_dir"] == str(tmp_path / "from-env")


def test_dry_run_says_where_mnist_is_read_and_whether_it_is_there(tmp_path, mnist_dir):
    present = _fedactors("run", "--dry-run", "--json", *SMALL, "--out", str(tmp_path / "a"))
    plan = json.loads(present.stdout)
    assert plan["data_dir"] == str(mnist_dir) and plan["data_present"] is True
    absent = _fedactors("run", "--dry-run", *SMALL, "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "b"))
    assert f"task mnist-cnn; data: {tmp_path / 'empty'} (absent: it would be downloaded there)" in absent.stdout


def test_dry_run_of_a_task_that_is_not_mnist_shows_what_it_reads(tmp_path, mnist_dir, runner):
    """Not the MNIST directory: the .npz, a user's loader's directory, or nothing for a built-in's own data."""
    import numpy as np

    from conftest import REPO

    def plan(*args):
        result = runner.invoke(cli, ["run", "--dry-run", "--json", *SMALL, "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 0, result.output
        found = json.loads(result.output)
        return found["data"], found["data_dir"], found["data_present"]

    assert plan("--task", "digits-mlp") == ("task digits-mlp's own (it reads no data directory)", None, None)
    spirals = f"{REPO}/examples/spirals.py:task"
    given = tmp_path / "theirs"
    assert plan("--task", spirals, "--data-dir", str(given)) == \
        (f"task spirals's own loader, given {given}", str(given), None)  # what it reads there only it knows
    x = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(20) % 10, x_test=x, y_test=np.arange(20) % 10)
    assert plan("--task", "mnist-2nn", "--data", f"npz:{tmp_path}/d.npz") == (f"npz:{tmp_path}/d.npz", None, True)
    text = runner.invoke(cli, ["run", "--dry-run", *SMALL, "--task", "digits-mlp", "--out", str(tmp_path / "o")]).output
    assert "task digits-mlp; data: task digits-mlp's own (it reads no data directory)" in text and str(mnist_dir) not in \
        text.split("would run")[1]  # the configuration above it records the directory, as run.json does


def test_help_names_every_json_event_and_the_redis_variable(runner):
    text = " ".join(runner.invoke(cli, ["run", "--help"]).output.split())
    assert "header, start, warning, round, summary" in text and "FEDACTORS_REDIS_URL" in text
    runs_help = " ".join(runner.invoke(cli, ["runs", "list", "--help"]).output.split())
    assert "OUT/checkpoints" not in runs_help and "embedded store of each run directory under --runs-dir" in runs_help


@pytest.mark.slow
def test_a_closed_stdout_interrupts_the_run_resumably(tmp_path):
    """`fedactors run ... | head`: once the reader is gone the run stops as interrupted (exit 141, 128 + SIGPIPE),
    with the resume command on stderr and no traceback; --resume continues it."""
    from conftest import EXE, fedactors

    out = tmp_path / "run"
    args = ["--task", "digits-mlp", "--clients", "10", "--frac", "0.5", "--partition", "iid", "--epochs", "1",
            "--hosts", "2", "--rounds", "200", "--out", str(out)]  # rounds of 0.05 s: far from done when the pipe closes
    with subprocess.Popen([EXE, "run", *args, "--run-id", "piped"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True) as proc:
        try:
            while not proc.stdout.readline().startswith("round "):  # like `head`: read up to the first round, then go
                assert proc.poll() is None, proc.stderr.read()
            proc.stdout.close()
            stderr = proc.stderr.read()
            assert proc.wait(timeout=60) == 141, stderr
        finally:
            proc.kill()
    assert f"fedactors: stdout was closed; interrupted; continue with: fedactors run --resume piped --out {out}" \
        in stderr.splitlines(), stderr
    assert "Traceback" not in stderr and not (out / "error.log").exists()
    run = json.loads((out / "run.json").read_text())
    done = run["rounds_completed"]
    assert run["status"] == "interrupted" and 1 <= done < 200
    resumed = fedactors("run", "--resume", "piped", "--out", str(out), "--rounds", str(done + 2))
    assert resumed.returncode == 0, resumed.stderr
    # The newest checkpoint may be a round past run.json's count: the round checkpointed, then the stop came
    # before its event was written. Never behind it.
    after = int(re.search(r"resuming run piped after round (\d+)", resumed.stdout).group(1))
    assert after in (done, done + 1), resumed.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["rounds_completed"] == done + 2

