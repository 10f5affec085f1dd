"""Each client's own state between its rounds, kept in the store rather than in the coordinator.

A client's state is named float32 buffers, each under the stage that keeps it: "algorithm/<name>" for what an
algorithm's local update keeps (`Reply.keep`: SCAFFOLD's control variate, a personal model, a user method's
buffers), "feedback/residual" for top-k's or sign's error-feedback residual, and "downlink/received" for the
model --compress-down last sent it (kept by the server, never sent to a host). A host is sent the client's
state with the client's job and returns the state to keep with its update; the loop keeps it only for an update
it accepts (a client whose update was not used keeps what it had).

The coordinator holds only the state that changed since the last checkpoint (at most the clients of
--checkpoint-every rounds) and a manifest, client -> the round whose stored blob is its state. A checkpoint
writes just those clients, in the same transaction as the round (RedisStore.save), so its cost follows the
round's clients, not K; a round reads the state of the clients it trains in one call. Without a store (a run in
process), everything stays here.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fedactors.store.checkpoint import manifest_extra, manifest_from

ALGORITHM = "algorithm/"
RESIDUAL = "feedback/residual"
# --compress-down: the model the client last received, which the server's next message to it is a delta from. The
# server's own record of the client: never sent to its host (HOST_STAGES are).
DOWNLINK = "downlink/received"
HOST_STAGES = (ALGORITHM, "feedback/")


class ClientStates:
    """The clients' state: changed since the last checkpoint (here), or stored (named by the manifest)."""

    def __init__(self, manifest: dict[int, int] | None = None,
                 changed: dict[int, dict[str, np.ndarray]] | None = None) -> None:
        self.stored: dict[int, int] = dict(manifest or {})  # client -> round of its blob in the store
        self.changed: dict[int, dict[str, np.ndarray]] = dict(changed or {})

    @classmethod
    def of_checkpoint(cls, extra: dict) -> ClientStates:
        return cls(manifest_from(extra))

    def __contains__(self, client_id: int) -> bool:
        return client_id in self.changed or client_id in self.stored

    def __len__(self) -> int:
        return len(self.stored.keys() | self.changed.keys())

    def bind(self, store, run_id: str | None) -> None:
        """The store the stored state is read from (the coordinator's, once it has one)."""
        self._store, self._run_id = store, run_id

    _store = None
    _run_id: str | None = None

    def get(self, client_ids: Iterable[int]) -> dict[int, dict[str, np.ndarray]]:
        """The state of each of `client_ids` ({} for a client that has none yet): what changed since the last
        checkpoint from here, the rest read from the store in one call."""
        ids = list(dict.fromkeys(client_ids))
        wanted = {c: self.stored[c] for c in ids if c not in self.changed and c in self.stored}
        read = self._store.client_states(self._run_id, wanted) if wanted else {}
        return {c: self.changed[c] if c in self.changed else read.get(c, {}) for c in ids}

    def put(self, client_id: int, state: dict[str, np.ndarray]) -> None:
        """Client `client_id`'s whole state from now on (every stage's buffers, by their full names)."""
        self.changed[client_id] = state

    def checkpoint(self, round_idx: int) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, list[int]]]:
        """(the state to write with the checkpoint of `round_idx`, the manifest for its header); from here on it is
        stored, so that the coordinator lets go of it once the checkpoint is written (saved())."""
        manifest = {**self.stored, **{c: round_idx for c in self.changed}}
        return dict(self.changed), manifest_extra(manifest)

    def saved(self, round_idx: int) -> None:
        """The checkpoint of `round_idx` holds the changed state: forget it here."""
        for c in self.changed:
            self.stored[c] = round_idx
        self.changed = {}

    def everything(self) -> dict[int, dict[str, np.ndarray]]:
        """Every client's state (for tests and tools: a run's whole state is read only when asked for)."""
        return self.get(sorted(self.stored.keys() | self.changed.keys()))


def updated(before: dict[str, np.ndarray], kept: dict[str, np.ndarray], stages: Iterable[str]) -> dict[str, np.ndarray]:
    """A client's state `before`, with the buffers of each of `stages` (name prefixes) replaced by those in `kept`."""
    stages = tuple(stages)
    return {**{n: b for n, b in before.items() if not n.startswith(stages)}, **kept}
