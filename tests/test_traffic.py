"""Bytes on the wire: what each round's clients receive and send, counted per client as a deployment would."""

import json

import numpy as np
import pytest

from conftest import fedactors


def _rounds(strategy="fedavg", host_sums=True, rounds=3, byzantine=0):
    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
    from fedactors.task import load_arrays, load_task

    cfg = RunConfig(task="digits-mlp", clients=10, frac=0.5, rounds=rounds, epochs=1, batch_size=20, lr=0.1,
                    partition="iid", seed=0, strategy=strategy, host_sums=host_sums, byzantine=byzantine,
                    attack="nan" if byzantine else "sign-flip", min_fit_fraction=0.5 if byzantine else 1.0)
    data = load_arrays(load_task(cfg.task), None, None)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed)
    hosts = [ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i) for i in range(2)]
    coordinator = Coordinator(cfg, LocalPool(hosts), num_test=len(data.y_test))
    return [e for e in coordinator.run() if e["type"] == "round"], 4 * len(coordinator.weights)


@pytest.mark.parametrize("host_sums", [True, False])
def test_each_sampled_client_receives_the_model_and_each_that_trained_sends_its_weights(host_sums):
    events, model_bytes = _rounds(host_sums=host_sums)
    assert model_bytes == 4 * 4810  # digits-mlp: 64*64+64 + 64*10+10 floats
    total_down = total_up = 0
    for e in events:
        assert e["bytes_down"] == len(e["clients"]) * model_bytes  # host sums or not: per client, as deployed
        assert e["bytes_up"] == e["num_updates"] * model_bytes
        total_down, total_up = total_down + e["bytes_down"], total_up + e["bytes_up"]
        assert (e["bytes_down_total"], e["bytes_up_total"]) == (total_down, total_up)


def test_scaffold_sends_c_down_and_the_control_variate_up():
    events, model_bytes = _rounds(strategy="scaffold", rounds=1)
    assert events[0]["bytes_down"] == 5 * 2 * model_bytes and events[0]["bytes_up"] == 5 * 2 * model_bytes


def test_a_refused_update_was_sent_and_counts():
    events, model_bytes = _rounds(rounds=4, byzantine=3)  # NaN attackers: refused, yet uploaded
    assert any(e["rejected"] for e in events)
    for e in events:
        assert e["bytes_up"] == (e["num_updates"] + len(e["rejected"])) * model_bytes


def test_totals_resume_from_the_checkpoint_or_count_from_the_resume_when_it_kept_none():
    from fedactors.traffic import Totals

    kept = Totals(100, 60, since_round=0)
    assert Totals.from_checkpoint({"bytes": kept.to_dict()}, 7) == kept
    assert Totals.from_checkpoint({"wall_seconds": 3.0}, 7) == Totals(0, 0, since_round=7)


def test_run_json_report_and_plot_against_uplink(tmp_path):
    out = tmp_path / "run"
    result = fedactors("run", "--task", "digits-mlp", "--clients", "10", "--frac", "0.3", "--partition", "iid",
                       "--epochs", "1", "--rounds", "4", "--eval-every", "2", "--hosts", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_round = 3 * 4 * 4810
    assert [r["bytes_up_total"] for r in rows] == [2 * per_round, 4 * per_round]  # rounds 1 and 3, unevaluated, count too
    assert json.loads((out / "run.json").read_text())["bytes"] == {"down": 4 * per_round, "up": 4 * per_round,
                                                                  "since_round": 0}
    table = fedactors("report", str(out)).stdout
    assert "MB up/round" in table and f"{per_round / 1e6:.2f}" in table
    picture = fedactors("plot", str(out), "--x", "uplink", "-o", str(tmp_path / "uplink.png"))
    assert picture.returncode == 0, picture.stderr
    assert (tmp_path / "uplink.png").read_bytes()[:4] == b"\x89PNG"


def test_dp_runs_keep_their_bytes_out_of_the_metrics():
    from fedactors.messages import metrics_fields

    row = {"round": 1, "accuracy": 0.5, "bytes_up": 10, "bytes_up_total": 10, "num_updates": 1, "private": True}
    assert metrics_fields(row) == {"round": 1, "accuracy": 0.5}
    assert np.isclose(metrics_fields({**row, "private": False})["bytes_up"], 10)
