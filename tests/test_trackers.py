"""fedactors.trackers: TensorBoard and MLflow as callbacks, read back with TensorBoard's EventAccumulator and
mlflow.MlflowClient against a real local file store; a stopped run resumed continues the same tracker runs."""

import json
import socket
import sys

import pytest
from PIL import Image

import fedactors
from conftest import run_main
from fedactors.callbacks import CallbackError
from fedactors.trackers import LOGGED_THROUGH, MLflow, TensorBoard, mlflow_uri, scalars

pytest.importorskip("tensorboard")  # the test extra installs both; a bare checkout says what is missing
pytest.importorskip("mlflow")

# digits-mlp (scikit-learn's digits, no download): 4 real rounds on a local Ray take seconds. Clients evaluated one
# by one, so the lines carry client_accuracy's percentiles too.
SETTINGS = dict(clients=10, frac=0.5, partition="iid", epochs=1, batch_size=20, seed=3, rounds=4, eval_every=1,
                hosts=2, eval_clients=0.5)
FLAGS = ["--task", "digits-mlp", "--clients", "10", "--frac", "0.5", "--partition", "iid", "--epochs", "1",
         "--batch-size", "20", "--seed", "3", "--hosts", "2", "--eval-clients", "0.5"]


class TrackerDown:
    """Raises at round `fail_at`'s end: the run stops there, resumable from its last checkpoint."""

    def __init__(self, fail_at):
        self.fail_at = fail_at

    def on_round_end(self, record):
        if record["round"] == self.fail_at:
            raise ConnectionError("down")


@pytest.fixture(autouse=True)
def no_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def expected(rows) -> dict:
    """{tag: [(step, value), ...]}: what each tracker must hold, one value per round, from metrics.jsonl's rows."""
    tags: dict = {}
    for row in rows:
        for tag, value in scalars(row).items():
            tags.setdefault(tag, []).append((row["round"], value))
    return tags


def tensorboard_scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tensorboard_settings(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(log_dir))
    events.Reload()
    data = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
            for k, v in data.session_start_info.hparams.items()}


def mlflow_metrics(client, run_id) -> dict:
    run = client.get_run(run_id)
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in run.data.metrics}


def assert_float32_equal(got: dict, want: dict) -> None:
    """TensorBoard keeps scalars as float32."""
    assert set(got) == set(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6), tag


def test_scalars_are_every_number_of_a_line_by_tag():
    record = {"round": 7, "accuracy": 0.5, "loss": None, "num_updates": 5, "clients": [3, 1], "failures": [],
              "client_accuracy": {"clients": 4, "p10": 0.25}, "epsilon": None, "virtual_seconds": 12.5}

    assert scalars(record) == {"accuracy": 0.5, "num_updates": 5.0, "clients/count": 2.0, "failures/count": 0.0,
                               "client_accuracy/clients": 4.0, "client_accuracy/p10": 0.25, "virtual_seconds": 12.5}


