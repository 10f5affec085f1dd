"""Compressed updates: the native quantizer and rotation against NumPy oracles, the bytes they send, and runs with them."""

import json

import numpy as np
import pytest

from conftest import fedactors

def _draw(key: int, n: int, first: int = 0) -> np.ndarray:
    """csrc/quantize.hpp's draws: murmur3's fmix32 of i * golden + key (folded to 32 bits), uint32 arithmetic."""
    key32 = np.uint32((key ^ (key >> 32)) & 0xFFFFFFFF)
    h = np.arange(first, first + n, dtype=np.uint32) * np.uint32(0x9E3779B9) + key32
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _uniform(key: int, n: int) -> np.ndarray:
    return (_draw(key, n) >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_matches_a_numpy_oracle_level_for_level(bits):
    from fedactors import _kernels

    x = np.random.default_rng(bits).normal(size=1000).astype(np.float32)
    codes, lo, step = _kernels.quantize(x, bits=bits, block=256, key=12345)
    u = _uniform(12345, len(x))
    levels = []
    for b in range(4):
        v = x[256 * b : 256 * (b + 1)]
        mn, s = v.min(), (v.max() - v.min()) / np.float32(2**bits - 1)
        assert lo[b] == mn and step[b] == s
        t = (v - mn) * (np.float32(1) / s)  # float32 throughout, as the kernel
        q = np.floor(t)
        levels.append(np.clip(q + (u[256 * b : 256 * b + len(v)] < t - q), 0, 2**bits - 1))
    levels = np.concatenate(levels).astype(np.int64)
    per_byte = 8 // bits
    unpacked = (codes[np.arange(1024) // per_byte] >> (bits * (np.arange(1024) % per_byte))) & (2**bits - 1)
    assert np.array_equal(unpacked[:1000], levels)
    decoded = _kernels.dequantize(codes, lo, step, n=1000, bits=bits, block=256)
    assert np.array_equal(decoded, np.repeat(lo, 256)[:1000] + levels.astype(np.float32) * np.repeat(step, 256)[:1000])


def test_quantization_is_unbiased_and_the_same_at_any_thread_count():
    from fedactors import _kernels

    x = np.random.default_rng(0).normal(size=4096).astype(np.float32)
    one = _kernels.quantize(x, bits=2, block=512, key=9, threads=1)
    two = _kernels.quantize(x, bits=2, block=512, key=9, threads=2)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    mean = np.mean([_kernels.dequantize(*_kernels.quantize(x, bits=2, block=512, key=k), n=4096, bits=2, block=512)
                    for k in range(400)], axis=0)
    step = one[2].max()
    # Each decoded value is unbiased with variance <= step^2 / 4: the mean of 400 is within 4 sd (step / 40) of x.
    assert np.abs(mean - x).max() < 4 * step / 2 / np.sqrt(400)
    assert np.abs(mean - x).mean() < step / 40


def test_a_block_whose_range_float32_cannot_hold_is_refused_in_one_line():
    """Issue 34: max - min overflowing gave a step of inf, and levels cast from NaN (undefined behaviour)."""
    from fedactors import _kernels

    x = np.zeros(1024, np.float32)
    x[600], x[700] = -3e38, 3e38  # each finite, their difference not
    with pytest.raises(ValueError, match=r"^values\[512:1024\] range from -3e\+38 to 3e\+38, more than float32 holds"):
        _kernels.quantize(x, bits=8, block=512, key=1)
    x[5] = np.nan
    with pytest.raises(ValueError, match=r"^values\[5\] is nan, expected a finite number$"):
        _kernels.quantize(x, bits=8, block=512, key=1)


def test_the_rotation_is_the_randomized_hadamard_transform_and_its_inverse_gives_the_input_back():
    from scipy.linalg import hadamard

    from fedactors import _kernels

    x = np.random.default_rng(1).normal(size=2 * 4096).astype(np.float32)
    y = x.copy()
    _kernels.hadamard(y, chunk=4096, key=77)
    signs = np.where(_draw(77, len(x)) & np.uint32(1), -1.0, 1.0)
    h = hadamard(4096).astype(np.float64)
    oracle = np.concatenate([h @ (signs[c:c + 4096] * x[c:c + 4096]) / 64.0 for c in (0, 4096)])
    assert np.allclose(y, oracle, rtol=0, atol=1e-5)
    assert np.isclose(np.linalg.norm(y), np.linalg.norm(x), rtol=1e-6)
    _kernels.hadamard(y, chunk=4096, key=77, inverse=True)
    assert np.allclose(y, x, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(x).max())


@pytest.mark.parametrize("spec", ["q8", "q4", "q2", "q4:rotate", "q2:rotate", "topk:0.01", "sign"])
@pytest.mark.parametrize("n", [1, 511, 4810, 1_663_370])
def test_the_bytes_counted_are_the_encoded_buffers_bytes(spec, n):
    from fedactors.compress import parse

    c = parse(spec)
    update = np.random.default_rng(n).normal(scale=1e-3, size=n).astype(np.float32)
    encoded = c.encode(update, seed=0, round_idx=3, client_id=5)
    assert encoded.nbytes == c.encoded_bytes(n)
    back = c.decode(encoded, n, seed=0, round_idx=3)
    assert back.shape == (n,)
    if c.feedback:  # biased: what error feedback is for; checked below
        return
    if c.rotate:  # the rounding errors (each under a step) are rotated back: bounded in norm, not coordinate by coordinate
        assert np.linalg.norm(back - update) <= np.sqrt(encoded.length) * encoded.step.max() * 1.0001
    else:
        assert np.abs(back - update).max() <= encoded.step.max() * 1.0001 + 1e-9


def test_the_rotation_shrinks_the_rounding_error_of_a_spiky_update():
    from fedactors.compress import Compressor, send

    update = np.random.default_rng(2).normal(scale=1e-3, size=65536).astype(np.float32)
    update[::1000] = 0.5  # a few large coordinates stretch their blocks' ranges
    error = {spec: np.linalg.norm(send(Compressor.parse(spec), update, np.zeros_like(update), 0, 1, 2)[0] - update)
             for spec in ("q4", "q4:rotate")}
    assert error["q4:rotate"] < error["q4"] / 2, error


@pytest.mark.parametrize(("spec", "message"), [
    ("q3", "--compress must be q8, q4 or q2"), ("zip", "--compress must be q8, q4 or q2"),
    ("q4:fast", "the only option of q4 is :rotate"), ("topk:0", r"topk keeps a fraction F of the coordinates, F in \(0, 1\)"),
    ("topk:1.5", "F in"), ("topk:half", "F in"), ("sign:2", "--compress must be"),
])
def test_bad_compressors_are_one_line(spec, message):
    from fedactors.config import RunConfig
    from fedactors.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        RunConfig(compress=spec)


def test_top_k_keeps_the_largest_coordinates_and_sign_the_signs_at_the_mean_magnitude():
    from fedactors.compress import Sign, TopK

    v = np.array([0.1, -3.0, 0.5, 2.0, -0.2, 2.0], np.float32)
    top = TopK(0.5)
    assert top.encode(v).index.tolist() == [1, 3, 5] and top.decode(top.encode(v), 6).tolist() == [0, -3, 0, 2, 0, 2]
    sign = Sign()
    assert np.allclose(sign.decode(sign.encode(v), 6), np.sign(v) * np.abs(v).mean())


@pytest.mark.parametrize("spec", ["topk:0.1", "sign"])
def test_error_feedback_keeps_what_the_compression_dropped(spec):
    from fedactors.compress import parse, send

    rng = np.random.default_rng(0)
    x, residual = rng.normal(size=1000).astype(np.float32), rng.normal(scale=0.1, size=1000).astype(np.float32)
    w = x + rng.normal(scale=0.01, size=1000).astype(np.float32)
    received, new_residual = send(parse(spec), w, x, 0, 1, 2, residual)
    assert np.allclose((received - x) + new_residual, (w - x) + residual, atol=1e-6)  # nothing is lost, only delayed
    assert send(parse("q8"), w, x, 0, 1, 2, residual)[1] is None  # unbiased compressors keep no residual


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("spec", ["q8", "q2:rotate", "topk:0.1", "sign"])
def test_an_update_holding_nan_or_infinity_is_not_encoded_and_leaves_no_residual(spec, bad):
    """Issue 34: q8 raised in the encoder (a failure, retried 3 times); top-k dropped a NaN into the residual."""
    from fedactors.compress import parse, send

    rng = np.random.default_rng(0)
    x = rng.normal(size=1000).astype(np.float32)
    w = x + rng.normal(scale=0.01, size=1000).astype(np.float32)
    w[5] = bad
    received, residual = send(parse(spec), w, x, 0, 1, 2, np.zeros(1000, np.float32))
    assert np.isnan(received[5]) or np.isinf(received[5])  # what the server gets holds it, so the client is rejected
    assert residual is None
    with pytest.raises(ValueError, match=r"^the update holds NaN or infinity \(values\[5\] is (nan|inf)\): it cannot "):
        parse(spec).encode(w - x, 0, 1, 2)


@pytest.mark.parametrize(("spec", "host_sums"), [("q8", True), ("q8", False), ("q2:rotate", False),
                                                 ("topk:0.1", False), ("sign", False)])
def test_clients_diverging_under_compression_are_rejected_not_retried(spec, host_sums):
    """The README's promise for NaN (rejected, named, not retried) holds under every compressor, host sums included."""
    from fedactors.errors import RoundFailed

    _, make = _digits(rounds=1, compress=spec, lr=1e30, host_sums=host_sums)  # every client's weights overflow
    coordinator = make()
    before = coordinator.weights.copy()
    with pytest.raises(RoundFailed, match=r"^round 1: clients \[1, 2, 3, 7, 8\] returned NaN or infinite weights, "
                                          r"which are never aggregated, leaving 0 of 5 updates"):
        list(coordinator.run())
    assert np.array_equal(coordinator.weights, before)
    assert len(coordinator.states) == 0  # no client keeps a residual of an update never used


@pytest.mark.slow
def test_through_ray_a_diverged_compressed_client_is_named_as_nan_not_an_opaque_retried_failure(tmp_path):
    result = fedactors("run", "--task", "digits-mlp", "--clients", "10", "--frac", "0.5", "--rounds", "1", "--lr", "1e30",
                       "--compress", "q8", "--hosts", "2", "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert ("fedactors: error: round 1: clients [1, 2, 3, 7, 8] returned NaN or infinite weights, which are never "
            "aggregated") in result.stderr
    assert "failed 3 times" not in result.stderr and "ray::" not in result.stderr


def test_host_sums_are_refused_with_an_error_feedback_compressor():
    from fedactors.config import RunConfig, refuse_idle_settings
    from fedactors.runtime.coordinator import uses_host_sums
    from fedactors.errors import ConfigError

    assert not uses_host_sums(RunConfig(compress="topk:0.1")) and uses_host_sums(RunConfig(compress="q4"))
    with pytest.raises(ConfigError, match="--host-sums does not go with --compress sign"):
        refuse_idle_settings({"host_sums"}, {**RunConfig().to_dict(), "compress": "sign"})


def _digits(**kw):
    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
    from fedactors.task import load_arrays, load_task

    kw.setdefault("compress", "q4:rotate")
    kw.setdefault("lr", 0.1)
    cfg = RunConfig(task="digits-mlp", clients=10, frac=0.5, epochs=1, batch_size=20, partition="iid", seed=0, **kw)
    data = load_arrays(load_task(cfg.task), None, None)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed)
    hosts = [ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i) for i in range(2)]
    return cfg, lambda **more: Coordinator(cfg, LocalPool(hosts), num_test=len(data.y_test), **more)


def test_a_compressed_run_continued_from_a_round_gives_the_uninterrupted_bytes_and_counts_encoded_bytes():
    from fedactors.compress import Compressor

    _, make = _digits(rounds=4)
    straight = list(make().run())
    middle = list(_digits(rounds=2)[1]().run())[-1]["weights"]  # a run stopped after round 2 ...
    rest = list(make(start_round=2, weights=middle).run())  # ... and continued in new hosts, as a resume is
    assert np.array_equal(rest[-1]["weights"], straight[-1]["weights"])
    up = Compressor.parse("q4:rotate").encoded_bytes(len(middle))
    assert all(e["bytes_up"] == e["num_updates"] * up for e in straight if e["type"] == "round")


def test_residuals_go_into_the_checkpoint_and_a_continued_run_gives_the_uninterrupted_bytes(redis_server):
    """Each client's residual is its state in the store (fedactors.runtime.states), written with the checkpoint; a run
    resumed from it, or from a checkpoint written before issue 36 (residual<k> among the checkpoint's buffers), is
    the uninterrupted one."""
    from fedactors.runtime.states import RESIDUAL
    from fedactors.store.checkpoint import RedisStore

    _, make = _digits(rounds=4, compress="topk:0.05")
    straight = list(make().run())
    with RedisStore(redis_server.url, retry_seconds=5) as store:
        half = _digits(rounds=2, compress="topk:0.05")[1](store=store, run_id="ef")
        events = list(half.run())
        ckpt = store.latest("ef")[0]
        trained = {c for e in events if e["type"] == "round" for c in e["clients"]}
        kept = half.states.everything()
        assert sorted(kept) == sorted(trained) and all(list(s) == [RESIDUAL] for s in kept.values())
        assert not ckpt.state  # nothing of it in the checkpoint's own buffers
        rest = list(make(start_round=2, weights=ckpt.weights.copy(), store=store, run_id="ef",
                         clients=ckpt.extra["clients"]).run())
        assert np.array_equal(rest[-1]["weights"], straight[-1]["weights"])
    old = {f"residual{c}": s[RESIDUAL] for c, s in kept.items()}  # as a checkpoint before issue 36 held them
    rest = list(make(start_round=2, weights=ckpt.weights.copy(), strategy_state=(old, {})).run())
    assert np.array_equal(rest[-1]["weights"], straight[-1]["weights"])
    forgotten = list(make(start_round=2, weights=ckpt.weights.copy()).run())  # without the residuals: other bytes
    assert not np.array_equal(forgotten[-1]["weights"], straight[-1]["weights"])


@pytest.mark.slow
def test_error_feedback_survives_sigkill_and_resume_to_the_same_bytes(tmp_path):
    from test_resume import start_and_kill_mid_round

    args = ["--task", "digits-mlp", "--clients", "20", "--frac", "0.5", "--partition", "dirichlet", "--epochs", "1",
            "--eval-every", "100", "--hosts", "2", "--compress", "topk:0.05"]
    reference = tmp_path / "reference"
    assert fedactors("run", *args, "--rounds", "80", "--out", str(reference)).returncode == 0
    out = tmp_path / "run"
    start_and_kill_mid_round(out, "--run-id", "ef", args=args, rounds=80, after_rounds=15)
    result = fedactors("run", "--resume", "ef", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "weights.npy").read_bytes() == (reference / "weights.npy").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["q2:rotate", "topk:0.05"])
def test_the_same_compressed_run_on_one_and_three_hosts_gives_the_same_bytes(tmp_path, spec):
    args = ["--task", "digits-mlp", "--clients", "12", "--frac", "0.5", "--partition", "dirichlet", "--epochs", "1",
            "--rounds", "3", "--eval-every", "3", "--compress", spec]
    for hosts in ("1", "3"):  # three hosts of half a CPU each: one torch thread, as the one host has
        result = fedactors("run", *args, "--hosts", hosts, "--cpus-per-host", "0.5", "--out", str(tmp_path / hosts))
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "1" / "weights.npy").read_bytes() == (tmp_path / "3" / "weights.npy").read_bytes()
    run = json.loads((tmp_path / "3" / "run.json").read_text())
    assert run["config"]["compress"] == spec and run["bytes"]["up"] < run["bytes"]["down"] / 8
