"""fedactors.run(callbacks=[...]): the hooks see what the run directory gets; one that raises stops it, resumable."""

import json

import pytest

import fedactors
from fedactors.callbacks import Callback, CallbackError
from fedactors.errors import ConfigError

# digits-mlp (scikit-learn's digits, no download): 4 real rounds on a local Ray take seconds; every round evaluated
# and checkpointed, so each hook fires each round.
SETTINGS = dict(clients=10, frac=0.5, partition="iid", epochs=1, batch_size=20, seed=3, rounds=4, eval_every=1,
                hosts=2, progress="quiet")


class Recorder(Callback):
    """Every hook's record, in the order called."""

    def __init__(self):
        self.calls = []

    def on_run_start(self, run):
        self.calls.append(("on_run_start", run))

    def on_evaluation(self, record):
        self.calls.append(("on_evaluation", record))

    def on_checkpoint(self, record):
        self.calls.append(("on_checkpoint", record))

    def on_round_end(self, record):
        self.calls.append(("on_round_end", record))

    def on_run_end(self, run):
        self.calls.append(("on_run_end", run))

    def records(self, hook):
        return [record for name, record in self.calls if name == hook]


class TrackerDown:
    """Not a Callback subclass: any object with a hook will do. Raises at round `fail_at`'s end."""

    def __init__(self, fail_at):
        self.fail_at = fail_at

    def on_round_end(self, record):
        if record["round"] == self.fail_at:
            raise ConnectionError("tracking server refused the connection\n(second line)")


def _lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run with a Recorder: (result, recorder)."""
    recorder = Recorder()
    out = tmp_path_factory.mktemp("callbacks") / "straight"
    result = fedactors.run("digits-mlp", out=out, run_id="straight", callbacks=[recorder], **SETTINGS)
    return result, recorder


def test_hooks_see_every_round_as_metrics_jsonl_has_it(straight):
    result, recorder = straight
    lines = _lines(result.run_dir)

    assert [r["round"] for r in lines] == [1, 2, 3, 4]
    assert recorder.records("on_evaluation") == lines
    assert recorder.records("on_round_end") == lines
    checkpoints = recorder.records("on_checkpoint")
    assert [c["round"] for c in checkpoints] == [1, 2, 3, 4] and all(c["checkpoint_seconds"] >= 0 for c in checkpoints)
    names = [name for name, _ in recorder.calls]
    assert names == ["on_run_start", *["on_evaluation", "on_checkpoint", "on_round_end"] * 4, "on_run_end"]
    start = recorder.records("on_run_start")[0]
    assert (start["run_id"], start["resumed_from_round"], start["config"]["rounds"]) == ("straight", None, 4)
    assert recorder.records("on_run_end") == [json.loads((result.run_dir / "run.json").read_text())]
    assert recorder.records("on_run_end")[0]["status"] == "finished"


def test_a_raising_callback_stops_the_run_with_one_line_and_it_resumes_to_the_same_bytes(straight, redis_server,
                                                                                         tmp_path):
    # Prepare
    reference, _ = straight
    recorder = Recorder()
    out = tmp_path / "stopped"

    # Execute: the tracker fails at round 3's end, after its checkpoint
    with pytest.raises(CallbackError) as raised:
        fedactors.run("digits-mlp", out=out, run_id="stopped", redis=redis_server.url,
                      callbacks=[recorder, TrackerDown(fail_at=3)], **SETTINGS)

    # Assert: one line naming the callback and its hook; run.json failed at round 3, saying why
    message = str(raised.value)
    assert message == ("callback TrackerDown.on_round_end raised ConnectionError: tracking server refused the "
                       "connection at round 3; the run stops here, resumable from its last checkpoint")
    run = json.loads((out / "run.json").read_text())
    assert (run["status"], run["rounds_completed"], run["error"]) == ("failed", 3, message)
    assert recorder.records("on_run_end")[-1]["status"] == "failed"
    assert [r["round"] for r in _lines(out)] == [1, 2, 3]

    # Execute: resumed from its round-3 checkpoint, with a callback again
    again = Recorder()
    resumed = fedactors.resume("stopped", out=out, redis=redis_server.url, callbacks=[again], progress="quiet")

    # Assert: the same bytes as the run never stopped
    assert resumed.weights.tobytes() == reference.weights.tobytes()
    assert [r["accuracy"] for r in _lines(out)] == [r["accuracy"] for r in _lines(reference.run_dir)]
    assert again.records("on_run_start")[0]["resumed_from_round"] == 3
    assert [r["round"] for r in again.records("on_round_end")] == [4]
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_an_object_without_hooks_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"callbacks\[0\]: function has none of the hooks on_run_start"):
        fedactors.run("digits-mlp", out=tmp_path / "out", callbacks=[lambda record: None], **SETTINGS)
    assert not (tmp_path / "out").exists()