@pytest.mark.parametrize("saw_round_1", [False, True], ids=["new to the run", "behind the checkpoint"])
def test_a_resumed_run_gives_its_trackers_the_checkpointed_rounds_they_missed(saw_round_1, tmp_path, monkeypatch):
    # Prepare: rows 1 to 3; trackers (MLflow's default store: ./mlruns) that never saw the run, or that got only
    # round 1 before it stopped (the coordinator runs ahead of the hooks: its round-2 checkpoint was never seen)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [{"round": r, "accuracy": r / 10, "loss": 2.0 - r / 10, "clients": [0, 1], "epsilon": None,
             "client_accuracy": {"p10": r / 20}} for r in (1, 2, 3)]
    config = {"task": "digits-mlp", "seed": 3, "lr": 0.1, "host_sums": True, "server_lr": None, "sizes": [64, 10]}
    (run_dir / "run.json").write_text(json.dumps({"config": config, "status": "finished"}))
    Image.new("RGB", (4, 3), (255, 0, 0)).save(run_dir / "accuracy.png")  # a figure put beside the run
    start = {"run_id": "r", "run_dir": str(run_dir), "config": config}
    first = None
    if saw_round_1:
        first = [TensorBoard(tmp_path / "tb"), MLflow()]
        (run_dir / "metrics.jsonl").write_text("")
        for tracker in first:
            tracker.on_run_start({**start, "resumed_from_round": None})
            tracker.on_evaluation(rows[0])
            tracker.on_checkpoint({"round": 1, "checkpoint_seconds": 0.01})
            tracker.on_run_end({"config": config, "run_id": "r", "status": "failed", "rounds_completed": 2})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:2]))  # as reopened
    trackers = [TensorBoard(tmp_path / "tb"), MLflow()]

    # Execute: the hooks of the run resumed from round 2 that goes on to round 3
    for tracker in trackers:
        tracker.on_run_start({**start, "resumed_from_round": 2})
    for tracker in trackers:
        tracker.on_evaluation(rows[2])
    for tracker in trackers:
        tracker.on_checkpoint({"round": 3, "checkpoint_seconds": 0.01})
    for tracker in trackers:
        tracker.on_run_end({"config": config, "run_id": "r", "status": "finished", "rounds_completed": 3})

    # Assert: rounds 1 to 3, once each; the settings (but None) as parameters; run.json and the figure
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mlflow = trackers[1]
    assert_float32_equal(tensorboard_scalars(tmp_path / "tb" / "r"), expected(rows))
    assert tensorboard_settings(tmp_path / "tb" / "r") == {"task": "digits-mlp", "seed": 3, "lr": 0.1, "host_sums": 1,
                                                           "sizes": "[64, 10]"}
    events = EventAccumulator(str(tmp_path / "tb" / "r"))
    events.Reload()
    (image,) = events.Images("figures/accuracy.png")
    assert (image.step, image.width, image.height) == (3, 4, 3)
    assert "run.json/text_summary" in events.Tags()["tensors"]
    assert mlflow.uri == (tmp_path / "mlruns").as_uri()
    client = MlflowClient(mlflow.uri)
    assert mlflow_metrics(client, mlflow.run_id) == expected(rows)
    run = client.get_run(mlflow.run_id)
    assert run.data.params == {"task": "digits-mlp", "seed": "3", "lr": "0.1", "host_sums": "True", "sizes": "[64, 10]"}
    assert (run.info.run_name, run.info.status, run.data.tags[LOGGED_THROUGH]) == ("r", "FINISHED", "3")
    assert [a.path for a in client.list_artifacts(mlflow.run_id)] == ["figures", "run.json"]
    assert [a.path for a in client.list_artifacts(mlflow.run_id, "figures")] == ["figures/accuracy.png"]
    assert len(client.search_runs(run.info.experiment_id)) == 1
    if first is not None:
        assert mlflow.run_id == first[1].run_id


def test_a_stopped_run_resumed_from_the_command_line_continues_the_same_tracker_runs(tmp_path, redis_server,
                                                                                     monkeypatch, capsys):
    # Prepare: checkpoints every 2 rounds; a callback stops the run at round 3's end, after round 3 went to
    # TensorBoard (as it is written) but not to MLflow (not checkpointed). Rounds of 20 epochs: the coordinator,
    # which runs ahead of the hooks, is stopped long before it could checkpoint the last round.
    from mlflow import MlflowClient

    out, tb, store = tmp_path / "run", tmp_path / "tb", tmp_path / "store"
    with pytest.raises(CallbackError):
        fedactors.run("digits-mlp", out=out, run_id="stopped", redis=redis_server.url, progress="quiet",
                      checkpoint_every=2, callbacks=[TensorBoard(tb), MLflow(str(store)), TrackerDown(fail_at=3)],
                      **{**SETTINGS, "rounds": 6, "epochs": 20})
    client = MlflowClient(store.as_uri())
    (mlflow_run,) = client.search_runs(client.get_experiment_by_name("fedactors").experiment_id)
    assert [s for s, _ in tensorboard_scalars(tb / "stopped")["accuracy"]] == [1, 2, 3]
    assert [s for s, _ in mlflow_metrics(client, mlflow_run.info.run_id)["accuracy"]] == [1, 2]
    assert client.get_run(mlflow_run.info.run_id).info.status == "FAILED"

    # Execute: a resume whose tracking server cannot be reached
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "checkpoints" not in p.parts}
    dead = f"http://127.0.0.1:{closed_port()}"
    status, _, err = run_main(monkeypatch, capsys, "run", "--resume", "stopped", "--out", str(out), "--redis",
                              redis_server.url, "--mlflow", dead)

    # Assert: one line, exit 2, the run directory as it was
    assert status == 2
    assert err.startswith(f"fedactors: error: MLflow tracking server {dead} cannot be reached: ")
    assert err.count("\n") == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "checkpoints" not in p.parts} == before

    # Execute: resumed from its last checkpoint (round 2, or 4 if the coordinator got there), from another
    # directory, --mlflow without a URI
    monkeypatch.chdir(tmp_path)
    status, _, err = run_main(monkeypatch, capsys, "run", "--resume", "stopped", "--out", str(out), "--redis",
                              redis_server.url, "-q", "--tensorboard", str(tb), "--mlflow")

    # Assert: the same TensorBoard directory and MLflow run, every round once with metrics.jsonl's values
    assert status == 0, err
    rows = lines(out)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert_float32_equal(tensorboard_scalars(tb / "stopped"), expected(rows))
    assert tensorboard_settings(tb / "stopped")["seed"] == 3
    (again,) = client.search_runs(mlflow_run.info.experiment_id)
    assert again.info.run_id == mlflow_run.info.run_id and again.info.status == "FINISHED"
    assert mlflow_metrics(client, again.info.run_id) == expected(rows)
    config = json.loads((out / "run.json").read_text())["config"]
    assert again.data.params == {k: str(v) for k, v in config.items() if v is not None}
    assert [a.path for a in client.list_artifacts(again.info.run_id)] == ["run.json"]
    assert not (tmp_path / "mlruns").exists()  # the store the run had, not the current directory's

    # Execute: the finished run resumed again with a tracker new to it (as when the coordinator, running ahead of
    # the hooks, checkpointed the last round before a callback stopped the run): nothing runs, the tracker catches up
    status, _, err = run_main(monkeypatch, capsys, "run", "--resume", "stopped", "--out", str(out), "--redis",
                              redis_server.url, "-q", "--tensorboard", str(tmp_path / "late"))
    assert status == 0, err
    assert [r["round"] for r in lines(out)] == [1, 2, 3, 4, 5, 6]
    assert_float32_equal(tensorboard_scalars(tmp_path / "late" / "stopped"), expected(rows))


