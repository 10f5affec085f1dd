"""Experiment trackers as callbacks: a run's settings, metrics and files in TensorBoard or MLflow.

    import fedactors
    from fedactors.trackers import MLflow, TensorBoard

    fedactors.run("digits-mlp", rounds=20, out="runs/d", callbacks=[TensorBoard("tb"), MLflow()])

`fedactors run --tensorboard DIR --mlflow [URI]` makes the same callbacks (from_flags). Each tracker gets:

- the settings (run.json's "config", those not None): MLflow params; TensorBoard hparams and a text "config";
- each line metrics.jsonl gets, at step = its round: every number in it, dicts flattened with '/'
  (client_accuracy/p10), lists as their length (clients/count, failures/count), None left out (scalars);
- as the run ends: run.json and the run directory's figures (*.png, *.svg, *.pdf): MLflow artifacts; TensorBoard a
  text "run.json" and the PNGs as images "figures/NAME".

A resumed run continues the same tracker run with one value per step. Each tracker knows the last round it logged
(RUN_DIR/trackers.json for TensorBoard; the MLflow run's tag fedactors.logged_through) and, resumed from round R,
first gets from metrics.jsonl the checkpointed rounds it lacks (the coordinator runs ahead of the hooks, so a stop can
leave a checkpoint they never saw; or the tracker is new to the run, or another store or directory). TensorBoard
logs each round as it is written, and opens its event file with TensorBoard's purge marker at the first round it
writes: what a stopped run logged past its checkpoint is read as the re-run writes it. MLflow cannot take a value
back: it logs a round once its checkpoint is in the store (every round at --checkpoint-every 1), never one at or
below its tag. trackers.json also keeps the MLflow run of each tracking URI. A tracker made with optional=True warns
once and goes quiet instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from fedactors.callbacks import Callback
from fedactors.errors import ConfigError, first_line

INSTALL = "pip install 'fedactors[trackers]'"
# In the run directory: {"tensorboard": {LOG_DIR/RUN_ID: last round logged}, "mlflow": {URI: MLflow run id}}.
STATE_FILE = "trackers.json"
LOGGED_THROUGH = "fedactors.logged_through"  # MLflow tag: the last round logged
FIGURES = ("*.png", "*.svg", "*.pdf")
MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
CHECK_SECONDS = 5  # how long the check before the run waits for a tracking server
MLFLOW_BATCH = 1000  # metrics per log_batch request (MLflow's limit)


class TrackerError(ConfigError):
    """A tracker's store cannot be reached or written: said before the run starts."""


class TrackerMissing(TrackerError):
    """A tracker's library is not installed."""


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """A metrics.jsonl line's numbers by tag: dicts flattened with '/', lists as NAME/count; "round" (the step)
    and None left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if name == "round" or value is None:
            continue
        if isinstance(value, (bool, int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, list):
            out[f"{name}/count"] = float(len(value))
    return out


def settings(config: dict) -> dict:
    """The settings a tracker records: run.json's "config" less those not set (None), a list or table as its JSON."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in config.items() if v is not None}


def history(run_dir: str | Path) -> list[dict]:
    """The rows of the run's metrics.jsonl (on a resume: the checkpoint's, as the run directory was reopened)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_state(run_dir: str | Path) -> dict:
    """RUN_DIR/trackers.json, or {} where there is none."""
    try:
        state = json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(run_dir: str | Path, key: str, value: object) -> None:
    """Set `key` of RUN_DIR/trackers.json (written whole, then renamed into place)."""
    state = {**read_state(run_dir), key: value}
    path = Path(run_dir) / STATE_FILE
    temporary = path.with_name(f".{STATE_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(temporary, path)


def figures(run_dir: str | Path) -> list[Path]:
    return sorted(p for pattern in FIGURES for p in Path(run_dir).glob(pattern) if p.is_file())


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def check_writable(path: Path, what: str) -> None:
    """TrackerError unless `path` is a directory, or one can be made there (nothing is created)."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TrackerError(f"{what} {path} cannot be written: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrackerError(f"{what} {path} cannot be written: permission denied on {existing}")


