"""Uneven clients in virtual time (issue 26): each client's speed, network and availability.

A client's virtual duration in a round is what a device would take: receive the model, train
on its examples, send its update back,

    duration = bytes_down / down + speed x (epochs x examples) + bytes_up / up

with `speed` in seconds per example processed and `down`, `up` in bytes per second. The round
loop (fedactors.runtime.coordinator) keeps a virtual clock with it: a synchronous round lasts until the
last client it keeps reports (or its deadline); asynchronous FedBuff applies updates in the
order of their virtual arrival. Real training runs as fast as the hosts allow; only the order
and the clock are virtual, so a run's bytes depend on the seed and the profiles alone.

Profiles come from `--client-speed lognormal:SIGMA` (each client's speed is the reference speed
times exp(SIGMA x z), z standard normal, drawn from the run's seed and indexed by client id) and
from a trace file (`--client-trace FILE.csv`) of two kinds of rows, each kind under its header:

    client,speed,up_mbps,down_mbps        the rows below: a client's speed (s/example) and bandwidth (megabits/s)
    client,online_from,online_until       the rows below: a window in which the client is online (virtual seconds)

A file may hold both sections, in either order, each header starting its own; lines starting with #
are skipped. The header says which kind a row is, so a speed row missing a field is refused rather
than read as a window; a row before any header, or of the wrong width for its section, is refused
naming the file and line. A client with no speed row has the reference profile (or its lognormal
draw); a client with no window rows is always online, one with windows is online only inside them.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedactors.errors import ConfigError
from fedactors.seeding import Purpose, generator

# The reference client: 10 ms per example processed (a phone training a small CNN), 10 Mbit/s up, 50 down.
REFERENCE_SPEED = 0.01
REFERENCE_UP_MBPS = 10.0
REFERENCE_DOWN_MBPS = 50.0


def _bytes_per_second(mbps: float) -> float:
    return mbps * 1e6 / 8


def parse_speed(spec: str | None) -> float | None:
    """The SIGMA of --client-speed lognormal:SIGMA (None for None); ConfigError for anything else."""
    if spec is None:
        return None
    kind, _, value = spec.partition(":")
    try:
        sigma = float(value)
    except ValueError:
        sigma = -1.0
    if kind != "lognormal" or not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"--client-speed must be lognormal:SIGMA with SIGMA >= 0, e.g. lognormal:1, got {spec!r}")
    return sigma


@dataclass
class Trace:
    """A trace file's rows: speed profiles by client and online windows."""

    profiles: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # client -> (speed, up, down Mbit/s)
    windows: list[tuple[int, float, float]] = field(default_factory=list)  # (client, from, until)
    digest: str = ""  # sha256 of the file: a run's identity, so a resume refuses a changed trace


SPEED_ROWS = ("client", "speed", "up_mbps", "down_mbps")
WINDOW_ROWS = ("client", "online_from", "online_until")
_HEADERS = {SPEED_ROWS: "speed", WINDOW_ROWS: "window"}
_KNOWN = f"{','.join(SPEED_ROWS)} or {','.join(WINDOW_ROWS)}"