def test_tracker_optional_runs_on_without_an_unreachable_tracker_and_says_so_once(tmp_path, monkeypatch, capsys):
    out, tb = tmp_path / "run", tmp_path / "tb"
    dead = f"http://127.0.0.1:{closed_port()}"

    status, _, err = run_main(monkeypatch, capsys, "run", *FLAGS, "--rounds", "1", "--out", str(out), "--run-id",
                              "r", "-q", "--tensorboard", str(tb), "--mlflow", dead, "--tracker-optional")

    assert status == 0, err
    (warning,) = [line for line in err.splitlines() if "MLflow" in line]  # said once
    assert warning.startswith(f"warning: --mlflow: MLflow tracking server {dead} cannot be reached: ")
    assert warning.endswith("the run goes on without it (--tracker-optional)")
    assert_float32_equal(tensorboard_scalars(tb / "r"), expected(lines(out)))


@pytest.mark.parametrize("args, missing, message", [
    (["--mlflow", "http://127.0.0.1:{port}"], None,
     "MLflow tracking server http://127.0.0.1:{port} cannot be reached: "),
    (["--tensorboard", "{file}/tb"], None,
     "TensorBoard directory {file}/tb cannot be written: {file} is not a directory"),
    (["--mlflow", "{file}/mlruns"], None, "MLflow store {file}/mlruns cannot be written: {file} is not a directory"),
    (["--mlflow"], "mlflow",
     "MLflow tracking (--mlflow) needs the mlflow-skinny package, which is not installed: pip install mlflow-skinny"),
    (["--tensorboard", "tb"], "tensorboard",
     "TensorBoard logging (--tensorboard) needs the tensorboard package, which is not installed: "
     "pip install tensorboard"),
    (["--tracker-optional"], None, "--tracker-optional is given without --tensorboard or --mlflow"),
])
def test_a_tracker_that_cannot_be_had_stops_the_run_before_anything_is_written(args, missing, message, tmp_path,
                                                                                monkeypatch, capsys):
    # Prepare
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    names = {"port": closed_port(), "file": tmp_path / "file"}
    if missing:
        monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: importing it raises ImportError

    # Execute
    status, _, err = run_main(monkeypatch, capsys, "run", *FLAGS, "--out", "out", *[a.format(**names) for a in args])

    # Assert
    assert status == 2
    assert err.startswith("fedactors: error: " + message.format(**names)) and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlruns").exists()


def test_a_resume_checks_the_tracking_server_its_run_logged_to_before_anything_is_written(tmp_path, monkeypatch,
                                                                                          capsys):
    # Prepare: a run that logged to a server now down
    dead = f"http://127.0.0.1:{closed_port()}"
    out = tmp_path / "run"
    out.mkdir()
    (out / "trackers.json").write_text(json.dumps({"mlflow": {dead: "0123"}}))

    # Execute: --mlflow without a URI takes that server
    status, _, err = run_main(monkeypatch, capsys, "run", "--resume", "r", "--out", str(out), "--mlflow")

    # Assert
    assert status == 2
    assert err.startswith(f"fedactors: error: MLflow tracking server {dead} cannot be reached: ")
    assert [p.name for p in out.iterdir()] == ["trackers.json"]


def test_a_path_is_a_file_store_and_a_server_stays_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert mlflow_uri() == (tmp_path / "mlruns").as_uri()
    assert mlflow_uri("file:store") == (tmp_path / "store").as_uri()
    assert mlflow_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert mlflow_uri() == "http://127.0.0.1:5001"