class Tracker(Callback):
    """What both trackers share: each hook's work behind `optional` (a failure warns once, then nothing)."""

    label = "tracker"

    def __init__(self, optional: bool) -> None:
        self.optional = optional
        self.off = False

    def _guarded(self, work, record: dict) -> None:
        if self.off:
            return
        try:
            work(record)
        except Exception as exc:
            if not self.optional:
                raise
            self.off = True
            warn(f"{self.label} failed ({type(exc).__name__}: {first_line(exc)}); the run goes on without it")

    def on_run_start(self, run: dict) -> None:
        self._guarded(self._start, run)

    def on_evaluation(self, record: dict) -> None:
        self._guarded(self._evaluation, record)

    def on_checkpoint(self, record: dict) -> None:
        self._guarded(self._checkpoint, record)

    def on_run_end(self, run: dict) -> None:
        self._guarded(self._end, run)

    def _start(self, run: dict) -> None: ...

    def _evaluation(self, record: dict) -> None: ...

    def _checkpoint(self, record: dict) -> None: ...

    def _end(self, run: dict) -> None: ...


class TensorBoard(Tracker):
    """Event files in LOG_DIR/RUN_ID through torch's SummaryWriter: `tensorboard --logdir LOG_DIR` shows each run.
    Made, it checks that LOG_DIR can be written (TrackerError if not)."""

    def __init__(self, log_dir: str | Path, *, optional: bool = False) -> None:
        super().__init__(optional)
        try:
            import tensorboard  # noqa: F401  (torch's SummaryWriter writes its protocol buffers)
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise TrackerMissing(f"TensorBoard logging (--tensorboard) needs the tensorboard package, which is not "
                               f"installed: pip install tensorboard (or every tracker: {INSTALL})") from None
        self.root = Path(log_dir).absolute()
        self.label = f"TensorBoard in {self.root}"
        check_writable(self.root, "TensorBoard directory")
        self.writer = None
        self.run_dir = ""

    def _start(self, run: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = self.root / run["run_id"]
        run_dir = self.run_dir = run["run_dir"]
        resumed = run["resumed_from_round"]
        self.marks = dict(read_state(run_dir).get("tensorboard") or {})
        seen = self.marks.pop(str(self.path), None)  # the last round this directory got of this run
        # From the round after what both the directory and the checkpoint have: what it logged past the checkpoint
        # is run again, and rounds checkpointed that it never got (the coordinator runs ahead of the hooks) come
        # from metrics.jsonl. A new run, or a directory new to it, starts at 1.
        first = min(seen, resumed) + 1 if resumed is not None and seen is not None else 1
        # purge_step: TensorBoard drops what this directory holds from that step on and reads what follows instead.
        self.writer = SummaryWriter(str(self.path), purge_step=first)
        if first == 1:
            self._settings(run["config"])
        for row in history(run_dir):
            if row["round"] >= first:
                self._log(row)
        self._mark(resumed or 0)  # it has every round up to the checkpoint now

    def _mark(self, round_done: int) -> None:
        """trackers.json: this directory has this run's rounds up to `round_done`."""
        write_state(self.run_dir, "tensorboard", {**self.marks, str(self.path): round_done})

    def _settings(self, config: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = settings(config)
        experiment, start, _ = hparams(values, {"accuracy": None, "loss": None})
        for summary in (experiment, start):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", _code(json.dumps(values, indent=2)), 0)

    def _log(self, row: dict) -> None:
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, row["round"])
        self.writer.flush()  # a killed run keeps what it logged (SummaryWriter would wait up to two minutes)

    def _evaluation(self, record: dict) -> None:
        self._log(record)
        self._mark(record["round"])

    def _end(self, run: dict) -> None:
        if self.writer is None:
            return
        step = run.get("rounds_completed") or 0
        self.writer.add_text("run.json", _code(json.dumps(run, indent=2)), step)
        for path in figures(self.run_dir):
            if path.suffix == ".png":
                import numpy as np
                from PIL import Image

                with Image.open(path) as image:
                    self.writer.add_image(f"figures/{path.name}", np.asarray(image.convert("RGB")), step,
                                          dataformats="HWC")
        self.writer.close()
        self.writer = None


def _code(text: str) -> str:
    """`text` as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


def mlflow_uri(uri: str | None = None) -> str:
    """The tracking URI: `uri`, else $MLFLOW_TRACKING_URI, else ./mlruns; a path (or file: URI) made absolute."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns"
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = urllib.request.url2pathname(parsed.path) if parsed.scheme else uri
        return Path(path).expanduser().absolute().as_uri()
    return uri


def last_mlflow_uri(run_dir: str | Path) -> str | None:
    """The tracking URI the run in `run_dir` last logged to, if it did."""
    stored = read_state(run_dir).get("mlflow") or {}
    return list(stored)[-1] if isinstance(stored, dict) and stored else None


def check_mlflow(uri: str) -> None:
    """TrackerError unless MLflow can log at `uri`: a file store's directory can be written; a server answers,
    within CHECK_SECONDS and without retrying."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        check_writable(Path(urllib.request.url2pathname(parsed.path)), "MLflow store")
        return
    if parsed.scheme in ("http", "https"):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=CHECK_SECONDS).close()
        except urllib.error.HTTPError:
            pass  # it answers; whether it is MLflow's is asked below
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackerError(f"MLflow tracking server {uri} cannot be reached: {first_line(reason)}") from None
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(CHECK_SECONDS))
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as exc:  # whatever the client meets (refused, not MLflow, no such scheme): one line
        raise TrackerError(f"MLflow at {uri} cannot be used: {first_line(exc)}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _client(uri: str):
    from mlflow import MlflowClient

    if uri.startswith("file:"):
        # MLflow 3 keeps its file store only on request (it suggests a database); a directory of files is what
        # --mlflow promises without a server or a database.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    # A server's client prints the run's link on stdout as the run ends: --json's stdout is JSON lines only.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return MlflowClient(tracking_uri=uri)


class MLflow(Tracker):
    """An MLflow run named by the run id, in experiment `experiment` at `uri` (mlflow_uri's default: a file store
    ./mlruns); a resumed run continues the MLflow run it logged to (RUN_DIR/trackers.json), at the URI it last used
    when `uri` is not given. Params are the settings the run started with; run.json says what it ended with.
    Made, it checks the store (check_mlflow): TrackerError before any run if it cannot be used."""

    def __init__(self, uri: str | None = None, *, experiment: str = "fedactors", optional: bool = False) -> None:
        super().__init__(optional)
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise TrackerMissing(f"MLflow tracking (--mlflow) needs the mlflow-skinny package, which is not installed: "
                               f"pip install mlflow-skinny (or every tracker: {INSTALL})") from None
        self.given = uri
        self.uri = mlflow_uri(uri)
        self.experiment = experiment
        self.label = f"MLflow at {self.uri}"
        check_mlflow(self.uri)
        self.client = None
        self.run_dir = ""
        self.run_id: str | None = None
        self.pending: list[dict] = []  # evaluated rounds not yet checkpointed
        self.logged_through = 0

    def _start(self, run: dict) -> None:
        run_dir = self.run_dir = run["run_dir"]
        if self.given is None and (last := last_mlflow_uri(run_dir)) not in (None, self.uri):
            self.uri, self.label = last, f"MLflow at {last}"  # where this run has logged so far
            check_mlflow(last)
        self.client = _client(self.uri)
        stored = dict(read_state(run_dir).get("mlflow") or {})
        previous = stored.pop(self.uri, None)  # put back last: the URI a resume without one takes
        if previous is None or run["resumed_from_round"] is None or not self._continue(previous, run):
            self._create(run)
        self.pending = history(run_dir)  # checkpointed rounds it does not have yet (a new run has none)
        self._flush(math.inf)
        write_state(run_dir, "mlflow", {**stored, self.uri: self.run_id})

    def _continue(self, run_id: str, run: dict) -> bool:
        """Take up MLflow run `run_id` again; False if the store no longer has it."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_run(run_id)
        except MlflowException:
            return False
        if found.info.lifecycle_stage != "active":
            return False
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        self.logged_through = int(found.data.tags.get(LOGGED_THROUGH, 0))
        new = {k: v for k, v in settings(run["config"]).items() if k not in found.data.params}
        self._log_params(new)
        self.client.set_tag(run_id, "fedactors.resumed_from_round", str(run["resumed_from_round"]))
        return True

    def _create(self, run: dict) -> None:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(self.experiment)
            except MlflowException:  # made meanwhile by another run
                experiment_id = self.client.get_experiment_by_name(self.experiment).experiment_id
        else:
            experiment_id = experiment.experiment_id
        tags = {"fedactors.run_id": run["run_id"], "fedactors.run_dir": str(Path(run["run_dir"]).absolute()),
                "fedactors.task": str(run["config"].get("task")), LOGGED_THROUGH: "0"}
        self.run_id = self.client.create_run(experiment_id, run_name=run["run_id"], tags=tags).info.run_id
        self.logged_through = 0
        self._log_params(settings(run["config"]))

    def _log_params(self, values: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)) for k, v in values.items()]
        for i in range(0, len(params), 100):  # MLflow takes 100 params a request
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _flush(self, through: float) -> None:
        """Log the pending rounds up to `through` (those above logged_through), each request with the tag saying
        how far it got."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        rows = [r for r in self.pending if self.logged_through < r["round"] <= through]
        self.pending = [r for r in self.pending if r["round"] > through]
        requests: list[list[dict]] = []
        size = MLFLOW_BATCH
        for row in rows:  # whole rounds a request, up to MLFLOW_BATCH metrics
            if size + len(scalars(row)) > MLFLOW_BATCH:
                requests.append([])
                size = 0
            requests[-1].append(row)
            size += len(scalars(row))
        for request in requests:
            metrics = [Metric(tag, value, now, row["round"]) for row in request for tag, value in scalars(row).items()]
            last = request[-1]["round"]
            self.client.log_batch(self.run_id, metrics=metrics, tags=[RunTag(LOGGED_THROUGH, str(last))])
            self.logged_through = last

    def _evaluation(self, record: dict) -> None:
        self.pending.append(record)

    def _checkpoint(self, record: dict) -> None:
        self._flush(record["round"])

    def _end(self, run: dict) -> None:
        if self.run_id is None:
            return
        if run.get("status") == "finished":
            self._flush(math.inf)
        # A failed or interrupted run's rounds past its checkpoint are dropped: a resume runs them again.
        self.pending = []
        run_dir = Path(self.run_dir)
        if (run_dir / "run.json").is_file():
            self.client.log_artifact(self.run_id, str(run_dir / "run.json"))
        for path in figures(run_dir):
            self.client.log_artifact(self.run_id, str(path), "figures")
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(run.get("status"), "FINISHED"))


def from_flags(tensorboard: str | None, mlflow: str | None, optional: bool, out: Path) -> list[Tracker]:
    """The trackers `fedactors run` asks for: --tensorboard DIR, --mlflow [URI] ('' when given without a URI: the
    one the run in `out` last logged to, else mlflow_uri's default). One that cannot be reached is a TrackerError,
    or with --tracker-optional a warning, and the run goes on without it."""
    if optional and tensorboard is None and mlflow is None:
        raise ConfigError("--tracker-optional is given without --tensorboard or --mlflow")
    makers = []
    if tensorboard is not None:
        makers.append(("--tensorboard", lambda: TensorBoard(tensorboard, optional=optional)))
    if mlflow is not None:
        makers.append(("--mlflow", lambda: MLflow(mlflow or last_mlflow_uri(out), optional=optional)))
    trackers = []
    for flag, make in makers:
        try:
            trackers.append(make())
        except TrackerError as exc:
            if not optional or isinstance(exc, TrackerMissing):
                raise
            warn(f"{flag}: {exc}; the run goes on without it (--tracker-optional)")
    return trackers
