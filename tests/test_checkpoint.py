"""Checkpoint format and store, against real redis-server processes (no fakes, no mocks)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedactors.store.checkpoint import (FORMAT_VERSION, MAGIC, Checkpoint, CorruptRound, RedisStore,
                                  decode, encode, mask_url)
from fedactors.store import embedded_redis
from fedactors.store.embedded_redis import EmbeddedRedis
from fedactors.errors import CheckpointError, ConfigError, StoreUnavailable

REPO = Path(__file__).resolve().parent.parent
N = 10_000  # weights per test checkpoint; the benchmark uses the real 1,663,370


def make_ckpt(round_: int, run_id: str = "run-a", n: int = N, fingerprint: str = "f" * 64) -> Checkpoint:
    rng = np.random.default_rng(round_)
    return Checkpoint(run_id=run_id, round=round_, weights=rng.standard_normal(n).astype(np.float32),
                      fingerprint=fingerprint, config={"clients": 100, "lr": 0.1, "seed": 1},
                      history=[{"round": r, "accuracy": 0.5 + r / 100} for r in range(round_ + 1)],
                      extra={"note": "ünïcode", "rng": [1, 2, 3]})


def same(a: Checkpoint, b: Checkpoint) -> bool:
    """Bit-exact equality, NaN payloads and signed zeros included."""
    return (a.run_id, a.round, a.fingerprint, a.config, a.history, a.extra) == \
        (b.run_id, b.round, b.fingerprint, b.config, b.history, b.extra) and \
        a.weights.dtype == b.weights.dtype == np.float32 and \
        np.array_equal(a.weights.view(np.uint32), b.weights.view(np.uint32))


# ---- format ---------------------------------------------------------------------------------

def test_encode_decode_round_trip_is_bit_exact():
    ckpt = make_ckpt(3)
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, np.float32(3.4028235e38)], np.float32)
    ckpt = Checkpoint(**{**ckpt.__dict__, "weights": np.concatenate([ckpt.weights, special])})
    blob = encode(ckpt)
    back = decode(blob)
    assert same(back, ckpt)
    assert back.weights.shape == (N + 6,)
    assert blob.startswith(MAGIC)
    assert blob.endswith(ckpt.weights.astype("<f4").tobytes())
    header_len = struct.unpack_from("<I", blob, 12)[0]
    header = json.loads(blob[20:20 + header_len])
    assert header["dtype"] == "float32" and header["shape"] == [N + 6] and len(header["sha256"]) == 64
    assert struct.unpack_from("<I", blob, 8)[0] == FORMAT_VERSION == 1


def test_encode_refuses_weights_that_are_not_1d_float32():
    ckpt = make_ckpt(0)
    with pytest.raises(ValueError, match="float32"):
        encode(Checkpoint(**{**ckpt.__dict__, "weights": ckpt.weights.astype(np.float64)}))
    with pytest.raises(ValueError, match="1-D"):
        encode(Checkpoint(**{**ckpt.__dict__, "weights": ckpt.weights.reshape(100, 100)}))


def test_flipped_payload_byte_is_refused_as_corrupt():
    blob = bytearray(encode(make_ckpt(1)))
    blob[-7] ^= 0x01
    with pytest.raises(CheckpointError, match="checkpoint .*is corrupt: payload checksum mismatch"):
        decode(bytes(blob))


def test_flipped_header_byte_is_refused():
    blob = bytearray(encode(make_ckpt(1)))
    i = blob.index(b'"round":1') + len(b'"round":')
    blob[i] = ord("7")  # still valid JSON, so only the header checksum can catch it
    with pytest.raises(CheckpointError, match="header checksum mismatch"):
        decode(bytes(blob))


@pytest.mark.parametrize("version", [0, 2, 99])
def test_other_format_version_is_refused_naming_both(version):
    blob = bytearray(encode(make_ckpt(1)))
    struct.pack_into("<I", blob, 8, version)
    with pytest.raises(CheckpointError, match=f"format version {version}; .*reads version 1"):
        decode(bytes(blob))


def test_decode_raises_only_checkpoint_error_on_arbitrary_bytes():
    rng = np.random.default_rng(1234)
    good = encode(make_ckpt(2, n=64))
    prefix = good[:20]
    cases = [b"", MAGIC, b"\x00" * 30, prefix, good[:-1], good + b"\x00"]
    cases += [good[:k] for k in range(0, len(good), 7)]  # every truncation, in steps
    cases += [rng.bytes(int(rng.integers(0, 300))) for _ in range(300)]  # noise
    cases += [MAGIC + rng.bytes(int(rng.integers(0, 300))) for _ in range(300)]
    cases += [prefix + rng.bytes(int(rng.integers(0, 600))) for _ in range(300)]
    for _ in range(500):  # a few flipped bytes anywhere in a valid blob
        b = bytearray(good)
        for i in rng.integers(0, len(b), int(rng.integers(1, 4))):
            b[i] ^= int(rng.integers(1, 256))
        cases.append(bytes(b))
    header = {"run_id": "r", "round": 0, "dtype": "float32", "shape": [1], "sha256": "0" * 64,
              "fingerprint": "f", "config": {}, "history": [], "extra": {}}
    for field, value in [("shape", [-1]), ("shape", [1, 2]), ("round", True), ("history", [1]),
                         ("dtype", "float64"), ("config", []), ("run_id", "a:b"), ("round", -1)]:
        h = json.dumps({**header, field: value}).encode()
        cases.append(struct.pack("<8sIII", MAGIC, 1, len(h), __import__("zlib").crc32(h)) + h + b"\0" * 4)
    deep = b"[" * 100_000
    cases.append(struct.pack("<8sIII", MAGIC, 1, len(deep), __import__("zlib").crc32(deep)) + deep)
    refused = 0
    for blob in cases:
        if blob == good:
            continue
        try:
            decode(blob)
        except CheckpointError:
            refused += 1
        # any other exception fails the test here
    assert refused == len([c for c in cases if c != good])


# ---- RedisStore against a real server ---------------------------------------------------------

@pytest.fixture
def store(redis_server):
    with RedisStore(redis_server.url, retry_seconds=5) as s:
        yield s


def test_save_latest_load_round_trip(store):
    assert store.latest("run-a") == (None, [])
    for r in range(3):
        store.save(make_ckpt(r), keep=5)
    ckpt, skipped = store.latest("run-a")
    assert skipped == [] and same(ckpt, make_ckpt(2))
    assert same(store.load("run-a", 1), make_ckpt(1))
    with pytest.raises(CheckpointError, match="run run-a round 7 is missing"):
        store.load("run-a", 7)


def test_keep_prunes_older_rounds_and_their_blobs(store, redis_server):
    for r in range(6):
        store.save(make_ckpt(r), keep=3)
    assert store.info("run-a").rounds == (3, 4, 5)
    with redis_server.client() as raw:
        assert sorted(raw.keys("fedactors:run:run-a:ckpt:*")) == \
            [b"fedactors:run:run-a:ckpt:3", b"fedactors:run:run-a:ckpt:4", b"fedactors:run:run-a:ckpt:5"]
    with pytest.raises(ConfigError, match="keep"):
        store.save(make_ckpt(6), keep=0)


def test_saving_an_earlier_round_drops_the_abandoned_newer_ones(store):
    for r in range(4):
        store.save(make_ckpt(r), keep=10)
    store.save(make_ckpt(2), keep=10)
    assert store.info("run-a").rounds == (0, 1, 2)


def test_save_refuses_a_run_stored_with_another_fingerprint(store):
    store.save(make_ckpt(0), keep=3)
    with pytest.raises(CheckpointError, match="fingerprint"):
        store.save(make_ckpt(1, fingerprint="e" * 64), keep=3)
    assert store.info("run-a").rounds == (0,)


def test_runs_info_mark_finished_delete(store):
    store.save(make_ckpt(0, run_id="first"), keep=2)
    store.save(make_ckpt(4, run_id="second"), keep=2)
    infos = store.runs()
    assert [(i.run_id, i.latest_round, i.status) for i in infos] == [("first", 0, "running"),
                                                                     ("second", 4, "running")]
    assert infos[1].config == make_ckpt(4).config and infos[1].fingerprint == "f" * 64
    assert infos[0].created <= infos[1].created <= time.time()
    store.mark_finished("second")
    assert store.info("second").status == "finished"
    assert store.delete("first") is True
    assert store.info("first") is None and [i.run_id for i in store.runs()] == ["second"]
    assert store.delete("first") is False
    with pytest.raises(CheckpointError, match="not in the store"):
        store.mark_finished("first")
    with pytest.raises(ConfigError, match="run id"):
        store.latest("bad:id")


def test_newest_corrupt_falls_back_to_previous_valid_and_reports_it(store, redis_server):
    for r in range(4):
        store.save(make_ckpt(r), keep=5)
    with redis_server.client() as raw:
        blob = bytearray(raw.get("fedactors:run:run-a:ckpt:3"))
        blob[-1] ^= 0xFF
        raw.set("fedactors:run:run-a:ckpt:3", bytes(blob))
        # round 2's key now holds round 1's blob: well-formed but misplaced (foreign)
        raw.set("fedactors:run:run-a:ckpt:2", raw.get("fedactors:run:run-a:ckpt:1"))
    ckpt, skipped = store.latest("run-a")
    assert ckpt.round == 1 and same(ckpt, make_ckpt(1))
    assert [s.round for s in skipped] == [3, 2]
    assert "payload checksum mismatch" in skipped[0].reason and "foreign" in skipped[1].reason
    assert all(isinstance(s, CorruptRound) for s in skipped)
    with pytest.raises(CheckpointError, match="corrupt"):
        store.load("run-a", 3)


_KILLED_WRITER = r"""
import os, signal, sys, time
import redis.connection
from fedactors.store.checkpoint import RedisStore
sys.path.insert(0, sys.argv[3])
from test_checkpoint import make_ckpt