def read_trace(path: str | Path, num_clients: int) -> Trace:
    """Read a --client-trace CSV; one ConfigError line naming the file and line for anything wrong in it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--client-trace {path}: {exc.strerror or exc}") from None
    trace = Trace(digest=hashlib.sha256(raw).hexdigest())
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"--client-trace {path}: not a text (CSV) file") from None
    kind = None  # the section a row is in: what the last header said
    for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
        row = [cell.strip() for cell in row]
        if not row or not row[0] or row[0].startswith("#"):
            continue
        where = f"--client-trace {path}, line {line_no}"
        try:
            client = int(row[0])
        except ValueError:
            if row[0][0].isdigit() or row[0][0] in "+-":
                raise ConfigError(f"{where}: client {row[0]!r} is not an integer id") from None
            kind = _HEADERS.get(tuple(cell.lower() for cell in row))
            if kind is None:
                raise ConfigError(f"{where}: {','.join(row)!r} is neither row of numbers nor a header ({_KNOWN})")
            continue
        if kind is None:
            raise ConfigError(f"{where}: a row before any header; put {','.join(SPEED_ROWS)} above speed rows and "
                              f"{','.join(WINDOW_ROWS)} above online windows (the header says which a row is)")
        wanted = SPEED_ROWS if kind == "speed" else WINDOW_ROWS
        if len(row) != len(wanted):
            raise ConfigError(f"{where}: a {kind} row is {','.join(wanted)} ({len(wanted)} columns, as its header "
                              f"says), got {len(row)}: {','.join(row)}")
        if not 0 <= client < num_clients:
            raise ConfigError(f"{where}: client {client} is not one of the run's {num_clients} (0..{num_clients - 1})")
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            raise ConfigError(f"{where}: expected numbers after the client id, got {row[1:]}") from None
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{where}: values must be finite, got {row[1:]}")
        if kind == "speed":
            speed, up, down = values
            if not (speed >= 0 and up > 0 and down > 0):
                raise ConfigError(f"{where}: speed must be >= 0 and up_mbps, down_mbps > 0, got {row[1:]}")
            if client in trace.profiles:
                raise ConfigError(f"{where}: a second speed row for client {client}")
            trace.profiles[client] = (speed, up, down)
        else:
            start, until = values
            if not 0 <= start < until:
                raise ConfigError(f"{where}: a window needs 0 <= online_from < online_until, got {row[1:]}")
            trace.windows.append((client, start, until))
    return trace


class Systems:
    """Every client's profile and availability, as arrays over client ids (a million clients are a few MB)."""

    def __init__(self, num_clients: int, seed: int, sigma: float | None = None, trace: Trace | None = None) -> None:
        self.num_clients = num_clients
        self.speed = np.full(num_clients, REFERENCE_SPEED)
        if sigma:
            self.speed *= np.exp(sigma * generator(Purpose.SPEED, seed).standard_normal(num_clients))
        self.up = np.full(num_clients, _bytes_per_second(REFERENCE_UP_MBPS))
        self.down = np.full(num_clients, _bytes_per_second(REFERENCE_DOWN_MBPS))
        trace = trace or Trace()
        for client, (speed, up, down) in trace.profiles.items():
            self.speed[client], self.up[client], self.down[client] = speed, _bytes_per_second(up), _bytes_per_second(down)
        # Windows sorted by client then start; a client without any is always online.
        windows = sorted(trace.windows)
        self.win_client = np.array([w[0] for w in windows], dtype=np.int64)
        self.win_from = np.array([w[1] for w in windows], dtype=np.float64)
        self.win_until = np.array([w[2] for w in windows], dtype=np.float64)
        self.has_windows = np.zeros(num_clients, dtype=bool)
        self.has_windows[self.win_client] = True

    @property
    def always_online(self) -> bool:
        return len(self.win_client) == 0

    def duration(self, client: int, examples: int, bytes_down: int, bytes_up: int) -> float:
        """Virtual seconds for `client` to receive `bytes_down`, process `examples`, and send `bytes_up`."""
        return float(bytes_down / self.down[client] + self.speed[client] * examples + bytes_up / self.up[client])

    def durations(self, work: np.ndarray, bytes_down: int, bytes_up: int) -> np.ndarray:
        """Every client's duration (as `duration`), `work` its examples processed: one array over client ids."""
        return bytes_down / self.down + self.speed * work + bytes_up / self.up

    def available(self, t: float) -> np.ndarray:
        """The clients online at virtual time t, sorted."""
        if self.always_online:
            return np.arange(self.num_clients)
        inside = (self.win_from <= t) & (t < self.win_until)
        online = ~self.has_windows
        online[self.win_client[inside]] = True
        return np.flatnonzero(online)

    def online_until(self, client: int, t: float) -> float:
        """When `client`, online at t, goes offline (inf: never)."""
        if not self.has_windows[client]:
            return math.inf
        mine = (self.win_client == client) & (self.win_from <= t) & (t < self.win_until)
        return float(self.win_until[mine].max()) if mine.any() else t

    def next_online(self, t: float) -> float | None:
        """The earliest window start after t (None: nobody comes online again)."""
        later = self.win_from[self.win_from > t]
        return float(later.min()) if len(later) else None


def sample_available(seed: int, round_idx: int, available: np.ndarray, num_sampled: int) -> np.ndarray:
    """`num_sampled` of the `available` client ids, uniform without replacement, sorted; with every client
    available it is fedactors.seeding.sample_clients' draw (the same generator and the same choice)."""
    rng = generator(Purpose.SAMPLE, seed, round_idx)
    return np.sort(available[rng.choice(len(available), size=num_sampled, replace=False)])


@dataclass
class RoundPlan:
    """A synchronous round on the virtual clock, decided before anyone trains (plan_round)."""

    sampled: list[int]  # ceil(m (1 + F)) of the clients online at its start
    kept: list[int]  # the first m of them to finish inside the deadline: the ones that train
    late: list[int]  # the others that would finish: past the deadline, or beyond the first m
    offline: list[int]  # whose online window closes before they would finish
    available: int  # clients online at its start
    seconds: float  # its virtual length: until the m-th kept arrives, else the deadline, else the last to stop


def plan_round(systems: Systems, now: float, *, seed: int, round_idx: int, m: int, over_select: float,
               deadline: float | None, work: np.ndarray, bytes_down: int, bytes_up: int) -> RoundPlan:
    """Who a synchronous round starting at virtual time `now` samples, keeps and drops (`work`: each client's examples
    processed in its local training). A round with nobody online waits for the next window; RuntimeError when
    nobody will ever come online again."""
    available = systems.available(now)
    if len(available) == 0:
        wake = systems.next_online(now)
        if wake is None:
            raise RuntimeError(f"no client is online at virtual second {now:g} or later (--client-trace's windows "
                               "have all closed)")
        return RoundPlan([], [], [], [], 0, wake - now)
    wanted = min(len(available), math.ceil(m * (1 + over_select) - 1e-9))
    sampled = sample_available(seed, round_idx, available, wanted).tolist()
    finishing, offline, offline_at = [], [], []
    for c in sampled:
        duration = systems.duration(c, work[c], bytes_down, bytes_up)
        until = systems.online_until(c, now)
        if now + duration > until:
            offline.append(c)
            offline_at.append(until - now)
        else:
            finishing.append((duration, c))
    finishing.sort()
    kept = [(d, c) for d, c in finishing if deadline is None or d <= deadline][:m]
    kept_ids = {c for _, c in kept}
    if len(kept) == m:
        seconds = kept[-1][0]
    elif deadline is not None:
        seconds = deadline
    else:
        seconds = max([d for d, _ in kept] + offline_at, default=0.0)
    return RoundPlan(sampled, sorted(kept_ids), sorted(c for _, c in finishing if c not in kept_ids), offline,
                     len(available), seconds)
