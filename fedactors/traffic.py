"""What a round communicates, counted as a deployment would send it (issue 27): bytes down and up per client.

Down, each sampled client receives the global weights (the parameters that train, then the
float buffers: what travels in fedactors' flat buffer; frozen parameters never do) and any
server state its method needs (SCAFFOLD's c). Up, each client that trains sends its result as
encoded (float32, 4 bytes a value, or --compress's encoding) and any state its method returns (SCAFFOLD's new
control variate). Counted per client even where hosts sum their clients before anything
reaches the coordinator (--host-sums): a deployment has no hosts, every client uploads.
A client that failed sent nothing; one whose update was refused (NaN, too large) did send it.
Under secure aggregation a client's masked vector (8 bytes a value), keys and shares go up in place
of its update, and its neighbours' keys and shares come down besides the model (`secure_per_client`).
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_BYTES = 4


def per_client(strategy: str, num_weights: int, compress: str | None = None,
               compress_down: str | None = None) -> tuple[int, int]:
    """(bytes down, bytes up) for one client of a round, for `strategy` (a RunConfig.strategy), `compress` (a
    --compress spec: the update goes up in the encoded buffers' bytes, fedactors.compress) and `compress_down` (the
    model goes down encoded)."""
    from fedactors.algorithms import builtin
    from fedactors.compress import parse

    model = FLOAT_BYTES * num_weights
    compressor, down = parse(compress), parse(compress_down)
    update = model if compressor is None else compressor.encoded_bytes(num_weights)
    sent = model if down is None else down.encoded_bytes(num_weights)
    spec = builtin(strategy)  # what else its method sends (SCAFFOLD: c down, the new control variate up)
    if spec is None:
        return sent, update
    return sent + model * spec.copies_down, update + model * spec.copies_up


def secure_per_client(down: int, up: int, num_weights: int, neighbours: int | None) -> tuple[int, int]:
    """per_client's (down, up) under secure aggregation with `neighbours` (k) each, no dropouts (None: as they are):
    fedactors.secagg.costs.client_bytes' up in place of the update (secure aggregation is refused where more than
    the update goes up), its down besides the model."""
    if neighbours is None:
        return down, up
    from fedactors.secagg.costs import client_bytes

    counted = client_bytes(neighbours, num_weights)
    return down + counted.down, counted.up


@dataclass
class Totals:
    """Bytes down and up over the run so far, from round `since_round` on (0 for a run counted from its start;
    a run resumed from a checkpoint written before fedactors counted bytes is counted from its resume)."""

    down: int = 0
    up: int = 0
    since_round: int = 0

    def add(self, down: int, up: int) -> None:
        self.down += down
        self.up += up

    def to_dict(self) -> dict:
        return {"down": self.down, "up": self.up, "since_round": self.since_round}

    @classmethod
    def from_checkpoint(cls, extra: dict | None, round_done: int) -> Totals:
        """The totals a checkpoint's `extra` kept, or a count starting after `round_done` when it kept none."""
        kept = (extra or {}).get("bytes")
        if not isinstance(kept, dict):
            return cls(since_round=round_done)
        return cls(int(kept["down"]), int(kept["up"]), int(kept.get("since_round", 0)))
