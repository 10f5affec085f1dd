"""Uneven clients in virtual time (issue 26): speeds, availability, deadlines, over-selection, FedBuff and FedAsync.

In-process runs (LocalPool) of the spirals task for what the clock decides; real Ray runs for what the
guarantees promise (the same bytes whichever hosts, and after SIGKILL and resume)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fedactors.runtime.asynchronous import Flight, Schedule, parse_staleness, staleness_weight
from fedactors.config import RunConfig
from fedactors.errors import ConfigError
from fedactors.seeding import sample_clients
from fedactors.runtime.systems import Systems, Trace, read_trace, sample_available

SPIRALS = dict(clients=20, frac=0.25, partition="iid", epochs=2, batch_size=20, lr=0.2, eval_every=4, seed=3)


def spirals_config(**changes) -> RunConfig:
    from conftest import REPO

    return RunConfig(task=f"{REPO}/examples/spirals.py:task", **{**SPIRALS, **changes})


def run_in_process(cfg: RunConfig, hosts: int = 2, trace: Trace | None = None, **more) -> list[dict]:
    """Every event of `cfg` run without Ray, on `hosts` ClientHosts of one torch thread."""
    import torch

    from fedactors.runtime.client import ClientHost
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
    from fedactors.task import load_arrays, load_task

    threads = torch.get_num_threads()
    try:
        data = load_arrays(load_task(cfg.task), cfg.data, None)
        parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed, alpha=cfg.alpha)
        pool = LocalPool([ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i,
                                     threads=1) for i in range(hosts)])
        return list(Coordinator(cfg, pool, num_test=len(data.y_test), trace=trace, **more).run())
    finally:
        torch.set_num_threads(threads)


def rounds_of(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "round"]


# ---- profiles, traces, sampling ------------------------------------------------------------------------

def test_sampling_the_online_clients_is_the_usual_sample_when_everyone_is_online():
    for seed, round_idx, k, m in ((0, 1, 100, 10), (3, 17, 20, 5), (9, 2, 7, 7)):
        assert sample_available(seed, round_idx, np.arange(k), m).tolist() == sample_clients(seed, round_idx, k, m).tolist()


def test_lognormal_speeds_are_seeded_and_spread_by_sigma():
    a, b = Systems(1000, seed=1, sigma=1.0), Systems(1000, seed=1, sigma=1.0)
    assert a.speed.tobytes() == b.speed.tobytes()
    assert Systems(1000, seed=2, sigma=1.0).speed.tobytes() != a.speed.tobytes()
    assert np.median(a.speed) == pytest.approx(0.01, rel=0.15)  # the reference is the median
    assert np.std(np.log(a.speed)) == pytest.approx(1.0, rel=0.1)
    assert np.all(Systems(10, seed=1, sigma=0.0).speed == 0.01)


def test_a_duration_is_download_plus_work_plus_upload():
    trace = Trace(profiles={3: (0.5, 8.0, 16.0)})  # 0.5 s an example, 1 MB/s up, 2 MB/s down
    systems = Systems(5, seed=0, trace=trace)
    assert systems.duration(3, 10, 2_000_000, 1_000_000) == pytest.approx(1.0 + 5.0 + 1.0)
    assert systems.duration(0, 100, 6_250_000, 1_250_000) == pytest.approx(1.0 + 1.0 + 1.0)  # the reference client


def test_a_trace_is_read_with_windows_and_profiles(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("client,speed,up_mbps,down_mbps\n0,0.02,5,20\n# a comment\n"
                    "client,online_from,online_until\n1,0,100\n1,200,300\n2,50,60\n")
    trace = read_trace(path, 4)
    assert trace.profiles == {0: (0.02, 5.0, 20.0)}
    systems = Systems(4, seed=0, trace=trace)
    assert systems.available(0).tolist() == [0, 1, 3]
    assert systems.available(55).tolist() == [0, 1, 2, 3]
    assert systems.available(250).tolist() == [0, 1, 3]
    assert systems.available(150).tolist() == [0, 3]
    assert systems.online_until(1, 250) == 300 and systems.online_until(0, 5) == float("inf")
    assert systems.next_online(100) == 200 and systems.next_online(300) is None


SPEED_HEADER, WINDOW_HEADER = "client,speed,up_mbps,down_mbps\n", "client,online_from,online_until\n"


@pytest.mark.parametrize("text, problem", [
    (SPEED_HEADER + "0,0.01,5,5\n1,oops,3,3\n", "line 3: expected numbers"),
    (WINDOW_HEADER + "7,0,10\n", "line 2: client 7 is not one of the run's 4"),
    (WINDOW_HEADER + "0,10,5\n", "a window needs 0 <= online_from < online_until"),
    (SPEED_HEADER + "0,0.01,0,5\n", "speed must be >= 0 and up_mbps, down_mbps > 0"),
    (SPEED_HEADER + "0,1,2,3,4\n", "line 2: a speed row is client,speed,up_mbps,down_mbps .4 columns.*got 5"),
    (SPEED_HEADER + "0,0.01,5,5\n0,0.02,5,5\n", "line 3: a second speed row for client 0"),
    (SPEED_HEADER + "0,nan,5,5\n", "values must be finite"),
    (SPEED_HEADER + "0,0.01,5,5\n1.5,0.01,5,5\n", "line 3: client '1.5' is not an integer id"),
    # A speed row missing a field, under its header: refused, not read as a window (1 online from 0.005 to 20).
    (SPEED_HEADER + "0,0.01,5,5\n1,0.005,20\n", "line 3: a speed row is client,speed,up_mbps,down_mbps .4 columns"
                                                  ", as its header says., got 3: 1,0.005,20"),
    (WINDOW_HEADER + "1,0,100\n2,0.005,20,50\n", "line 3: a window row is client,online_from,online_until .3 columns"),
    # Rows no header declares fit neither kind for sure: the file must say.
    ("1,0.005,20\n", "line 1: a row before any header; put client,speed,up_mbps,down_mbps above speed rows"),
    ("# made by hand\n0,0.01,5,5\n", "line 2: a row before any header"),
    ("client,speed,up,down\n0,0.01,5,5\n", "line 1: 'client,speed,up,down' is neither row of numbers nor a header"),
])
def test_a_bad_trace_is_one_line_naming_the_row(tmp_path, text, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem) as info:
        read_trace(path, 4)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_the_committed_trace_in_the_documented_format_reads_as_before():
    from conftest import REPO

    path = REPO / "docs" / "runs" / "uneven-2nn-trace.csv"
    trace = read_trace(path, 100)
    lines = [line.split(",") for line in path.read_text().splitlines()[1:]]
    assert not trace.profiles and len(trace.windows) == len(lines) == 4834
    assert trace.windows == [(int(c), float(a), float(b)) for c, a, b in lines]
    # Its sha256 is in the committed run's identity: a resume of that run reads the same file as the same trace.
    run = json.loads((REPO / "docs" / "runs" / "uneven-2nn-noniid-trace-deadline20-over0.3" / "run.json").read_text())
    assert run["identity"]["trace"] == trace.digest


@pytest.mark.parametrize("changes, problem", [
    ({"client_speed": "normal:1"}, "--client-speed must be lognormal:SIGMA"),
    ({"client_speed": "lognormal:-1"}, "--client-speed must be lognormal:SIGMA"),
    ({"deadline": 0}, "--deadline must be a positive number"),
    ({"over_select": -0.5}, "--over-select must be a fraction >= 0"),
    ({"strategy": "fedbuff", "deadline": 10.0}, "--deadline is for synchronous rounds"),
    ({"strategy": "fedbuff", "staleness": "hinge:1"}, "--staleness must be"),
    ({"strategy": "fedasync", "mixing": 1.5}, "--mixing must be in"),
    ({"strategy": "fedbuff", "buffer": 0}, "--buffer must be a positive integer"),
    ({"strategy": "dp-fedavg", "client_speed": "lognormal:1"}, "dp-fedavg does not run on the virtual clock"),
    ({"strategy": "fedbuff", "aggregator": "median"}, "needs --aggregator fedavg"),
    ({"strategy": "fedbuff", "concurrency": 5, "buffer": 6}, "--buffer 6 is more than the 5 clients training at once"),
])
def test_bad_systems_settings_are_refused_in_one_line(changes, problem):
    with pytest.raises(ConfigError, match=problem):
        RunConfig(**changes)


def test_the_staleness_functions():
    assert parse_staleness(None) == ("polynomial", 0.5, 0.0)
    assert staleness_weight(parse_staleness("constant"), 7) == 1.0
    assert staleness_weight(parse_staleness("polynomial:1"), 3) == pytest.approx(0.25)
    hinge = parse_staleness("hinge:2,3")
    assert [staleness_weight(hinge, t) for t in (0, 3, 4, 6)] == pytest.approx([1, 1, 1 / 3, 1 / 7])
    for spec in ("constant", "polynomial:0.5", "hinge:10,0"):
        assert staleness_weight(parse_staleness(spec), 0) == 1.0  # a fresh update counts whole


# ---- the asynchronous schedule -------------------------------------------------------------------------

def _schedule(concurrency=3, buffer=2, sigma=1.0, state=None, clients=12):
    systems = Systems(clients, seed=5, sigma=sigma)
    return Schedule(seed=5, concurrency=concurrency, buffer=buffer, systems=systems,
                    work=np.full(clients, 100), bytes_down=1000, bytes_up=1000, state=state)


def test_the_schedule_applies_arrivals_in_virtual_order_and_tracks_staleness():
    schedule = _schedule()
    seen_now = []
    for _ in range(6):
        arrivals, lost, freed = schedule.next_buffer()
        assert len(arrivals) == 2 and not lost and freed >= 1
        finishes = [a.finish for a in arrivals]
        assert finishes == sorted(finishes) and finishes[-1] == schedule.now
        assert all(a.version <= schedule.version for a in arrivals)
        assert len([f for f in schedule.flights if f.client >= 0]) == 3 - freed  # the others still train
        seen_now.append(schedule.now)
        schedule.applied(freed)
        assert len(schedule.flights) == 3  # a freed slot starts a new client at once
        assert len({f.client for f in schedule.flights}) == 3  # never the same client twice at once
    assert seen_now == sorted(seen_now)


def test_a_schedule_restored_from_its_state_continues_the_same():
    a = _schedule()
    for _ in range(3):
        _, _, freed = a.next_buffer()
        a.applied(freed)
    b = _schedule(state=json.loads(json.dumps(a.state())))  # through JSON, as a checkpoint keeps it
    for _ in range(5):
        (xa, la, fa), (xb, lb, fb) = a.next_buffer(), b.next_buffer()
        assert (xa, la, fa) == (xb, lb, fb)
        a.applied(fa)
        b.applied(fb)


def test_ties_in_virtual_time_go_by_client_id():
    schedule = _schedule(concurrency=4, buffer=4, sigma=0.0)  # everyone alike: all four arrive at once
    arrivals, _, freed = schedule.next_buffer()
    assert [a.client for a in arrivals] == sorted(a.client for a in arrivals) and freed == 4
    assert isinstance(arrivals[0], Flight)


def test_a_client_going_offline_mid_training_is_lost_and_its_slot_reused(tmp_path):
    # Client 0 leaves after 0.5 s, before any client can finish (a reference client needs ~2 s here).
    trace = Trace(windows=[(0, 0.0, 0.5)])
    systems = Systems(3, seed=0, trace=trace)
    schedule = Schedule(seed=0, concurrency=3, buffer=2, systems=systems, work=np.full(3, 100),
                        bytes_down=1000, bytes_up=1000)
    assert {f.client for f in schedule.flights} == {0, 1, 2}
    arrivals, lost, _ = schedule.next_buffer()
    assert [f.client for f in lost] == [0] and {a.client for a in arrivals} == {1, 2}


# ---- runs ----------------------------------------------------------------------------------------------

def test_fedbuff_with_equal_clients_and_a_buffer_of_m_is_fedavg_to_the_byte():
    fedavg = run_in_process(spirals_config(rounds=6))
    fedbuff = run_in_process(spirals_config(rounds=6, strategy="fedbuff", concurrency=5, buffer=5,
                                            staleness="constant"))
    assert fedbuff[-1]["weights"].tobytes() == fedavg[-1]["weights"].tobytes()
    assert [r["clients"] for r in rounds_of(fedbuff)] == [r["clients"] for r in rounds_of(fedavg)]
    assert all(r["staleness"]["max"] == 0 for r in rounds_of(fedbuff))


def test_fedbuff_on_uneven_clients_is_the_same_bytes_on_one_host_or_three():
    cfg = spirals_config(rounds=8, strategy="fedbuff", concurrency=6, buffer=3, client_speed="lognormal:1")
    one, three = run_in_process(cfg, hosts=1), run_in_process(cfg, hosts=3)
    assert one[-1]["weights"].tobytes() == three[-1]["weights"].tobytes()
    rows = rounds_of(one)
    assert max(r["staleness"]["max"] for r in rows) >= 1  # stale updates were applied, weighted
    times = [r["virtual_seconds"] for r in rows]
    assert times == sorted(times) and times[0] > 0
    assert run_in_process(dataclasses.replace(cfg, staleness="constant"))[-1]["weights"].tobytes() != \
        one[-1]["weights"].tobytes()


def test_fedasync_mixes_each_arrival_and_learns():
    events = run_in_process(spirals_config(rounds=24, eval_every=1, strategy="fedasync", concurrency=4,
                                           client_speed="lognormal:0.5"))
    rows = rounds_of(events)
    assert all(r["num_updates"] == 1 for r in rows)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]


def test_a_deadline_drops_the_slow_and_over_selection_keeps_the_first_m():
    cfg = spirals_config(rounds=4, client_speed="lognormal:1.5", over_select=0.6)
    rows = rounds_of(run_in_process(cfg))
    m = cfg.clients_per_round
    for r in rows:
        assert len(r["clients"]) == 8 and r["num_updates"] == m and len(r["late"]) == 3  # ceil(5 x 1.6) sampled
    # A deadline short of the reference client's round (60 examples x 2 epochs x 0.01 s + transfers) keeps fewer.
    tight = rounds_of(run_in_process(dataclasses.replace(cfg, deadline=2.0)))
    assert any(r["num_updates"] < m for r in tight) and any(r["num_updates"] == m for r in tight)
    # Each round, recomputed from the clients' profiles: it keeps the sampled clients that finish inside the
    # deadline, at most m, and lasts until the m-th of them arrives, or the whole deadline when fewer finish.
    from fedactors.runtime.experiment import model_weights
    from fedactors.data.partition import partition
    from fedactors.task import load_arrays, load_task
    from fedactors.traffic import per_client

    task = load_task(cfg.task)
    sizes = [len(p) for p in partition(load_arrays(task, None, None).y_train, cfg.clients, cfg.partition, cfg.seed)]
    systems = Systems(cfg.clients, cfg.seed, sigma=1.5)
    down, up = per_client(cfg.strategy, model_weights(task), cfg.compress)
    ends = [0.0] + [r["virtual_seconds"] for r in tight]
    for r, start, end in zip(tight, ends, ends[1:]):
        inside = sorted(d for d in (systems.duration(c, sizes[c] * cfg.epochs, down, up) for c in r["clients"])
                        if d <= 2.0)
        assert r["num_updates"] == min(m, len(inside))
        assert end - start == pytest.approx(inside[m - 1] if len(inside) >= m else 2.0)


def test_a_round_nobody_finishes_in_time_leaves_the_model_as_it_was():
    # Client 0 alone is fast enough; a round that does not sample it keeps nobody.
    trace = Trace(profiles={0: (0.0001, 1000.0, 1000.0)})
    cfg = spirals_config(rounds=3, eval_every=1, frac=0.1, client_speed="lognormal:0.1", deadline=0.5,
                         client_trace="t.csv")
    rows = rounds_of(run_in_process(cfg, trace=trace))
    idle = [r for r in rows if 0 not in r["clients"]]
    assert idle and all(r["num_updates"] == 0 and r["virtual_seconds"] == pytest.approx(0.5 * r["round"]) for r in idle)
    assert all(rows[i]["accuracy"] == rows[i - 1]["accuracy"] for i in range(1, 3) if rows[i] in idle)


def test_a_deadline_no_client_can_meet_fails_the_first_round_with_that_reason():
    from fedactors.errors import RoundFailed

    with pytest.raises(RoundFailed, match=r"round 1: --deadline 0.001 virtual s is shorter than any client's round: "
                                          r"the fastest takes"):
        run_in_process(spirals_config(rounds=2, client_speed="lognormal:0.1", deadline=1e-3))


def test_only_online_clients_are_sampled():
    # Clients 10..19 come online only long after the run (a client without windows would be always online).
    windows = [(c, 0.0, 1e9) for c in range(10)] + [(c, 1e8, 1e9) for c in range(10, 20)]
    cfg = spirals_config(rounds=3, client_trace="unused.csv")  # the trace is handed in, as experiment.run does
    rows = rounds_of(run_in_process(cfg, trace=Trace(windows=windows)))
    assert all(set(r["clients"]) <= set(range(10)) and r["available"] == 10 for r in rows)


def test_the_papers_defaults_carry_no_clock():
    assert not RunConfig().simulates_systems
    assert RunConfig().experiment() == RunConfig(over_select=None).experiment()


def test_a_fast_client_arriving_twice_in_one_buffer_counts_twice():
    # Client 0 is 100x faster than the others: it finishes, starts again from the same version, and arrives again.
    # Only clients 0..3 are online, so a freed slot can start only the client that freed it.
    trace = Trace(profiles={0: (0.0001, 1000.0, 1000.0)}, windows=[(c, 1e8, 1e9) for c in range(4, 20)])
    cfg = spirals_config(rounds=3, strategy="fedbuff", concurrency=4, buffer=3, client_trace="unused.csv")
    one, two = run_in_process(cfg, hosts=1, trace=trace), run_in_process(cfg, hosts=2, trace=trace)
    rows = rounds_of(one)
    assert any(r["clients"].count(0) >= 2 for r in rows), [r["clients"] for r in rows]
    assert all(r["num_updates"] == 3 for r in rows)
    assert one[-1]["weights"].tobytes() == two[-1]["weights"].tobytes()


# ---- real runs: Ray, the embedded store, SIGKILL ---------------------------------------------------------

def _trace_file(tmp_path):
    """Clients 0..4 slow and on a thin uplink; clients 5..19 online only in windows (many close mid-training)."""
    rows = ["client,speed,up_mbps,down_mbps"] + [f"{c},0.05,2,20" for c in range(5)]
    rows += ["client,online_from,online_until"] + [f"{c},0,{1 + c / 10}" for c in range(5, 20)]
    rows += [f"{c},{5 + c},{30 + c}" for c in range(5, 20)] + [f"{c},{40 + c},{400}" for c in range(5, 20)]
    path = tmp_path / "trace.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _cli_config(args: list[str]) -> RunConfig:
    from click.testing import CliRunner

    from fedactors.cli import cli

    plan = CliRunner().invoke(cli, ["run", *args, "--dry-run", "--json"])
    assert plan.exit_code == 0, plan.output
    return RunConfig.from_dict(json.loads(plan.output)["config"])


def _args(*more: str) -> list[str]:
    from conftest import REPO

    return ["--task", f"{REPO}/examples/spirals.py:task", "--clients", "20", "--frac", "0.25", "--partition", "iid",
            "--epochs", "2", "--batch-size", "20", "--lr", "0.2", "--eval-every", "40", "--seed", "3", "--hosts", "2",
            *more]


@pytest.mark.slow
def test_fedbuff_on_a_trace_resumes_after_sigkill_to_the_bytes_computed_in_process(tmp_path):
    from conftest import fedactors
    from test_resume import start_and_kill_mid_round

    trace = _trace_file(tmp_path)
    args = _args("--strategy", "fedbuff", "--concurrency", "6", "--buffer", "3", "--client-speed", "lognormal:1",
                 "--client-trace", str(trace), "--server-optimizer", "fedavgm", "--server-lr", "0.5")
    rounds = 160
    out = tmp_path / "run"
    start_and_kill_mid_round(out, "--run-id", "fb", args=args, rounds=rounds, after_rounds=30)
    result = fedactors("run", "--resume", "fb", "--out", str(out))
    assert result.returncode == 0, result.stderr
    cfg = _cli_config([*args, "--rounds", str(rounds)])
    events = run_in_process(cfg, trace=read_trace(trace, cfg.clients))
    assert np.load(out / "weights.npy").tobytes() == events[-1]["weights"].tobytes()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["virtual_seconds"] for r in rows] == [r["virtual_seconds"] for r in rounds_of(events) if "accuracy" in r
                                                    and r["accuracy"] is not None]
    assert any(r["offline"] for r in rounds_of(events))  # windows closed on clients mid-training
    # A changed trace is another experiment: the resume of the finished run refuses it in one line.
    trace.write_text(trace.read_text().replace("0,0.05,2,20", "0,0.07,2,20"))
    again = fedactors("run", "--resume", "fb", "--out", str(out), "--rounds", str(rounds + 10))
    assert again.returncode == 2 and "trace" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow
def test_a_deadline_run_on_ray_is_the_in_process_run(tmp_path):
    from conftest import fedactors

    args = _args("--client-speed", "lognormal:1", "--deadline", "12", "--over-select", "0.4", "--rounds", "12",
                 "--eval-every", "4")
    out = tmp_path / "run"
    result = fedactors("run", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    events = run_in_process(_cli_config(args))
    assert np.load(out / "weights.npy").tobytes() == events[-1]["weights"].tobytes()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["late"] is not None and len(r["clients"]) == 7 for r in rows)  # ceil(5 x 1.4) sampled
    assert json.loads((out / "run.json").read_text())["virtual_seconds"] == rows[-1]["virtual_seconds"]


def test_a_bad_trace_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    from conftest import fedactors

    bad = tmp_path / "bad.csv"
    bad.write_text("client,speed,up_mbps,down_mbps\n0,0.01,5,5\n1,0.005,20\n")
    result = fedactors("run", *_args("--client-trace", str(bad), "--rounds", "2", "--out", str(tmp_path / "r")))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and f"{bad}, line 3: a speed row is" in result.stderr
    missing = fedactors("run", *_args("--client-trace", str(tmp_path / "nope.csv"), "--rounds", "2"))
    assert missing.returncode == 2 and "nope.csv" in missing.stderr and "Traceback" not in missing.stderr


def test_a_round_plan_keeps_the_first_m_inside_the_deadline():
    from fedactors.runtime.systems import plan_round

    # Client c takes c + 1 virtual seconds (100 examples at 0.01 (c + 1) s each, nothing to send).
    systems = Systems(10, seed=0, trace=Trace(profiles={c: (0.01 * (c + 1), 1.0, 1.0) for c in range(10)}))
    plan = plan_round(systems, 0.0, seed=4, round_idx=1, m=3, over_select=1.0, deadline=None, work=[100] * 10,
                      bytes_down=0, bytes_up=0)
    assert len(plan.sampled) == 6 and plan.kept == sorted(plan.sampled)[:3] and plan.late == sorted(plan.sampled)[3:]
    assert plan.seconds == pytest.approx(sorted(plan.sampled)[2] + 1)
    tight = plan_round(systems, 0.0, seed=4, round_idx=1, m=3, over_select=1.0, deadline=sorted(plan.sampled)[0] + 1.5,
                       work=[100] * 10, bytes_down=0, bytes_up=0)
    assert tight.kept == sorted(plan.sampled)[:1] and tight.seconds == sorted(plan.sampled)[0] + 1.5
    gone = Systems(10, seed=0, trace=Trace(windows=[(c, 50.0, 60.0) for c in range(10)]))
    assert plan_round(gone, 0.0, seed=4, round_idx=1, m=3, over_select=0.0, deadline=None, work=[100] * 10,
                      bytes_down=0, bytes_up=0).seconds == 50.0  # nobody online: the round waits for the window
    with pytest.raises(RuntimeError, match="no client is online"):
        plan_round(gone, 70.0, seed=4, round_idx=1, m=3, over_select=0.0, deadline=None, work=[100] * 10,
                   bytes_down=0, bytes_up=0)


def test_fedbuff_with_a_server_optimizer_takes_its_step_on_the_buffer_and_resumes_it():
    from fedactors.strategy import make_strategy

    cfg = spirals_config(rounds=6, strategy="fedbuff", concurrency=6, buffer=3, client_speed="lognormal:1",
                         server_optimizer="fedadam")
    assert make_strategy(cfg).settings()["optimizer"] == {"name": "fedadam", "lr": 0.01, "beta1": 0.9, "beta2": 0.99,
                                                          "tau": 0.001}
    whole = run_in_process(cfg)
    plain = run_in_process(dataclasses.replace(cfg, server_optimizer=None))
    assert whole[-1]["weights"].tobytes() != plain[-1]["weights"].tobytes()
    with pytest.raises(ConfigError, match="--beta2 with --strategy fedbuff needs --server-optimizer"):
        from fedactors.config import refuse_idle_settings

        refuse_idle_settings({"beta2"}, {**dataclasses.asdict(cfg), "server_optimizer": "fedavgm"})


def test_dry_run_previews_the_clock_without_training(tmp_path):
    from click.testing import CliRunner

    from fedactors.cli import cli

    def plan(*more):
        result = CliRunner().invoke(cli, ["run", *_args("--client-speed", "lognormal:1", *more), "--dry-run", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["clock"]

    sync, over = plan(), plan("--over-select", "0.6")
    assert sync["client_seconds"]["p10"] < sync["client_seconds"]["p50"] < sync["client_seconds"]["p90"]
    assert sync["dropped_per_round"] == 0 and over["dropped_per_round"] == pytest.approx(3.0)  # 8 sampled, 5 kept
    assert over["round_seconds"] < sync["round_seconds"]  # the slowest are not waited for
    buffered = plan("--strategy", "fedbuff", "--concurrency", "10", "--buffer", "5")
    assert buffered["round_seconds"] < sync["round_seconds"] and buffered["mean_staleness"] > 0
    text = CliRunner().invoke(cli, ["run", *_args("--client-speed", "lognormal:1"), "--dry-run"]).output
    assert "virtual clock: one client's local training takes" in text and "the first 20 rounds: median" in text
    assert CliRunner().invoke(cli, ["run", *_args(), "--dry-run", "--json"]).output.count('"clock": null') == 1


def test_dry_run_previews_no_more_rounds_than_the_run_has():
    from click.testing import CliRunner

    from fedactors.cli import cli

    def text(*more):
        result = CliRunner().invoke(cli, ["run", *_args("--client-speed", "lognormal:1", *more), "--dry-run"])
        assert result.exit_code == 0, result.output
        return result.output

    assert "the first 10 rounds: median" in text("--rounds", "10") and "first 20" not in text("--rounds", "10")
    assert "the first round: median" in text("--rounds", "1")
    assert "the first 20 rounds: median" in text("--rounds", "300")
    buffered = text("--rounds", "4", "--strategy", "fedbuff", "--concurrency", "10", "--buffer", "5")
    assert "the first 4 server updates: median" in buffered
    # The previewed rounds are the run's own first rounds: the 10 of a 10-round run are the first 10 of a longer one.
    short, long = (json.loads(CliRunner().invoke(cli, ["run", *_args("--client-speed", "lognormal:1", "--over-select",
                                                                     "0.6", "--rounds", r), "--dry-run", "--json"]
                                                 ).output)["clock"] for r in ("10", "20"))
    assert short["rounds"] == 10 and long["rounds"] == 20 and short["dropped_per_round"] == long["dropped_per_round"]


def test_report_and_plot_read_the_clock_of_the_committed_runs(tmp_path):
    from conftest import REPO, fedactors

    runs = [str(REPO / "docs" / "runs" / f"uneven-iid-E1-B10-{r}") for r in ("sync", "sync-over0.3", "fedbuff-c20-k10")]
    report = fedactors("report", *runs, "--target", "0.99")
    assert report.returncode == 0, report.stderr
    header = report.stdout.splitlines()[0]
    assert "virtual s" in header and "virtual s to target" in header
    plot = fedactors("plot", *runs, "--x", "virtual", "-o", str(tmp_path / "v.png"))
    assert plot.returncode == 0 and (tmp_path / "v.png").stat().st_size > 10_000
    unclocked = fedactors("plot", str(REPO / "docs" / "runs" / "noniid-E1-B10-C0.1"), "--x", "virtual", "-o",
                          str(tmp_path / "w.png"))
    assert unclocked.returncode == 2 and "ran without a virtual clock" in unclocked.stderr
    assert unclocked.stderr.strip().count("\n") == 0


def test_a_synchronous_run_on_the_clock_continues_from_its_saved_clock():
    # Windows that open and close through the run: which clients can be sampled depends on the clock.
    trace = Trace(windows=[(c, 3.0 * (c % 4), 3.0 * (c % 4) + 9.0) for c in range(20)] +
                  [(c, 30.0, 1e9) for c in range(20)])
    cfg = spirals_config(rounds=6, eval_every=6, client_speed="lognormal:0.5", deadline=4.0, client_trace="t.csv")
    whole = run_in_process(cfg, trace=trace)
    first = run_in_process(dataclasses.replace(cfg, rounds=3), trace=trace)
    rows = rounds_of(first)
    clock = {"now": rows[-1]["virtual_seconds"]}
    rest = run_in_process(cfg, trace=trace, start_round=3, weights=first[-1]["weights"], clock=clock)
    assert rest[-1]["weights"].tobytes() == whole[-1]["weights"].tobytes()
    assert rounds_of(rest)[-1]["virtual_seconds"] == rounds_of(whole)[-1]["virtual_seconds"]
    assert len({r["available"] for r in rounds_of(whole)}) > 1  # the windows did change who could be sampled


def test_fedbuff_refuses_a_concurrency_whose_weights_would_not_fit():
    import os

    from fedactors.runtime.experiment import check_client_state

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cfg = RunConfig(strategy="fedbuff", concurrency=100, keep=1)
    weights = int(total / 2 / (100 * 4 * 4)) + 1000  # just past half the memory with 3 + keep copies
    with pytest.raises(ConfigError, match="--concurrency 100"):
        check_client_state(cfg, weights)
    check_client_state(dataclasses.replace(cfg, concurrency=50), weights)  # half as many: fits


@pytest.mark.slow
def test_fedbuff_with_hosts_killed_at_different_moments_gives_the_same_bytes(tmp_path):
    from test_cluster import _kill_host_after_rounds, _start

    args = ["--task", "mnist-2nn", "--partition", "noniid", "--epochs", "1", "--batch-size", "10", "--hosts", "2",
            "--strategy", "fedbuff", "--concurrency", "20", "--buffer", "10", "--client-speed", "lognormal:1",
            "--rounds", "16", "--eval-every", "16"]
    weights = []
    for host, after in ((1, 4), (0, 10)):
        out = tmp_path / f"killed-{host}-after-{after}"
        proc, log = _start(out, *args)
        _kill_host_after_rounds(proc, out, after, host=host, delay=0.1)
        assert proc.wait(timeout=600) == 0, (tmp_path / "log.txt").read_text()
        log.close()
        run = json.loads((out / "run.json").read_text())
        assert run["failures"] >= 1 and run["retried"] >= 1, run  # the kill cost the clients it was training
        weights.append((out / "weights.npy").read_bytes())
    assert weights[0] == weights[1]
