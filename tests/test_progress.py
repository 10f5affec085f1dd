"""The four ways `fedactors run` reports progress, fed with the events a run emits."""

import io
import json

from fedactors.results.progress import JsonRenderer, QuietRenderer, Renderer, RichRenderer, make_renderer
from fedactors.config import RunConfig

CFG = RunConfig(rounds=3)
GPU_FALLBACK = "assigned GPU 0 but torch cannot use CUDA here"
HOSTS = [{"host": 0, "node_id": "a", "pid": 1, "device": "cpu", "threads": 1, "fallback": None, "warnings": []},
         {"host": 1, "node_id": "a", "pid": 2, "device": "cpu", "threads": 1, "fallback": GPU_FALLBACK, "warnings": [GPU_FALLBACK]}]


def event(r, acc, **kw):
    return {"type": "round", "round": r, "accuracy": acc, "loss": 0.5 if acc is not None else None, "train_loss": 0.7,
            "round_seconds": 2.0, "train_seconds": 1.5, "wait_seconds": 1.6, "aggregate_seconds": 0.002,
            "eval_seconds": 0.4, "num_updates": 10, "clients": list(range(10)), "retried": kw.get("retried", []),
            "dropped": kw.get("dropped", []), "rejected": kw.get("rejected", []), "byzantine": [],
            "failures": kw.get("failures", []), "hosts": {}, "checkpoint_seconds": 0.03}


def drive(renderer):
    renderer.header("run-1", "runs/run-1", None)
    renderer.start(HOSTS, 10, 0)
    renderer.round(event(1, 0.9))
    renderer.round(event(2, None, retried=[4], failures=["client 4 on host 1: host 1 died"]))
    renderer.round(event(3, 0.95))
    renderer.close()
    renderer.summary({"best_accuracy": 0.95, "best_round": 3, "rounds_to_target": None}, 7.0)


def test_plain_is_one_line_per_round(capsys):
    drive(Renderer(CFG))
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out if line.startswith("round ")] == ["1/3", "2/3", "3/3"]
    assert "round 1/3  acc 0.9000  loss 0.5000" in out[3]
    assert "warning: host 1: assigned GPU 0" in "\n".join(out)
    assert "  failed: client 4 on host 1: host 1 died" in out and any("retried 1" in line for line in out)
    assert out[-1].startswith("best accuracy 0.9500 at round 3; target 0.99: not reached")


def test_quiet_prints_only_the_summary_and_warnings_to_stderr(capsys):
    drive(QuietRenderer(CFG))
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["best accuracy 0.9500 at round 3; target 0.99: not reached; 7.0 s in all"]
    assert "warning: host 1" in captured.err


def test_json_is_one_object_per_event(capsys):
    drive(JsonRenderer(CFG))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in lines] == ["header", "start", "warning", "round", "round", "round", "summary"]
    assert lines[0]["config"]["rounds"] == 3 and lines[3]["accuracy"] == 0.9 and lines[4]["retried"] == [4]
    assert lines[-1]["best_accuracy"] == 0.95


def test_rich_bar_shows_progress_best_and_keeps_round_lines():
    from rich.console import Console

    buf = io.StringIO()
    drive(RichRenderer(CFG, console=Console(file=buf, force_terminal=True, width=160, color_system=None)))
    text = buf.getvalue()
    assert "3/3" in text and "best 0.9500" in text and "ETA" in text
    assert "round 1/3  acc 0.9000" in text and "failed: client 4" in text


def test_auto_mode_is_plain_when_stdout_is_not_a_terminal():
    assert type(make_renderer("auto", CFG)) is Renderer  # pytest captures stdout: not a terminal
    assert isinstance(make_renderer("json", CFG), JsonRenderer)
    assert isinstance(make_renderer("quiet", CFG), QuietRenderer)


def test_rejected_updates_are_shown_with_their_reason(capsys):
    cfg = RunConfig(rounds=3, byzantine=2, attack="nan", min_fit_fraction=0.8)
    renderer = Renderer(cfg)
    renderer.header("run-1", "runs/run-1", None)
    renderer.round(event(1, 0.9, dropped=[7], rejected=[7], failures=["client 7 on host 0: returned NaN or infinite weights: rejected"]))
    out = capsys.readouterr().out.splitlines()
    assert "byzantine=2:nan" in out[0]
    assert "  failed: client 7 on host 0: returned NaN or infinite weights: rejected" in out
    assert out[-1].endswith("dropped 1  rejected 1")


def test_a_warning_shared_by_hosts_is_printed_once_naming_them(capsys):
    slow = "--precision bf16 on a CPU without bf16 instructions"
    hosts = [{**HOSTS[0], "warnings": [slow]}, {**HOSTS[1], "warnings": [GPU_FALLBACK, slow]}, {**HOSTS[0], "host": 2}]
    Renderer(CFG).start(hosts, 10, 0)
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: hosts 0, 1: {slow}", f"warning: host 1: {GPU_FALLBACK}"]


def test_rich_eta_is_known_after_the_first_round():
    from rich.console import Console

    buf = io.StringIO()
    renderer = RichRenderer(RunConfig(rounds=100), console=Console(file=buf, force_terminal=True, width=160, color_system=None))
    renderer.start(HOSTS, 10, 0)
    renderer.round(event(1, 0.9))  # 2.0 s a round, 99 to go
    renderer.progress.refresh()
    renderer.close()
    last_bar = [line for line in buf.getvalue().splitlines() if "1/100" in line][-1]
    assert "ETA 0:03:18" in last_bar


def test_rich_prints_the_resume_command_on_one_line_however_narrow_the_terminal():
    from rich.console import Console

    buf = io.StringIO()
    renderer = RichRenderer(CFG, console=Console(file=buf, force_terminal=True, width=40, color_system=None))
    command = "fedactors run --resume 20261130-140740-44a1 --out runs/some/rather/long/directory/name"
    renderer.interrupted(command)
    assert f"interrupted; continue with: {command}" in buf.getvalue().splitlines()