url, fraction = sys.argv[1], float(sys.argv[2])
send = redis.connection.AbstractConnection.send_packed_command

def send_then_die(self, command, check_health=True):
    data = b"".join(bytes(c) for c in command) if isinstance(command, list) else command
    if data.startswith(b"*1\r\n$5\r\nMULTI"):  # the transaction: send part of it, then die
        send(self, [data[:int(len(data) * fraction)]], check_health)
        if fraction >= 1.0:
            time.sleep(0.5)  # let the server run EXEC; we die before reading its reply
        os.kill(os.getpid(), signal.SIGKILL)
    return send(self, command, check_health)

redis.connection.AbstractConnection.send_packed_command = send_then_die
RedisStore(url).save(make_ckpt(2), keep=5)
"""


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.9, 0.9999, 1.0])
def test_writer_killed_mid_transaction_leaves_previous_checkpoint(store, redis_server, fraction):
    store.save(make_ckpt(0), keep=5)
    store.save(make_ckpt(1), keep=5)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, redis_server.url, str(fraction),
                           str(Path(__file__).parent)], env=env, capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    time.sleep(0.2)  # let the server notice the closed connection
    ckpt, skipped = store.latest("run-a")
    assert skipped == []
    with redis_server.client() as raw:
        keys = raw.keys("fedactors:run:run-a:ckpt:*")
        meta_round = int(raw.hget("fedactors:run:run-a:meta", "latest_round"))
    if fraction < 1.0:  # EXEC never arrived: nothing of round 2 anywhere
        assert ckpt.round == 1 and same(ckpt, make_ckpt(1)) and meta_round == 1
        assert b"fedactors:run:run-a:ckpt:2" not in keys and store.info("run-a").rounds == (0, 1)
    else:  # the whole transaction arrived before the kill: all of round 2, at once
        assert ckpt.round == 2 and same(ckpt, make_ckpt(2)) and meta_round == 2


def test_redis_restarted_within_retry_window_save_succeeds(redis_server):
    with RedisStore(redis_server.url, retry_seconds=30) as store:
        store.save(make_ckpt(0), keep=3)
        redis_server.stop()
        restart = threading.Timer(1.5, redis_server.start)
        restart.start()
        try:
            t0 = time.monotonic()
            store.save(make_ckpt(1), keep=3)
            waited = time.monotonic() - t0
        finally:
            restart.join()
        assert waited >= 1.0  # it really was down, and the retries carried the save through
        ckpt, _ = store.latest("run-a")
        assert same(ckpt, make_ckpt(1)) and store.info("run-a").rounds == (0, 1)


def test_redis_down_past_retry_budget_raises_store_unavailable(make_redis_server):
    server = make_redis_server("--requirepass", "s3cr3t-pw")
    url = f"redis://:s3cr3t-pw@127.0.0.1:{server.port}/0"
    with RedisStore(url, retry_seconds=1.0) as store:
        store.save(make_ckpt(0), keep=3)
        store.save(make_ckpt(1), keep=3)
        server.kill()
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as err:
            store.save(make_ckpt(2), keep=3)
        elapsed = time.monotonic() - t0
    message = str(err.value)
    assert 1.0 <= elapsed < 5.0
    assert err.value.exit_code == 3
    assert "round 1 of run run-a is the last checkpoint safely stored" in message
    assert "saving round 2" in message and f"127.0.0.1:{server.port}" in message
    assert "s3cr3t-pw" not in message and "***" in message


def test_wrong_password_is_a_config_error_without_the_password(make_redis_server):
    server = make_redis_server("--requirepass", "right-pw")
    with RedisStore(f"redis://:wrong-pw@127.0.0.1:{server.port}", retry_seconds=30) as store:
        with pytest.raises(ConfigError, match=f"Redis at 127.0.0.1:{server.port} refused the password") as err:
            store.check()
        assert "wrong-pw" not in str(err.value) and err.value.exit_code == 2
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match="refused the password"):
            store.save(make_ckpt(0), keep=1)  # not retried
        assert time.monotonic() - t0 < 2.0
    with RedisStore(f"redis://127.0.0.1:{server.port}") as store:
        with pytest.raises(ConfigError, match="requires a password"):
            store.check()
    with RedisStore(f"redis://:right-pw@127.0.0.1:{server.port}") as store:
        store.check()


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", "redis://host:notaport"])
def test_bad_url_is_a_config_error(url):
    with pytest.raises(ConfigError, match="Redis URL"):
        RedisStore(url)


def test_unreachable_at_start_is_a_config_error(redis_server):
    redis_server.stop()
    with RedisStore(redis_server.url, retry_seconds=30) as store:
        with pytest.raises(ConfigError, match=f"cannot reach Redis at redis://127.0.0.1:{redis_server.port}"):
            store.check()


def test_mask_url_hides_passwords():
    assert mask_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert mask_url("rediss://:pw@h:1") == "rediss://:***@h:1"
    assert "pw" not in mask_url("unix:///tmp/r.sock?password=pw&db=2")
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


# ---- the embedded server ----------------------------------------------------------------------

def test_embedded_data_persists_across_stop_and_start(tmp_path):
    with EmbeddedRedis(tmp_path / "run") as server, RedisStore(server.url) as store:
        assert server.url.startswith("unix://") and server.owner
        store.save(make_ckpt(5), keep=2)
        first_pid = server.pid
    assert not os.path.exists(server.data_dir / "redis.sock")
    with EmbeddedRedis(tmp_path / "run") as server, RedisStore(server.url) as store:
        assert server.pid != first_pid
        ckpt, _ = store.latest("run-a")
        assert same(ckpt, make_ckpt(5))


def test_embedded_checkpoint_survives_sigkill_of_the_server(tmp_path):
    server = EmbeddedRedis(tmp_path / "run").start()
    try:
        with RedisStore(server.url) as store:
            store.save(make_ckpt(7), keep=2)
        os.killpg(server.pid, signal.SIGKILL)  # no SHUTDOWN, no AOF flush at exit
    finally:
        server.stop()  # reaps the killed server
    with EmbeddedRedis(tmp_path / "run") as again, RedisStore(again.url) as store:
        ckpt, skipped = store.latest("run-a")
        assert skipped == [] and same(ckpt, make_ckpt(7))


def test_second_embedded_on_same_dir_reuses_the_running_server(tmp_path):
    with EmbeddedRedis(tmp_path / "run") as first:
        second = EmbeddedRedis(tmp_path / "run").start()
        assert (second.pid, second.url, second.owner) == (first.pid, first.url, False)
        second.stop()  # not its server: must leave it running
        with RedisStore(first.url) as store:
            store.check()
        pid = first.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _start_and_abandon(data_dir: Path, *, parent_death_signal: bool) -> int:
    """A process that starts an embedded server, saves round 1, and exits without stopping it; returns its pid."""
    starter = ("import sys; from fedactors.store import embedded_redis; from fedactors.store.checkpoint import RedisStore\n"
               "from test_checkpoint import make_ckpt\n"
               f"{'' if parent_death_signal else 'embedded_redis._die_with_parent = lambda: None'}\n"
               "server = embedded_redis.EmbeddedRedis(sys.argv[1]).start()\n"
               "RedisStore(server.url).save(make_ckpt(1), keep=2)\n"
               "print(server.pid)")
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", starter, str(data_dir)], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout)


def test_embedded_server_dies_with_the_process_that_started_it_and_keeps_its_data(tmp_path):
    orphan = _start_and_abandon(tmp_path / "run", parent_death_signal=True)
    try:
        deadline = time.monotonic() + 10
        while not _zombie_or_gone(orphan):
            assert time.monotonic() < deadline, "the server outlived its starter"
            time.sleep(0.02)
        with EmbeddedRedis(tmp_path / "run") as server, RedisStore(server.url) as store:
            assert server.pid != orphan and server.owner
            assert same(store.latest("run-a")[0], make_ckpt(1))  # flushed on SIGTERM, read back from the AOF
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(orphan, signal.SIGKILL)


def test_a_server_shutting_down_after_its_starter_died_is_waited_for_not_reused(tmp_path):
    """Right after a SIGKILLed run, its server has its parent-death SIGTERM but still answers until Redis's next
    cron tick: a resume at that moment must wait for it to go and start its own, not adopt it and lose the
    connection a moment later ("Connection reset by peer" on the first command, seen in CI)."""
    orphan = _start_and_abandon(tmp_path / "run", parent_death_signal=True)
    try:
        with EmbeddedRedis(tmp_path / "run") as server, RedisStore(server.url) as store:  # at once, no wait
            assert server.pid != orphan and server.owner and _zombie_or_gone(orphan)
            for _ in range(5):  # the server it uses stays
                assert same(store.latest("run-a")[0], make_ckpt(1))
                time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(orphan, signal.SIGKILL)


def test_a_server_that_should_have_died_with_its_starter_but_lives_is_adopted(tmp_path, monkeypatch):
    """Should the parent-death signal not come (the starter's thread was not its last), the wait ends and the
    live server is adopted as on a system without the signal."""
    orphan = _start_and_abandon(tmp_path / "run", parent_death_signal=False)
    try:
        state_path = tmp_path / "run" / embedded_redis.STATE_FILE
        state = json.loads(state_path.read_text())
        state_path.write_text(json.dumps({**state, "dies_with_owner": True}))
        monkeypatch.setattr(EmbeddedRedis, "EXIT_SECONDS", 0.5)
        started = time.monotonic()
        server = EmbeddedRedis(tmp_path / "run").start()
        assert server.pid == orphan and server.owner and time.monotonic() - started >= 0.5
        server.stop()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(orphan, signal.SIGKILL)


def test_embedded_server_orphaned_by_its_starter_is_reused_and_adopted(tmp_path):
    """Where no parent-death signal stopped it (another OS), the next EmbeddedRedis adopts the orphan."""
    orphan = _start_and_abandon(tmp_path / "run", parent_death_signal=False)
    try:
        time.sleep(0.3)
        assert not _zombie_or_gone(orphan)
        server = EmbeddedRedis(tmp_path / "run").start()
        assert server.pid == orphan and server.owner
        server.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _zombie_or_gone(orphan):
            time.sleep(0.02)
        assert _zombie_or_gone(orphan)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(orphan, signal.SIGKILL)


def test_embedded_data_dir_too_long_for_a_socket_path_still_works(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with EmbeddedRedis(deep) as server, RedisStore(server.url) as store:
        assert not server.socket_path.startswith(str(deep))  # moved to a short private dir
        store.save(make_ckpt(1), keep=1)
        assert same(store.latest("run-a")[0], make_ckpt(1))
        socket_dir = os.path.dirname(server.socket_path)
    assert not os.path.exists(socket_dir)
    assert (deep / "appendonly.aof").exists()


# ---- A Redis that forgets ------------------------------------------------------------------------

def test_a_store_that_lost_the_run_gets_the_round_again_and_says_so(make_redis_server):
    server = make_redis_server("--appendonly", "no", "--save", "")
    with RedisStore(server.url, retry_seconds=5) as store:
        assert "keeps nothing on disk" in store.persistence_warning()
        assert store.save(make_ckpt(1), keep=2) is None  # a new run: nothing was there to lose
        assert store.save(make_ckpt(2), keep=2) is None
        server.stop()  # without persistence, a restart comes back empty
        server.start()
        warning = store.save(make_ckpt(3), keep=2)
        assert "lost every checkpoint of run run-a (up to round 2)" in warning and "round 3 is stored again" in warning
        ckpt, skipped = store.latest("run-a")
        assert same(ckpt, make_ckpt(3)) and skipped == [] and store.info("run-a").rounds == (3,)
        assert store.save(make_ckpt(4), keep=2) is None  # whole again


def test_a_persistent_store_gives_no_warning(store):
    assert store.persistence_warning() is None  # the fixture's server runs with appendonly yes


# ---- A strategy's state buffers -----------------------------------------------------------------

def _with_state(round_: int) -> Checkpoint:
    rng = np.random.default_rng(100 + round_)
    base = make_ckpt(round_)
    state = {"m": rng.standard_normal(N).astype(np.float32), "c17": rng.standard_normal(N).astype(np.float32)}
    return Checkpoint(base.run_id, base.round, base.weights, base.fingerprint, base.config, base.history, base.extra, state)


def test_state_buffers_round_trip_and_are_pruned_with_their_round(store, redis_server):
    for r in (1, 2, 3):
        store.save(_with_state(r), keep=2)
    ckpt, skipped = store.latest("run-a")
    assert skipped == [] and ckpt.round == 3 and set(ckpt.state) == {"m", "c17"}
    for name, buf in _with_state(3).state.items():
        assert ckpt.state[name].tobytes() == buf.tobytes()
    assert set(ckpt.extra["state_sha256"]) == {"m", "c17"}
    keys = {k.decode() for k in redis_server.client().keys("fedactors:run:run-a:state:*")}
    assert keys == {"fedactors:run:run-a:state:2", "fedactors:run:run-a:state:3"}  # round 1's went with it


def test_a_corrupt_or_missing_state_buffer_makes_its_round_unusable(store, redis_server):
    store.save(_with_state(1), keep=3)
    store.save(_with_state(2), keep=3)
    client = redis_server.client()
    blob = bytearray(client.hget("fedactors:run:run-a:state:2", "m"))
    blob[-1] ^= 0xFF
    client.hset("fedactors:run:run-a:state:2", "m", bytes(blob))
    ckpt, skipped = store.latest("run-a")
    assert ckpt.round == 1 and [s.round for s in skipped] == [2] and "state buffer 'm'" in skipped[0].reason
    client.hdel("fedactors:run:run-a:state:1", "c17")
    ckpt, skipped = store.latest("run-a")
    assert ckpt is None and "missing its state buffer 'c17'" in skipped[1].reason


@pytest.mark.parametrize(("state", "extra", "message"), [
    ({"optimizer/m": np.zeros(2, np.float32)}, {"state_layout": "stages"},
     r"run r round 3: state buffer 'optimizer/m' is of no stage this fedactors knows \(algorithm, feedback, async\)"),
    ({"m": np.zeros(2, np.float32)}, {"state_layout": "stages"}, r"state buffer 'm' is of no stage"),
    ({"algorithm/m": np.zeros(2, np.float32)}, {"state_layout": "stages-2"},
     r"run r round 3: its state is laid out as 'stages-2', which this fedactors does not read \('stages'\)"),
])
def test_a_checkpoint_whose_state_this_fedactors_cannot_place_is_refused_by_name(state, extra, message):
    """A buffer of an unknown stage (a later fedactors's) is never handed to the algorithm as if it were its own."""
    ckpt = Checkpoint("r", 3, np.zeros(2, np.float32), "f" * 64, {}, [], extra, state)
    with pytest.raises(CheckpointError, match=message):
        ckpt.strategy_state()


def test_a_checkpoints_state_comes_back_by_stage():
    state = {"algorithm/m": np.ones(2, np.float32), "algorithm/feedback/residual0": np.zeros(2, np.float32),
             "feedback/residual4": np.full(2, 3, np.float32), "async/version7": np.full(2, 5, np.float32)}
    ckpt = Checkpoint("r", 3, np.zeros(2, np.float32), "f" * 64, {}, [], {"state_layout": "stages",
                                                                          "strategy": {"t": 1}}, state)
    algorithm, scalars, framework = ckpt.strategy_state()
    assert sorted(algorithm) == ["feedback/residual0", "m"] and scalars == {"t": 1}
    assert sorted(framework) == ["residual4", "version7"] and framework["version7"][0] == 5
