"""One round of secure aggregation run in this process: every client's side and the server's, messages counted.

What a pool that runs clients in process would do (and what the tests and bench/secagg.py do):
the server routes each message between the client objects, clients drop out where told, and
every message's bytes are counted per client as it would travel.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedactors.aggregate import ExactSum
from fedactors.secagg.protocol import (
    ID_BYTES,
    VALUE_BYTES,
    MaskStream,
    RoundSpec,
    SecAggClient,
    SecAggServer,
)


@dataclass
class Transcript:
    """What a round cost: bytes each client sent and received, compute seconds by phase, who survived."""

    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    client_seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    server_seconds: dict[str, float] = field(default_factory=dict)
    survivors: frozenset[int] = frozenset()
    dropped: frozenset[int] = frozenset()

    def count(self, counts: dict[int, int], client: int, num_bytes: int) -> None:
        counts[client] = counts.get(client, 0) + num_bytes


def simulate_round(spec: RoundSpec, secret: bytes, updates: Mapping[int, tuple[np.ndarray, float]], *,
                   dropped_before: Collection[int] = (), dropped_after: Collection[int] = (),
                   ) -> tuple[ExactSum, Transcript]:
    """Run a round for `updates` ({client: (float32 update, examples)}, every client of spec.clients).

    dropped_before: clients that share keys, then send no masked vector (a deadline missed, a
    failure while training). dropped_after: clients that send their masked vector, then do not
    answer the unmasking. Returns the ExactSum of the survivors (SecAggError if it cannot be had)
    and the transcript. Clients whose update ExactSum refuses count as dropped before masking.
    """
    before, after = set(dropped_before), set(dropped_after)
    if before & after or not (before | after) <= set(spec.clients) or set(updates) != set(spec.clients):
        raise ValueError("every client of the round needs an update, and may drop out once, before or after masking")
    log = Transcript()
    server = SecAggServer(spec)
    clients = {c: SecAggClient(spec, c, secret) for c in spec.clients}
    advertised = {c: client.public_keys() for c, client in clients.items()}
    for c, keys in advertised.items():
        log.count(log.bytes_up, c, len(keys))
    to_each = server.neighbour_keys(advertised)
    outgoing = {}
    for c, keys in to_each.items():
        log.count(log.bytes_down, c, sum(ID_BYTES + len(k) for k in keys.values()))
        outgoing[c] = clients[c].share_keys(keys)
        log.count(log.bytes_up, c, sum(ID_BYTES + len(x) for x in outgoing[c].values()))
    for holder, ciphertexts in server.route_shares(outgoing).items():
        log.count(log.bytes_down, holder, sum(ID_BYTES + len(x) for x in ciphertexts.values()))
        clients[holder].receive_shares(ciphertexts)
    stream = MaskStream(spec.length)  # one scratch array for every client here; each has its own in a deployment
    for c in spec.clients:
        if c in before:
            continue
        update, examples = updates[c]
        masked = clients[c].mask(update, examples, stream)
        if masked is not None:
            log.count(log.bytes_up, c, VALUE_BYTES * spec.length)
            server.add_masked(c, masked, examples)
    survivors, dropped = server.unmask_request()
    responses = {}
    for c in sorted(survivors - after):
        held = set(spec.graph[c])
        # Down: the ids of its neighbours that dropped (the rest of those it holds shares of survived).
        log.count(log.bytes_down, c, ID_BYTES * len(held & dropped))
        responses[c] = clients[c].unmask_shares(survivors, dropped)
        log.count(log.bytes_up, c, sum(ID_BYTES + len(s) for s in responses[c].values()))
    exact = server.exact_sum(responses, stream)
    log.client_seconds = {c: dict(client.seconds.by_phase) for c, client in clients.items()}
    log.server_seconds = dict(server.seconds.by_phase)
    log.survivors, log.dropped = survivors, dropped | (set(spec.clients) - survivors - dropped)
    return exact, log

