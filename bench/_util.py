"""Helpers shared by the benchmarks: a process-tree memory sampler and medians.

Needs only psutil and the standard library, so bench/peers/flower_round.py can import it from
Flower's own virtual environment too.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import psutil

MIB = 1024 * 1024


def median(values: list[float]) -> float | None:
    """The median, or None for no values (a one-round run has no steady rounds)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def warm_page_cache(python: str, modules: str) -> float:
    """Import `modules` once in a throw-away `python` process; returns the seconds it took.

    This machine's kernel reclaims page cache that has not been touched for a while (DAMON),
    even with 20 GB free, so the first start after a pause reads torch's and CUDA's libraries
    (about 1.5 GB) from disk again, adding 0 to 10 s at random to whichever system starts then.
    Each system is warmed the same way right before it is timed, so start-up is compared from
    the same, warm, state: what a user running it again sees.
    """
    import subprocess

    t0 = time.perf_counter()
    subprocess.run([python, "-c", f"import {modules}"], check=True, capture_output=True)
    return time.perf_counter() - t0


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


class TreeMemory:
    """Peak memory of a process and all its descendants, sampled in a thread.

    RSS (shared pages counted in every process that maps them) is summed over the tree every
    `interval` seconds. PSS (a page shared by n processes counts 1/n in each, so shared
    libraries and Ray's shared-memory object store are counted once) costs ~1 ms per process
    to read, because the kernel walks the page tables: it is summed when the tree's RSS has grown
    by `pss_growth` since the last PSS sweep, and otherwise every `pss_interval` seconds, so the
    sampler takes 1-2% of a core instead of ~10%. At the PSS peak the per-process figures are
    kept (`peak_breakdown`, MiB by process label), to show where the memory is. PSS comes from /proc/PID/smaps_rollup, else psutil's
    memory_full_info(); where neither is readable it is RSS. Ray's head-node processes (GCS,
    raylet, dashboard and runtime-env agents) and workers are the driver's descendants, so the
    tree is the whole local cluster. The sampler's own CPU time is kept, so its cost is on record
    (at the default half-second interval about 1% of a core: 2 s over a 100 s run).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.5, pss_interval: float = 5.0,
                 pss_growth: float = 0.03, enabled: bool = True) -> None:
        self.enabled = enabled  # off: no thread, no reads, every figure None (timed runs: the sampler costs CPU)
        self.root = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.pss_interval = pss_interval
        self.pss_growth = pss_growth
        self.peak_breakdown: dict[str, float] = {}
        self._rss_at_pss = 0
        self.peak_pss = 0
        self.peak_rss = 0
        self.peak_procs = 0
        self.samples = 0
        self.pss_samples = 0
        self.pss_source = "smaps_rollup" if os.path.exists(f"/proc/{self.root.pid}/smaps_rollup") else "memory_full_info"
        self.sampler_cpu_seconds = 0.0
        self._last_pss = -1e9
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-memory", daemon=True)

    def __enter__(self) -> TreeMemory:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def _pss(self, proc: psutil.Process) -> int:
        """This process's PSS; its RSS where PSS is not readable (another user's process)."""
        if self.pss_source == "smaps_rollup":
            try:
                with open(f"/proc/{proc.pid}/smaps_rollup", "rb") as f:
                    for line in f:
                        if line.startswith(b"Pss:"):
                            return int(line.split()[1]) * 1024
            except PermissionError:
                return proc.memory_info().rss
        try:
            return proc.memory_full_info().pss
        except (AttributeError, psutil.AccessDenied):
            return proc.memory_info().rss

    def sample(self) -> None:
        t0 = time.thread_time()
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss, alive = 0, []
        for proc in procs:
            try:
                rss += proc.memory_info().rss
                alive.append(proc)
            except psutil.Error:  # exited between listing and reading
                continue
        now = time.monotonic()
        if rss > self._rss_at_pss * (1 + self.pss_growth) or now - self._last_pss >= self.pss_interval:
            parts: list[tuple[str, int]] = []
            for proc in alive:
                try:
                    parts.append((_label(proc), self._pss(proc)))
                except (psutil.Error, OSError):
                    continue
            pss = sum(v for _, v in parts)
            if pss > self.peak_pss:
                self.peak_pss = pss
                self.peak_breakdown = {}
                for label, v in parts:
                    self.peak_breakdown[label] = self.peak_breakdown.get(label, 0.0) + v / MIB
            self.pss_samples += 1
            self._last_pss, self._rss_at_pss = now, rss
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_procs = max(self.peak_procs, len(alive))
        self.samples += 1
        self.sampler_cpu_seconds += time.thread_time() - t0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def figures(self) -> dict:
        if not self.enabled:
            return {key: None for key in FIGURES}
        return {
            "peak_pss_mib": self.peak_pss / MIB,
            "peak_rss_mib": self.peak_rss / MIB,
            "pss_source": self.pss_source,
            "peak_processes": self.peak_procs,
            "memory_samples": self.samples,
            "pss_samples": self.pss_samples,
            "sampler_cpu_seconds": self.sampler_cpu_seconds,
            "peak_pss_breakdown_mib": {k: round(v, 1) for k, v in sorted(self.peak_breakdown.items(), key=lambda kv: -kv[1])},
        }


FIGURES = ("peak_pss_mib", "peak_rss_mib", "pss_source", "peak_processes", "memory_samples", "pss_samples",
           "sampler_cpu_seconds", "peak_pss_breakdown_mib")


def _label(proc: psutil.Process) -> str:
    """A short, stable name: 'ray::ClientHost' for Ray workers, the script's name for Python helpers."""
    name = proc.name()
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        cmd = []
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split(".")[0].split(" ")[0]
    if name.startswith("python") and cmd:
        if "-c" in cmd:
            return "python -c"
        script = next((a for a in cmd[1:] if not a.startswith("-")), "")
        return f"python {os.path.basename(script)}" if script else "python"
    return name


def cpu_name(flags: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_tile")) -> str:
    """E.g. "Intel(R) Xeon(R) Processor (family 6 model 143, avx2, avx512f, amx_tile)", from /proc/cpuinfo: the model,
    family and model numbers, and which of `flags` it has (enough to tell this project's machines apart)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return platform.processor() or "unknown"
    info = {k.strip(): v.strip() for k, v in info.items()}
    present = set(info.get("flags", "").split())
    isa = ", ".join(f for f in flags if f in present)
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, {isa})"
