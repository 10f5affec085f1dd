"""What one checkpoint of the paper's CNN (1,663,370 float32, 6.65 MB) costs to save and read.

Saves go (a) to the embedded server (AOF, appendfsync always: what runs use by default), the
same with appendfsync everysec for comparison, and (b) to a plain server without persistence
on loopback TCP. Also encode/decode and latest() read times. The reference, measured in the
same run and directory: np.save of the same array to a file, without and with fsync.
Prints a table, then one JSON object as the last stdout line.

    python bench/checkpoint.py [--repeats 20] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

from fedactors.store.checkpoint import Checkpoint, RedisStore, decode, encode
from fedactors.store.embedded_redis import EmbeddedRedis, find_redis_server

N_PARAMS = 1_663_370


def median_ms(fn, repeats: int) -> float:
    fn()  # warm up (first connection, page faults)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def plain_server(data_dir: Path) -> tuple[subprocess.Popen, int]:
    """A redis-server on a loopback port with no persistence at all."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(data_dir), "--appendonly", "no", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(port=port)
    try:
        for _ in range(1000):
            try:
                client.ping()
                return proc, port
            except redis.ConnectionError:
                time.sleep(0.01)
    finally:
        client.close()
    proc.kill()
    proc.wait()
    raise RuntimeError("plain redis-server did not start")


def store_figures(url: str, ckpt: Checkpoint, repeats: int) -> dict[str, float]:
    with RedisStore(url) as store:
        rounds = iter(range(10**6))
        save = median_ms(lambda: store.save(Checkpoint(**{**ckpt.__dict__, "round": next(rounds)}),
                                            keep=2), repeats)
        read = median_ms(lambda: store.latest(ckpt.run_id), repeats)
        store.delete(ckpt.run_id)
    return {"save_ms": save, "latest_ms": read}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dir", type=Path, default=None, help="where the servers and files live")
    args = parser.parse_args()

    weights = np.random.default_rng(0).standard_normal(N_PARAMS).astype(np.float32)
    history = [{"round": r, "accuracy": 0.9, "loss": 0.3, "round_seconds": 3.1} for r in range(200)]
    ckpt = Checkpoint("bench", 0, weights, "0" * 64, {"clients": 100, "frac": 0.1}, history)
    blob = encode(ckpt)
    fig: dict[str, float] = {"n_params": N_PARAMS, "blob_bytes": len(blob), "repeats": args.repeats}

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        path = tmp / "weights.npy"

        def np_save_fsync() -> None:
            with open(path, "wb") as f:
                np.save(f, weights)
                f.flush()
                os.fsync(f.fileno())

        fig["np_save_ms"] = median_ms(lambda: np.save(path, weights), args.repeats)
        fig["np_save_fsync_ms"] = median_ms(np_save_fsync, args.repeats)
        fig["encode_ms"] = median_ms(lambda: encode(ckpt), args.repeats)
        fig["decode_ms"] = median_ms(lambda: decode(blob), args.repeats)
        for fsync in ("always", "everysec"):
            with EmbeddedRedis(tmp / f"embedded-{fsync}", appendfsync=fsync) as server:
                for k, v in store_figures(server.url, ckpt, args.repeats).items():
                    fig[f"embedded_{fsync}_{k}"] = v
        proc, port = plain_server(tmp)
        try:
            for k, v in store_figures(f"redis://127.0.0.1:{port}", ckpt, args.repeats).items():
                fig[f"plain_{k}"] = v
        finally:
            proc.kill()
            proc.wait()

    ref = fig["np_save_ms"]
    rows = [("np.save to file (reference)", "np_save_ms"), ("np.save + fsync", "np_save_fsync_ms"),
            ("encode", "encode_ms"), ("decode (verifies sha256)", "decode_ms"),
            ("save, embedded, appendfsync always", "embedded_always_save_ms"),
            ("save, embedded, appendfsync everysec", "embedded_everysec_save_ms"),
            ("save, plain server, no persistence", "plain_save_ms"),
            ("latest(), embedded always", "embedded_always_latest_ms"),
            ("latest(), plain server", "plain_latest_ms")]
    print(f"checkpoint of {N_PARAMS:,} float32 ({len(blob) / 1e6:.2f} MB), median of {args.repeats}")
    print(f"{'':40s} {'ms':>8s} {'x np.save':>10s}")
    for label, key in rows:
        fig[key.replace("_ms", "_ratio")] = fig[key] / ref
        print(f"{label:40s} {fig[key]:8.2f} {fig[key] / ref:10.2f}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in fig.items()}))


if __name__ == "__main__":
    main()
