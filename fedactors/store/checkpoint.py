"""Round checkpoints: a pickle-free binary format and a Redis store with retries.

Blob layout (all integers little-endian):

    b"FEDACKPT" | u32 format version | u32 header length | u32 CRC32 of header | header | payload

The header is UTF-8 JSON (run_id, round, dtype "float32", shape, sha256 of the payload,
fingerprint, config, history, extra); the payload is the raw float32 weights. A strategy's
state buffers (server moments, control variates; the framework's own, such as error-feedback
residuals), each under the stage it belongs to (STAGES), are blobs of the same format, one per
buffer (its name in the header's extra), and the checkpoint's header lists each one's sha256: a
round verifies only if all of them do. Each client's own state (fedactors.runtime.states: SCAFFOLD's control
variate, an error-feedback residual, a user algorithm's buffers) is a blob of the same format per client and per
round it was written in; a checkpoint writes only the clients whose state changed since the one before, and its
header's extra["clients"] says, for every client with state, the round whose blob is its own. The version
sits in a fixed field before the header so that any future format, whatever its header,
is recognised and refused by name. No pickle anywhere: a store may be shared, and
unpickling what is in it runs code.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.exceptions import (AuthenticationError, AuthenticationWrongNumberOfArgsError,
                              AuthorizationError, ConnectionError, RedisError, TimeoutError,
                              WatchError)
from redis.retry import Retry

from fedactors.errors import CheckpointError, ConfigError, StoreUnavailable

FORMAT_VERSION = 1
MAGIC = b"FEDACKPT"
_PREFIX = struct.Struct("<8sIII")  # magic, version, header length, header CRC32
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_AUTH_ERRORS = (AuthenticationError, AuthenticationWrongNumberOfArgsError, AuthorizationError)
# A checkpoint's state buffers are named "<stage>/<name>": the algorithm's (a strategy's own, any names it likes),
# error feedback's residuals ("residual<client>") and the asynchronous loop's older weights ("version<v>"), so that
# no stage can take another's name. extra["state_layout"] says so; a checkpoint written before it named the
# framework's "residual<k>" and "version<v>" beside the strategy's (the coordinator tells them apart by name).
STATE_LAYOUT = "stages"
STAGES = ("algorithm", "feedback", "async")


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to resume a run after `round`: randomness derives from (seed, round, client)."""

    run_id: str
    round: int
    weights: np.ndarray  # (n,) float32; read-only when it comes from decode()
    fingerprint: str
    config: dict
    history: list[dict]
    extra: dict = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)  # named float32 buffers ("<stage>/<name>")

    def strategy_state(self) -> tuple[dict[str, np.ndarray], dict, dict[str, np.ndarray] | None]:
        """What a coordinator resumes from (its `strategy_state`): (the algorithm's buffers, its scalars, the
        framework's buffers by their names within their stage: "residual<k>", "version<v>"). The last is None for a
        checkpoint written before STATE_LAYOUT, whose buffers the coordinator tells apart by the old names."""
        scalars = self.extra.get("strategy", {})
        layout = self.extra.get("state_layout")
        if layout is None:
            return dict(self.state), scalars, None
        if layout != STATE_LAYOUT:
            raise CheckpointError(f"run {self.run_id} round {self.round}: its state is laid out as {layout!r}, which "
                                  f"this fedactors does not read ({STATE_LAYOUT!r})")
        algorithm: dict[str, np.ndarray] = {}
        framework: dict[str, np.ndarray] = {}
        for name, buffer in self.state.items():
            stage, _, inner = name.partition("/")
            if stage not in STAGES or not inner:
                raise CheckpointError(f"run {self.run_id} round {self.round}: state buffer {name!r} is of no stage "
                                      f"this fedactors knows ({', '.join(STAGES)})")
            (algorithm if stage == "algorithm" else framework)[inner] = buffer
        return algorithm, scalars, framework


