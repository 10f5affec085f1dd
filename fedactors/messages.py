"""What crosses process boundaries: plain dataclasses with NumPy payloads, importable without torch.

Ray serialises the arrays inside these out of band, so a receiver reads them zero-copy (and
read-only) from the object store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


# One line of metrics.jsonl, and one entry of a checkpoint's history.
METRIC_KEYS = (
    "round", "accuracy", "loss", "train_loss", "round_seconds", "train_seconds", "wait_seconds",
    "aggregate_seconds", "eval_seconds", "num_updates", "clients", "retried", "dropped", "rejected", "byzantine",
    "failures", "epsilon", "clip", "bytes_down", "bytes_up", "bytes_down_total", "bytes_up_total", "client_accuracy",
    "virtual_seconds", "available", "late", "offline", "staleness", "personal_accuracy", "secure",
)
# Keys a row carries only where they have a value: the clients' spread, adaptive clipping's clip, and the virtual
# clock's (fedactors.runtime.systems): every other run's rows stay as they were.
SOMETIMES_KEYS = ("client_accuracy", "clip", "virtual_seconds", "available", "late", "offline", "staleness",
                  "personal_accuracy", "secure")
# What a DP-FedAvg run leaves out of its metrics: who was sampled (its privacy rests on that being
# secret), how many, and what their data gave (the training loss); what is released is the model
# and its accuracy on the test set.
# The clients' own accuracies are measured on their data too, so they stay out as well; and the bytes
# a round moves, which count who was sampled and returned.
PRIVATE_KEYS = ("train_loss", "num_updates", "clients", "retried", "dropped", "rejected", "byzantine", "failures",
                "client_accuracy", "bytes_down", "bytes_up", "bytes_down_total", "bytes_up_total", "personal_accuracy")


def metrics_fields(row: dict) -> dict:
    """The keys of METRIC_KEYS in `row` (an event or a RoundStats' fields), less PRIVATE_KEYS if row["private"],
    then the task's own metrics by name. client_accuracy only where clients were evaluated one by one, clip only
    under adaptive clipping."""
    hidden = PRIVATE_KEYS if row.get("private") else ()
    out = {k: row[k] for k in METRIC_KEYS if k in row and k not in hidden}
    for key in SOMETIMES_KEYS:
        if out.get(key) is None:
            out.pop(key, None)
    out.update(row.get("metrics") or {})
    return out


@dataclass(frozen=True)
class Update:
    """One client's result for one round."""

    client_id: int
    round: int
    weights: np.ndarray  # flat float32, the client's model after local training
    num_examples: int
    train_loss: float  # mean minibatch loss over the client's last epoch
    train_seconds: float
    host: int = -1  # index of the host that trained it, for reporting
    kept: dict[str, np.ndarray] = field(default_factory=dict)  # the client's state to keep (fedactors.runtime.states)
    kept_stages: tuple[str, ...] = ()  # ... the stages it replaces: "algorithm/" (Reply.keep), "feedback/residual"
    sent: dict[str, np.ndarray] = field(default_factory=dict)  # what the algorithm's local update sent (Reply.send)
    metrics: dict[str, float] = field(default_factory=dict)  # ... and its metrics (Reply.metrics)


@dataclass(frozen=True)
class HostSum:
    """A host's share of a round under host-side sums: one exact partial sum of its clients' weights.

    `acc` is fedactors.aggregate.ExactSum's int64 accumulator over the clients in `clients`, each
    weighted by its share of the round's sampled examples; the other lists say what became of the
    rest of the clients it was handed (each client appears in exactly one list)."""

    host: int
    round: int
    acc: np.ndarray  # int64, the weights' length
    clients: list[int]  # summed into acc, in the order trained
    num_examples: list[int]
    train_losses: list[float]
    train_seconds: list[float]
    rejected: list[int] = field(default_factory=list)  # NaN or infinite weights: never summed
    out_of_range: list[int] = field(default_factory=list)  # values beyond what the exact sum holds
    failures: list[tuple[int, str]] = field(default_factory=list)  # (client, error) of clients whose training raised


@dataclass(frozen=True)
class Failure:
    """A client whose training did not come back, and why."""

    client_id: int
    host: int
    error: str
    round: int | None = None  # the job's round key, where one call trains a client in more than one (train_jobs)


@dataclass(frozen=True)
class EvalPart:
    """Evaluation of the global model on a slice of the test set."""

    loss_sum: float
    correct: int
    count: int
    seconds: float
    sums: dict[str, float] = field(default_factory=dict)  # the task's own metrics, summed over the slice
    hits: np.ndarray | None = None  # bool per example: classified right (for per-client evaluation)


@dataclass
class RoundStats:
    """What one round cost and achieved; one line of metrics.jsonl once evaluated."""

    round: int
    clients: list[int]
    num_updates: int
    round_seconds: float
    train_seconds: float  # the slowest host's training time this round
    wait_seconds: float  # from dispatch until the last update arrived
    aggregate_seconds: float
    train_loss: float | None = 0.0  # example-weighted mean of the clients' last-epoch losses (None: nobody sampled)
    eval_seconds: float = 0.0
    accuracy: float | None = None
    loss: float | None = None
    retried: list[int] = field(default_factory=list)  # clients trained again after a failure
    dropped: list[int] = field(default_factory=list)  # clients left out (only under --min-fit-fraction)
    rejected: list[int] = field(default_factory=list)  # clients whose update held NaN or inf: never averaged
    byzantine: list[int] = field(default_factory=list)  # sampled clients that are faulty by configuration
    failures: list[str] = field(default_factory=list)
    hosts: dict[int, int] = field(default_factory=dict)  # client id -> host that trained it
    lost_hosts: dict[int, str] = field(default_factory=dict)  # hosts Ray gave up on this round -> why
    checkpoint_seconds: float | None = None  # None: no checkpoint written after this round
    epsilon: float | None = None  # dp-fedavg: the privacy spent so far, at --delta
    clip: float | None = None  # dp-fedavg --clip adaptive: the clip this round's updates were clipped to
    private: bool = False  # dp-fedavg: PRIVATE_KEYS stay out of the metrics
    bytes_down: int = 0  # what the sampled clients received this round (fedactors.traffic)
    bytes_up: int = 0  # what the clients that trained sent
    bytes_down_total: int = 0  # the run's so far (from run.json's bytes_since_round)
    bytes_up_total: int = 0
    bytes_since_round: int = 0  # the totals count the rounds after this one (0: the whole run)
    metrics: dict[str, float] = field(default_factory=dict)  # the task's own metrics on the test set, by name
    client_accuracy: dict | None = None  # per-client evaluation: coordinator.client_spread
    personal_accuracy: dict | None = None  # personalized models on the clients' own splits: coordinator.personal_spread
    # Each evaluated client's accuracy (global, and personalized), for the run directory's clients.jsonl; not a metric
    clients_table: dict | None = None
    # Secure aggregation (fedactors.secagg.stage.SecureRound.report): k, t, survivors, who dropped before and after
    # masking, the clients' and the server's seconds.
    secure: dict | None = None
    # On the virtual clock (fedactors.runtime.systems): its time at the end of the round (the server update), how many
    # clients were online when the round sampled, who missed the deadline or the first m (late), who went offline
    # before finishing, and (fedbuff, fedasync) the staleness of the update's arrivals: mean, max, count by value.
    virtual_seconds: float | None = None
    available: int | None = None
    late: list[int] | None = None
    offline: list[int] | None = None
    staleness: dict | None = None

    def metrics_row(self) -> dict:
        """The JSON object metrics.jsonl holds for this round."""
        return metrics_fields(asdict(self))
