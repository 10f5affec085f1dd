"""fedactors.run(callbacks=[...]): the hooks see what the run directory gets; one that raises stops it, resumable."""

import json
from types import SimpleNamespace

import pytest

import fedactors
from fedactors.callbacks import Callback, CallbackError
from fedactors.config import RunConfig
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
def stopped_and_resumed(tmp_path_factory):
    """One run on real Ray and a real Redis server, stopped by a tracker failing at round 3's end, then resumed with
    `fedactors.resume` to round 4: what each part's Recorder saw, the error, and the directory at each step.
    Two Ray runs in all: the uninterrupted run it is compared with is computed in this process (LocalPool, the
    bytes Ray's hosts give: tests/test_strategy.py's SIGKILL tests hold the two to each other)."""
    from conftest import RedisServer

    base = tmp_path_factory.mktemp("callbacks")
    (base / "redis").mkdir()
    server = RedisServer(base / "redis").start()
    out = base / "stopped"
    first, again = Recorder(), Recorder()
    try:
        with pytest.raises(CallbackError) as raised:
            fedactors.run("digits-mlp", out=out, run_id="stopped", redis=server.url,
                          callbacks=[first, TrackerDown(fail_at=3)], **SETTINGS)
        stopped = json.loads((out / "run.json").read_text()), _lines(out)
        resumed = fedactors.resume("stopped", out=out, redis=server.url, callbacks=[again], progress="quiet")
    finally:
        server.kill()
    return SimpleNamespace(out=out, first=first, again=again, message=str(raised.value), stopped=stopped,
                           resumed=resumed)


def test_hooks_see_every_round_as_metrics_jsonl_has_it(stopped_and_resumed):
    run = stopped_and_resumed
    lines = _lines(run.out)

    assert [r["round"] for r in lines] == [1, 2, 3, 4]
    # Rounds 1-3 before the stop, round 4 after the resume: each part's hooks get its rounds' lines.
    assert run.first.records("on_evaluation") == run.first.records("on_round_end") == lines[:3]
    assert run.again.records("on_evaluation") == run.again.records("on_round_end") == lines[3:]
    checkpoints = run.first.records("on_checkpoint") + run.again.records("on_checkpoint")
    assert [c["round"] for c in checkpoints] == [1, 2, 3, 4] and all(c["checkpoint_seconds"] >= 0 for c in checkpoints)
    each = ["on_evaluation", "on_checkpoint", "on_round_end"]
    assert [name for name, _ in run.first.calls] == ["on_run_start", *each * 3, "on_run_end"]
    assert [name for name, _ in run.again.calls] == ["on_run_start", *each, "on_run_end"]
    start = run.first.records("on_run_start")[0]
    assert (start["run_id"], start["resumed_from_round"], start["config"]["rounds"]) == ("stopped", None, 4)
    assert run.again.records("on_run_start")[0]["resumed_from_round"] == 3
    # on_run_end gets run.json's content as the run ends: failed, then finished.
    assert run.first.records("on_run_end") == [run.stopped[0]]
    assert run.again.records("on_run_end") == [json.loads((run.out / "run.json").read_text())]
    assert run.again.records("on_run_end")[0]["status"] == "finished"


def test_a_raising_callback_stops_the_run_with_one_line_and_it_resumes_to_the_same_bytes(stopped_and_resumed):
    import torch

    from test_strategy import in_process_run

    run = stopped_and_resumed
    # One line naming the callback and its hook; run.json failed at round 3, saying why
    assert run.message == ("callback TrackerDown.on_round_end raised ConnectionError: tracking server refused the "
                           "connection at round 3; the run stops here, resumable from its last checkpoint")
    info, lines = run.stopped
    assert (info["status"], info["rounds_completed"], info["error"]) == ("failed", 3, run.message)
    assert [r["round"] for r in lines] == [1, 2, 3]

    # The same bytes and accuracies as the run never stopped
    threads = torch.get_num_threads()
    try:
        config = RunConfig(task="digits-mlp", **{k: v for k, v in SETTINGS.items() if k != "progress"})
        _, straight = in_process_run([], config.rounds, config=config)
        weights = list(straight.run())[-1]["weights"]
    finally:
        torch.set_num_threads(threads)
    assert run.resumed.weights.tobytes() == weights.tobytes()
    assert [r["accuracy"] for r in _lines(run.out)] == [r["accuracy"] for r in straight.history]
    assert json.loads((run.out / "run.json").read_text())["status"] == "finished"


def test_an_object_without_hooks_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"callbacks\[0\]: function has none of the hooks on_run_start"):
        fedactors.run("digits-mlp", out=tmp_path / "out", callbacks=[lambda record: None], **SETTINGS)
    assert not (tmp_path / "out").exists()