def check_run_id(run_id: str) -> str:
    """Run ids become Redis key parts: letters, digits, '.', '_', '-', at most 128 characters."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ConfigError(f"run id {run_id!r} is not valid: use 1-128 letters, digits, '.', '_' or '-'")
    return run_id


def encode(ckpt: Checkpoint) -> bytes:
    """Serialise a checkpoint; raises ValueError for weights that are not 1-D float32."""
    w = ckpt.weights
    if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 1:
        raise ValueError("checkpoint weights must be a 1-D float32 numpy array")
    if isinstance(ckpt.round, bool) or not isinstance(ckpt.round, int) or ckpt.round < 0:
        raise ValueError(f"checkpoint round must be an int >= 0, not {ckpt.round!r}")
    check_run_id(ckpt.run_id)
    payload = np.ascontiguousarray(w, dtype="<f4").tobytes()
    header = json.dumps({
        "run_id": ckpt.run_id, "round": ckpt.round, "dtype": "float32", "shape": [w.size],
        "sha256": hashlib.sha256(payload).hexdigest(), "fingerprint": ckpt.fingerprint,
        "config": ckpt.config, "history": ckpt.history, "extra": ckpt.extra,
    }, sort_keys=True, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), zlib.crc32(header)) + header + payload


def decode(blob: bytes, source: str = "checkpoint") -> Checkpoint:
    """Parse and verify a blob; any defect raises CheckpointError naming `source`, nothing else."""
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{source} is corrupt: {why}")

    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CheckpointError(f"{source} is not a byte string")
    blob = bytes(blob)
    if len(blob) < _PREFIX.size or not blob.startswith(MAGIC):
        raise CheckpointError(f"{source} is not a fedactors checkpoint (bad magic)")
    _, version, header_len, header_crc = _PREFIX.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{source} has format version {version}; this fedactors reads "
                              f"version {FORMAT_VERSION}")
    start = _PREFIX.size
    header_bytes = blob[start:start + header_len]
    if len(header_bytes) != header_len:
        raise bad("truncated header")
    if zlib.crc32(header_bytes) != header_crc:
        raise bad("header checksum mismatch")
    try:
        h = json.loads(header_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise bad(f"header is not valid JSON ({type(e).__name__})") from None
    if not isinstance(h, dict):
        raise bad("header is not a JSON object")
    expected = {"run_id": str, "round": int, "dtype": str, "shape": list, "sha256": str,
                "fingerprint": str, "config": dict, "history": list, "extra": dict}
    for name, kind in expected.items():
        if not isinstance(h.get(name), kind) or isinstance(h.get(name), bool):
            raise bad(f"header field {name!r} is missing or not a {kind.__name__}")
    if h["dtype"] != "float32":
        raise bad(f"dtype is {h['dtype']!r}, expected 'float32'")
    shape = h["shape"]
    if len(shape) != 1 or not isinstance(shape[0], int) or isinstance(shape[0], bool) or shape[0] < 0:
        raise bad(f"shape {shape!r} is not one non-negative length")
    if not all(isinstance(x, dict) for x in h["history"]):
        raise bad("history is not a list of JSON objects")
    if h["round"] < 0 or not _RUN_ID.fullmatch(h["run_id"]):
        raise bad("run id or round out of range")
    payload = memoryview(blob)[start + header_len:]
    if len(payload) != 4 * shape[0]:
        raise bad(f"payload is {len(payload)} bytes, header says {4 * shape[0]}")
    if hashlib.sha256(payload).hexdigest() != h["sha256"]:
        raise bad("payload checksum mismatch")
    weights = np.frombuffer(blob, dtype="<f4", offset=start + header_len, count=shape[0])
    return Checkpoint(run_id=h["run_id"], round=h["round"], weights=weights.astype(np.float32, copy=False),
                      fingerprint=h["fingerprint"], config=h["config"], history=h["history"],
                      extra=h["extra"])


def mask_url(url: str) -> str:
    """The URL with any password replaced by '***' (in the authority and in ?password=)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{hostport}"
        query = urlencode([(k, "***" if k == "password" else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


@dataclass(frozen=True)
class CorruptRound:
    """A stored round that latest() skipped, and why."""

    round: int
    reason: str


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    latest_round: int | None
    rounds: tuple[int, ...]  # the rounds kept, oldest first
    status: str  # "running" or "finished"
    created: float  # unix seconds
    updated: float
    fingerprint: str
    config: dict


class RedisStore:
    """Checkpoints of many runs in one Redis database, under `prefix`.

    Keys: {prefix}runs (set of run ids); {prefix}run:{id}:meta (hash: fingerprint, config,
    created, updated, latest_round, status); {prefix}run:{id}:rounds (sorted set, score =
    round); {prefix}run:{id}:ckpt:{round} (the blob); {prefix}run:{id}:state:{round} (hash:
    state buffer name -> its blob; a value each, as a Redis value holds at most 512 MB);
    {prefix}run:{id}:clients (hash: "{client}@{round}" -> that client's state as written after
    that round). Every call goes through one retry helper.
    """

    def __init__(self, url: str, *, retry_seconds: float = 30.0, prefix: str = "fedactors:",
                 socket_timeout_seconds: float = 30.0):
        self.url = mask_url(url)  # never keep the password where messages can reach it
        self.retry_seconds = retry_seconds
        self.prefix = prefix
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"Redis URL {self.url!r} must start with redis://, rediss:// or unix://")
        try:  # our retry helper owns retries: switch off redis-py's own
            self._redis = redis.Redis.from_url(
                url, socket_timeout=socket_timeout_seconds, socket_connect_timeout=5.0,
                retry=Retry(NoBackoff(), 0))
        except ValueError as e:
            raise ConfigError(f"Redis URL {self.url!r} is not valid: {e}") from None
        kw = self._redis.connection_pool.connection_kwargs
        self._has_password = bool(kw.get("password"))
        self.where = (f"unix socket {kw['path']}" if "path" in kw
                      else f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}")
        self._known_round: dict[str, int] = {}  # last round known safely stored, per run

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _auth_error(self) -> ConfigError:
        if self._has_password:
            return ConfigError(f"Redis at {self.where} refused the password")
        return ConfigError(f"Redis at {self.where} requires a password; give it in the URL")

    def check(self) -> None:
        """Ping once, at start: unreachable or refused is a bad-input error (exit 2), not retried."""
        try:
            self._redis.ping()
        except _AUTH_ERRORS:
            raise self._auth_error() from None
        except (ConnectionError, TimeoutError) as e:
            raise ConfigError(f"cannot reach Redis at {self.url}: {e}") from None
        except RedisError as e:
            raise ConfigError(f"Redis at {self.where} answered PING with an error: {e}") from None

    def _retrying(self, what: str, fn, run_id: str | None = None):
        """Call fn(); on connection errors retry with backoff (0.1 s doubling, capped at 2 s)
        for retry_seconds in all, then raise StoreUnavailable. Auth errors are not retried."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.1
        while True:
            try:
                return fn()
            except _AUTH_ERRORS:
                raise self._auth_error() from None
            except (ConnectionError, TimeoutError, WatchError) as e:
                # WatchError: another writer touched the run between our read and EXEC; redo.
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailable(
                        f"Redis at {self.url} unreachable for {self.retry_seconds:g} s "
                        f"while {what} ({type(e).__name__}: {e}){self._safe_note(run_id)}") from None
                time.sleep(min(delay, left))
                delay = min(2 * delay, 2.0)
            except RedisError as e:
                raise StoreUnavailable(f"Redis at {self.where} refused {what}: {e}"
                                       f"{self._safe_note(run_id)}") from None

    def _safe_note(self, run_id: str | None) -> str:
        if run_id is None:
            return ""
        if run_id in self._known_round:
            return f"; round {self._known_round[run_id]} of run {run_id} is the last checkpoint safely stored"
        return f"; no checkpoint of run {run_id} is known to be safely stored"

    def _state_prefix(self, run_id: str) -> str:
        return f"{self.prefix}run:{check_run_id(run_id)}:state:"

    def _clients_key(self, run_id: str) -> str:
        return f"{self.prefix}run:{check_run_id(run_id)}:clients"

    def _manifest_of(self, p, blob_key: str) -> dict[int, int]:
        """The client manifest of the checkpoint at `blob_key` (client -> round of its state blob), read from the
        header alone ({} if the checkpoint is gone or unreadable: then there is nothing of it to collect)."""
        prefix = p.getrange(blob_key, 0, _PREFIX.size - 1)
        if len(prefix) != _PREFIX.size or not prefix.startswith(MAGIC):
            return {}
        _, _, header_len, _ = _PREFIX.unpack(prefix)
        try:
            header = json.loads(p.getrange(blob_key, _PREFIX.size, _PREFIX.size + header_len - 1))
            return manifest_from(header["extra"])
        except (ValueError, KeyError, TypeError):
            return {}

    def client_states(self, run_id: str, wanted: dict[int, int]) -> dict[int, dict[str, np.ndarray]]:
        """The state blobs `wanted` (client -> round written, as a checkpoint's manifest says), decoded and verified;
        CheckpointError naming the client if one is missing or not the one written."""
        if not wanted:
            return {}
        clients = sorted(wanted)
        fields = [f"{c}@{wanted[c]}" for c in clients]
        key = self._clients_key(run_id)
        blobs = self._retrying(f"reading {len(fields)} clients' state of run {run_id}",
                               lambda: self._redis.hmget(key, fields), run_id)
        return {c: decode_client_state(blob, run_id, c, wanted[c]) for c, blob in zip(clients, blobs)}

    def _keys(self, run_id: str) -> tuple[str, str, str]:
        base = f"{self.prefix}run:{check_run_id(run_id)}:"
        return base + "ckpt:", base + "rounds", base + "meta"

    def save(self, ckpt: Checkpoint, keep: int,
             clients: dict[int, dict[str, np.ndarray]] | None = None) -> str | None:
        """Store `ckpt` in one MULTI/EXEC with its metadata, keeping the newest `keep` rounds.

        `clients`: the state of the clients whose state changed since the last checkpoint, written in the same
        transaction as their blobs of this round; ckpt.extra["clients"] is the manifest naming every client's.
        A client's older blob goes once no kept checkpoint names it.

        Rounds newer than ckpt.round are dropped too: they belong to a future this run
        abandoned. Refuses (CheckpointError) a run id stored with another fingerprint. Re-running
        the transaction after a lost EXEC reply writes the same values, so retrying is safe.

        Returns a warning, or None. A run this store saved before whose metadata is gone was
        lost by the server (a Redis without persistence that restarted comes back empty): the
        round is written all the same, since a checkpoint holds the whole state, so the store
        is whole again from this round on, and the warning says which rounds were lost.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"keep must be an int >= 1, not {keep!r}")
        state_blobs = {name: encode(Checkpoint(ckpt.run_id, ckpt.round, buf, ckpt.fingerprint, {}, [], {"state": name}))
                       for name, buf in ckpt.state.items()}
        if state_blobs:
            digests = {name: json.loads(_header(b))["sha256"] for name, b in state_blobs.items()}
            ckpt = Checkpoint(ckpt.run_id, ckpt.round, ckpt.weights, ckpt.fingerprint, ckpt.config, ckpt.history,
                              {**ckpt.extra, "state_sha256": digests})
        blob = encode(ckpt)
        blob_prefix, rounds_key, meta_key = self._keys(ckpt.run_id)
        state_prefix = self._state_prefix(ckpt.run_id)
        clients_key = self._clients_key(ckpt.run_id)
        client_blobs = {f"{c}@{ckpt.round}": encode_client_state(ckpt, c, arrays)
                        for c, arrays in sorted((clients or {}).items())}
        manifest = manifest_from(ckpt.extra)
        fingerprint = ckpt.fingerprint
        known = self._known_round.get(ckpt.run_id)

        def write() -> bool:
            with self._redis.pipeline(transaction=True) as p:
                p.watch(rounds_key, meta_key)
                stored = p.hget(meta_key, "fingerprint")
                if stored is not None and stored.decode() != fingerprint:
                    raise CheckpointError(
                        f"run {ckpt.run_id} in the store has configuration fingerprint "
                        f"{stored.decode()}; refusing to write a checkpoint with {fingerprint}")
                existing = sorted(int(r) for r in p.zrange(rounds_key, 0, -1))
                older = [r for r in existing if r < ckpt.round]
                prune = [r for r in existing if r > ckpt.round] + older[:max(0, len(older) - (keep - 1))]
                # Client state blobs no kept checkpoint names any more: those named by a pruned one, or by the one
                # this overwrites (a resumed round), and by none of those kept nor this one. Read from their headers.
                # (A run without client state has none to collect: a client's state is never dropped, so no
                # manifest is empty once one was not.)
                garbage: set[str] = set()
                if manifest:
                    named = {f"{c}@{r}" for c, r in manifest.items()}
                    for r in older:
                        if r not in prune:
                            named.update(f"{c}@{w}" for c, w in self._manifest_of(p, blob_prefix + str(r)).items())
                    for gone in prune + ([ckpt.round] if ckpt.round in existing else []):
                        garbage.update(f"{c}@{w}" for c, w in self._manifest_of(p, blob_prefix + str(gone)).items())
                    garbage -= named
                garbage = sorted(garbage - set(client_blobs))
                now = repr(time.time())
                p.multi()
                p.set(blob_prefix + str(ckpt.round), blob)
                p.delete(state_prefix + str(ckpt.round))
                for chunk in _chunks(state_blobs):
                    p.hset(state_prefix + str(ckpt.round), mapping=chunk)
                for chunk in _chunks(client_blobs):
                    p.hset(clients_key, mapping=chunk)
                if garbage:
                    p.hdel(clients_key, *garbage)
                p.zadd(rounds_key, {str(ckpt.round): ckpt.round})
                if prune:
                    p.delete(*[blob_prefix + str(r) for r in prune], *[state_prefix + str(r) for r in prune])
                    p.zrem(rounds_key, *[str(r) for r in prune])
                p.hsetnx(meta_key, "created", now)
                p.hset(meta_key, mapping={
                    "fingerprint": fingerprint, "config": json.dumps(ckpt.config, sort_keys=True),
                    "latest_round": ckpt.round, "status": "running", "updated": now})
                p.sadd(self.prefix + "runs", ckpt.run_id)
                p.execute()
                return stored is None

        lost = self._retrying(f"saving round {ckpt.round} of run {ckpt.run_id}", write, ckpt.run_id)
        self._known_round[ckpt.run_id] = ckpt.round
        if lost and known is not None:
            return (f"Redis at {self.url} lost every checkpoint of run {ckpt.run_id} (up to round {known}): it "
                    f"restarted without persistence, or something deleted the keys; round {ckpt.round} is stored "
                    "again, and the run goes on from it. A Redis without appendonly or save points loses "
                    "checkpoints whenever it restarts")
        return None

    def memory(self) -> tuple[int, int, str] | None:
        """(the bytes it may hold: its maxmemory, else half its machine's memory; the bytes it holds; its name), or
        None when the server does not say (INFO disabled)."""
        try:
            info = self._redis.info("memory")
        except (RedisError, OSError):
            return None
        used, cap, machine = (int(info.get(k, 0) or 0) for k in ("used_memory", "maxmemory", "total_system_memory"))
        if cap:
            return cap, used, f"Redis at {self.where} (maxmemory)"
        if machine:
            return machine // 2, used, f"Redis at {self.where} (half its machine's memory)"
        return None

    def persistence_warning(self) -> str | None:
        """Why this server may lose checkpoints on a restart (no AOF, no RDB save points), or None.

        None too when the server does not let us ask (CONFIG disabled, as on managed services).
        """
        try:
            raw = self._redis.config_get("appendonly") | self._redis.config_get("save")
        except (RedisError, OSError):
            return None
        config = {_text(k): _text(v) for k, v in raw.items()}
        if config.get("appendonly") == "no" and not (config.get("save") or "").strip():
            return (f"Redis at {self.url} keeps nothing on disk (appendonly no, no save points): if it restarts, "
                    "every checkpoint is lost; the run then says so and stores its next round again")
        return None

    def _fetch(self, run_id: str, round_: int) -> Checkpoint:
        """Read and verify one stored round; CheckpointError if missing, corrupt or misplaced."""
        blob_prefix, _, _ = self._keys(run_id)
        source = f"checkpoint of run {run_id} round {round_}"
        blob = self._retrying(f"reading round {round_} of run {run_id}",
                              lambda: self._redis.get(blob_prefix + str(round_)), run_id)
        if blob is None:
            raise CheckpointError(f"{source} is missing from the store")
        ckpt = decode(blob, source)
        if (ckpt.run_id, ckpt.round) != (run_id, round_):
            raise CheckpointError(f"{source} is foreign: it holds run {ckpt.run_id} round {ckpt.round}")
        manifest = manifest_from(ckpt.extra)
        if manifest:  # every client's state blob it names is there (each is verified when it is read)
            present = self._retrying(f"listing the clients' state of run {run_id}",
                                     lambda: self._redis.hkeys(self._clients_key(run_id)), run_id)
            missing = {f"{c}@{r}" for c, r in manifest.items()} - {f.decode() for f in present}
            if missing:
                raise CheckpointError(f"{source} is missing the state of {len(missing)} client(s): "
                                      f"{', '.join(sorted(missing)[:3])}")
        digests = ckpt.extra.get("state_sha256") or {}
        if not digests:
            return ckpt
        key = self._state_prefix(run_id) + str(round_)
        stored = self._retrying(f"reading the state of round {round_} of run {run_id}",
                                lambda: self._redis.hgetall(key), run_id)
        state = {}
        for name, digest in digests.items():
            part = stored.get(name.encode())
            if part is None:
                raise CheckpointError(f"{source} is missing its state buffer {name!r}")
            buf = decode(part, f"{source} state buffer {name!r}")
            if (buf.run_id, buf.round, buf.extra.get("state")) != (run_id, round_, name) or \
                    json.loads(_header(part))["sha256"] != digest:
                raise CheckpointError(f"{source} has a state buffer {name!r} that is not the one it lists")
            state[name] = buf.weights
        return Checkpoint(ckpt.run_id, ckpt.round, ckpt.weights, ckpt.fingerprint, ckpt.config, ckpt.history,
                          ckpt.extra, state)

    def _rounds(self, run_id: str) -> list[int]:
        _, rounds_key, _ = self._keys(run_id)
        members = self._retrying(f"listing rounds of run {run_id}",
                                 lambda: self._redis.zrange(rounds_key, 0, -1), run_id)
        return sorted(int(m) for m in members)

    def latest(self, run_id: str) -> tuple[Checkpoint | None, list[CorruptRound]]:
        """The newest round that decodes and verifies, and the newer rounds skipped as corrupt.

        (None, []) means the run has no checkpoint; (None, [...]) that every one is corrupt.
        """
        skipped: list[CorruptRound] = []
        for r in reversed(self._rounds(run_id)):
            try:
                ckpt = self._fetch(run_id, r)
            except CheckpointError as e:
                skipped.append(CorruptRound(r, str(e)))
                continue
            self._known_round.setdefault(run_id, r)
            return ckpt, skipped
        return None, skipped

    def load(self, run_id: str, round: int) -> Checkpoint:
        """One given round; CheckpointError if it is not kept or does not verify."""
        return self._fetch(run_id, round)

    def info(self, run_id: str) -> RunInfo | None:
        """What the store knows of a run, or None if it has no metadata for it."""
        _, _, meta_key = self._keys(run_id)
        meta = self._retrying(f"reading metadata of run {run_id}",
                              lambda: self._redis.hgetall(meta_key), run_id)
        if not meta:
            return None
        rounds = tuple(self._rounds(run_id))
        m = {k.decode(): v.decode() for k, v in meta.items()}
        try:
            return RunInfo(run_id=run_id, latest_round=rounds[-1] if rounds else None,
                           rounds=rounds, status=m["status"], created=float(m["created"]),
                           updated=float(m["updated"]), fingerprint=m["fingerprint"],
                           config=json.loads(m["config"]))
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"metadata of run {run_id} is corrupt: {type(e).__name__} {e}") from None

    def runs(self) -> list[RunInfo]:
        """Every run with metadata in the store, oldest first."""
        ids = self._retrying("listing runs", lambda: self._redis.smembers(self.prefix + "runs"))
        infos = [self.info(i.decode()) for i in ids if _RUN_ID.fullmatch(i.decode())]
        return sorted((i for i in infos if i is not None), key=lambda i: (i.created, i.run_id))

    def mark_finished(self, run_id: str) -> None:
        _, _, meta_key = self._keys(run_id)

        def mark() -> bool:
            with self._redis.pipeline(transaction=True) as p:
                p.watch(meta_key)
                if not p.exists(meta_key):
                    return False
                p.multi()
                p.hset(meta_key, "status", "finished")
                p.execute()
                return True

        if not self._retrying(f"marking run {run_id} finished", mark, run_id):
            raise CheckpointError(f"run {run_id} is not in the store at {self.where}")

    def delete(self, run_id: str) -> bool:
        """Remove every key of a run in one transaction; False if there was nothing."""
        base = f"{self.prefix}run:{check_run_id(run_id)}:"

        def drop() -> bool:
            keys = list(self._redis.scan_iter(match=base + "*", count=1000))
            with self._redis.pipeline(transaction=True) as p:
                if keys:
                    p.delete(*keys)
                p.srem(self.prefix + "runs", run_id)
                removed = p.execute()
            self._known_round.pop(run_id, None)
            return bool(keys) or bool(removed[-1])

        return self._retrying(f"deleting run {run_id}", drop)


def manifest_from(extra: dict) -> dict[int, int]:
    """A checkpoint's client manifest, client -> the round whose state blob is that client's ({} without one).

    Stored as {round: [clients]} (extra["clients"]): a client's number once, beside the rounds, which are few."""
    manifest: dict[int, int] = {}
    for written, clients in (extra.get("clients") or {}).items():
        for c in clients:
            manifest[int(c)] = int(written)
    return manifest


def manifest_extra(manifest: dict[int, int]) -> dict[str, list[int]]:
    """The manifest as a checkpoint's header holds it (manifest_from reads it back)."""
    by_round: dict[str, list[int]] = {}
    for c in sorted(manifest):
        by_round.setdefault(str(manifest[c]), []).append(c)
    return by_round


def encode_client_state(ckpt: Checkpoint, client: int, arrays: dict[str, np.ndarray]) -> bytes:
    """One client's state after `ckpt.round`: its buffers end to end, their names and lengths in the header."""
    names = sorted(arrays)
    payload = (np.concatenate([np.ravel(arrays[n]) for n in names]).astype(np.float32, copy=False) if names
               else np.zeros(0, np.float32))
    return encode(Checkpoint(ckpt.run_id, ckpt.round, payload, ckpt.fingerprint, {}, [],
                             {"client": client, "names": names, "sizes": [int(arrays[n].size) for n in names]}))


def decode_client_state(blob: bytes | None, run_id: str, client: int, round_: int) -> dict[str, np.ndarray]:
    """What encode_client_state wrote, verified to be client `client`'s of round `round_` of `run_id`."""
    source = f"the state of client {client} written after round {round_} of run {run_id}"
    if blob is None:
        raise CheckpointError(f"{source} is missing from the store")
    ckpt = decode(blob, source)
    names, sizes = ckpt.extra.get("names"), ckpt.extra.get("sizes")
    if ((ckpt.run_id, ckpt.round, ckpt.extra.get("client")) != (run_id, round_, client)
            or not isinstance(names, list) or not isinstance(sizes, list) or len(names) != len(sizes)
            or sum(sizes) != ckpt.weights.size):
        raise CheckpointError(f"{source} is not the one written")
    ends = np.cumsum([0, *sizes])
    return {n: ckpt.weights[a:b] for n, a, b in zip(names, ends[:-1], ends[1:])}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _header(blob: bytes) -> bytes:
    """A blob's JSON header (the blob is one encode() made, so its layout is known)."""
    _, _, header_len, _ = _PREFIX.unpack_from(blob)
    return blob[_PREFIX.size:_PREFIX.size + header_len]


def _chunks(blobs: dict[str, bytes], limit: int = 64 << 20) -> list[dict[str, bytes]]:
    """The blobs in HSET-sized groups of at most `limit` bytes (one each if larger), in order."""
    chunks: list[dict[str, bytes]] = []
    size = limit
    for name, blob in blobs.items():
        if size + len(blob) > limit:
            chunks.append({})
            size = 0
        chunks[-1][name] = blob
        size += len(blob)
    return chunks
