"""Where clients train: the HostPool interface, ClientHosts in this process (LocalPool) or as Ray actors (RayPool).

A pool hands clients to hosts (balance: the largest first, to the least loaded), takes their
results as they finish, turns whatever went wrong into Failure data (a dead host, a timeout),
restarts and re-sends data to hosts Ray revives, and splits the test set among the hosts for
evaluation. What a failure means, and whether to retry it, is the coordinator's to decide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedactors.runtime.collect import MAX_ATTEMPTS
from fedactors.errors import RoundFailed
from fedactors.messages import EvalPart, Failure, HostSum, Update

if TYPE_CHECKING:
    import ray.actor

    from fedactors.runtime.client import ClientHost


class HostPool(Protocol):
    """Where clients train. Results come back as they finish, failures as data."""

    def initial_weights(self) -> np.ndarray: ...

    def num_examples(self) -> list[int]: ...

    def train(
        self, global_weights: np.ndarray, round_idx: int, client_ids: Sequence[int], timeout: float | None = None,
        extras: Callable[[int], tuple] | None = None,
    ) -> Iterator[Update | Failure]:
        """Each client's update or failure; `extras(cid)` are more arguments for ClientHost.train (SCAFFOLD's)."""
        ...

    def train_jobs(self, jobs: Sequence[tuple[np.ndarray, int, int]], timeout: float | None = None,
                   extras: Sequence[tuple] | None = None) -> Iterator[Update | Failure]:
        """Train (weights, round key, client) jobs at once, spread over the hosts (fedbuff's arrivals, each from the
        weights of its start): an Update's round and client_id say whose it is, and a Failure's round and client_id.
        `extras[i]`: more arguments for job i's ClientHost.train (its error-feedback residual, ...)."""
        ...

    def train_sums(
        self, global_weights: np.ndarray, round_idx: int, client_ids: Sequence[int], total_examples: int,
        timeout: float | None = None,
    ) -> Iterator[HostSum | Failure]:
        """Host-side sums: each host's exact partial sum over its share of `client_ids` (ClientHost.train_sum),
        or a failure per client of a host that failed as a whole."""
        ...

    def evaluate(self, weights: np.ndarray, num_test: int, *, hits: bool = False,
                 held_out: bool = False) -> list[EvalPart]:
        """The test set's [0, num_test) in slices, one a host (ClientHost.evaluate's `hits` and `held_out`)."""
        ...

    def evaluate_personal(self, weights: np.ndarray, round_idx: int, clients: Sequence[int],
                          positions: Sequence[np.ndarray], held_out: bool,
                          states: dict[int, dict[str, np.ndarray]]) -> list[tuple[int, int, int, float]]:
        """Each client's personalized model on its own split, spread over the hosts (ClientHost.evaluate_personal):
        [(client, correct, count, loss sum)] in `clients`' order. `states`: the clients' own state."""
        ...

    def newly_lost(self) -> dict[int, str]:
        """Hosts gone for good since the last call (host -> why), for the round to report."""
        ...


def personal_arguments(clients: Sequence[int], states: dict[int, dict[str, np.ndarray]]) -> tuple:
    """ClientHost.evaluate_personal's arguments after `held_out`: ((client, name), ...), then the arrays."""
    named = [((c, n), a) for c in clients for n, a in states.get(c, {}).items()]
    return (tuple(k for k, _ in named), *(a for _, a in named))


def balance(client_ids: Sequence[int], num_examples: Sequence[int], hosts: Sequence[int]) -> dict[int, list[int]]:
    """Longest-processing-time assignment of clients to hosts: biggest first, to the least loaded."""
    load = {h: 0 for h in hosts}
    plan: dict[int, list[int]] = {h: [] for h in hosts}
    for cid in sorted(client_ids, key=lambda c: (-num_examples[c], c)):
        host = min(hosts, key=lambda h: (load[h], h))
        plan[host].append(cid)
        load[host] += num_examples[cid]
    return plan


def eval_slices(num_test: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slices of the test set, one per evaluating host."""
    edges = np.linspace(0, num_test, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class LocalPool:
    """ClientHosts in this process, run one after another: for tests and debugging."""

    def __init__(self, hosts: Sequence[ClientHost]) -> None:
        self.hosts = list(hosts)

    def initial_weights(self) -> np.ndarray:
        return self.hosts[0].initial_weights()

    def num_examples(self) -> list[int]:
        return self.hosts[0].num_examples()

    def train(
        self, global_weights: np.ndarray, round_idx: int, client_ids: Sequence[int], timeout: float | None = None,
        extras: Callable[[int], tuple] | None = None,
    ) -> Iterator[Update | Failure]:
        """Trains in turn; `timeout` is not enforced in-process."""
        plan = balance(client_ids, self.num_examples(), range(len(self.hosts)))
        for h, cids in plan.items():
            for cid in cids:
                try:
                    yield self.hosts[h].train(global_weights, cid, round_idx, *(extras(cid) if extras else ()))
                except Exception as exc:  # a failure is data: the coordinator decides what it means
                    yield Failure(client_id=cid, host=h, error=f"{type(exc).__name__}: {exc}")

    def train_jobs(self, jobs: Sequence[tuple[np.ndarray, int, int]], timeout: float | None = None,
                   extras: Sequence[tuple] | None = None) -> Iterator[Update | Failure]:
        examples = self.num_examples()
        plan = balance(range(len(jobs)), [examples[c] for _, _, c in jobs], range(len(self.hosts)))
        for h, indices in plan.items():
            for i in indices:
                weights, round_idx, cid = jobs[i]
                try:
                    yield self.hosts[h].train(weights, cid, round_idx, *(extras[i] if extras else ()))
                except Exception as exc:
                    yield Failure(client_id=cid, host=h, error=f"{type(exc).__name__}: {exc}", round=round_idx)

    def train_sums(
        self, global_weights: np.ndarray, round_idx: int, client_ids: Sequence[int], total_examples: int,
        timeout: float | None = None,
    ) -> Iterator[HostSum | Failure]:
        plan = balance(client_ids, self.num_examples(), range(len(self.hosts)))
        for h, cids in plan.items():
            if not cids:
                continue
            try:
                yield self.hosts[h].train_sum(global_weights, cids, round_idx, total_examples)
            except Exception as exc:
                yield from (Failure(client_id=cid, host=h, error=f"{type(exc).__name__}: {exc}") for cid in cids)

    def evaluate(self, weights: np.ndarray, num_test: int, *, hits: bool = False,
                 held_out: bool = False) -> list[EvalPart]:
        slices = eval_slices(num_test, len(self.hosts))
        return [self.hosts[i].evaluate(weights, a, b, hits=hits, held_out=held_out) for i, (a, b) in enumerate(slices)]

    def evaluate_personal(self, weights: np.ndarray, round_idx: int, clients: Sequence[int],
                          positions: Sequence[np.ndarray], held_out: bool,
                          states: dict[int, dict[str, np.ndarray]]) -> list[tuple[int, int, int, float]]:
        return self.hosts[0].evaluate_personal(weights, round_idx, list(clients), list(positions), held_out,
                                               *personal_arguments(clients, states))

    def newly_lost(self) -> dict[int, str]:
        return {}  # in-process hosts cannot die apart from the process


class RayPool:
    """ClientHost actors: one put of the global weights per round, results taken as they finish.

    A host whose process dies is dropped from the round (its clients come back as failures
    for the coordinator to retry elsewhere); Ray restarts the actor, and it rejoins the pool
    once it answers again. A host still training when `timeout` runs out is killed, so the
    straggler cannot hold its queue, and restarted the same way. A host Ray gives up on (out
    of restarts, node gone) is lost for good: `newly_lost` reports it once, and with no host
    left a round fails naming them.

    The global weights go into the object store once per distinct array: the coordinator
    evaluates a round's result and trains the next round (and its retries) from the same
    array, so they share one put.
    """

    REVIVE_WAIT_SECONDS = 120.0  # when every host is down, how long to wait for one to restart

    def __init__(self, actors: Sequence[ray.actor.ActorHandle], data: Sequence[ray.ObjectRef]) -> None:
        import ray

        self._ray = ray
        self.actors = list(actors)
        self.data = list(data)  # refs to what ClientHost.load takes, re-sent to a restarted host
        self.alive = list(range(len(self.actors)))
        self.reviving: dict[int, ray.ObjectRef] = {}
        self.gone: dict[int, str] = {}  # host -> why Ray gave up on it
        self._unreported: dict[int, str] = {}
        self._num_examples: list[int] | None = None
        self._put: tuple[np.ndarray, ray.ObjectRef] | None = None  # the last array put, and its ref

    def _weights_ref(self, weights: np.ndarray) -> ray.ObjectRef:
        """`weights` in the object store: put once, however many calls use the same array."""
        if self._put is None or self._put[0] is not weights:
            self._put = (weights, self._ray.put(weights))
        return self._put[1]

    def newly_lost(self) -> dict[int, str]:
        lost, self._unreported = self._unreported, {}
        return lost

    def _none_left(self) -> str:
        """Why no host is alive: for the round failure."""
        gone = ", ".join(f"host {h}: {why}" for h, why in sorted(self.gone.items()))
        if len(self.gone) == len(self.actors):
            return f"every client host is lost for good ({gone})"
        return (f"no client host came back within {self.REVIVE_WAIT_SECONDS:g} s"
                + (f"; lost for good: {gone}" if gone else ""))

    def initial_weights(self) -> np.ndarray:
        return self._ray.get(self.actors[self.alive[0]].initial_weights.remote())

    def num_examples(self) -> list[int]:
        if self._num_examples is None:
            self._num_examples = self._ray.get(self.actors[self.alive[0]].num_examples.remote())
        return self._num_examples

    def _lost(self, host: int) -> None:
        """Take `host` out of the pool and watch for Ray restarting it."""
        if host in self.alive:
            self.alive.remove(host)
            self.reviving[host] = self.actors[host].load.remote(*self.data)  # runs once Ray has restarted it

    def _revive(self, wait_seconds: float = 0.0) -> None:
        """Hosts that answer again rejoin; ones Ray gave up on leave for good."""
        ray = self._ray
        if not self.reviving:
            return
        ready, _ = ray.wait(list(self.reviving.values()), num_returns=1 if wait_seconds else len(self.reviving),
                            timeout=wait_seconds)
        for host, ref in list(self.reviving.items()):
            if ref in ready:
                del self.reviving[host]
                try:
                    ray.get(ref)
                    self.alive = sorted([*self.alive, host])
                except ray.exceptions.ActorUnavailableError:  # still restarting: ask again
                    self.reviving[host] = self.actors[host].load.remote(*self.data)
                except ray.exceptions.RayError as exc:  # out of restarts, or its node is gone
                    self.gone[host] = self._unreported[host] = f"Ray gave up restarting it ({_first_line(exc)})"

    def _plan(self, client_ids: Sequence[int], sizes: Sequence[int] | None = None) -> dict[int, list[int]] | str:
        """The alive hosts' shares of `client_ids`, or why there is no host to train them. `sizes`: what balances
        them, indexed by id (default: the clients' examples)."""
        self._revive()
        if not self.alive:
            self._revive(wait_seconds=self.REVIVE_WAIT_SECONDS)
        if not self.alive:
            return self._none_left()
        return balance(client_ids, self.num_examples() if sizes is None else sizes, self.alive)

    def train(
        self, global_weights: np.ndarray, round_idx: int, client_ids: Sequence[int], timeout: float | None = None,
        extras: Callable[[int], tuple] | None = None,
    ) -> Iterator[Update | Failure]:
        ray = self._ray
        plan = self._plan(client_ids)
        if isinstance(plan, str):
            yield from (Failure(client_id=cid, host=-1, error=plan) for cid in client_ids)
            return
        weights_ref = self._weights_ref(global_weights)
        # Each extra array into the object store once, shared by the calls (SCAFFOLD's c goes to every
        # client): keyed by identity, with the arrays held here so that no id is reused meanwhile.
        refs: dict[int, tuple[np.ndarray, ray.ObjectRef]] = {}

        def put_once(a: np.ndarray) -> ray.ObjectRef:
            if id(a) not in refs:
                refs[id(a)] = (a, ray.put(a))
            return refs[id(a)][1]

        def args(cid: int) -> tuple:
            extra = extras(cid) if extras else ()
            return tuple(put_once(a) if isinstance(a, np.ndarray) else a for a in extra)

        pending = {
            self.actors[h].train.remote(weights_ref, cid, round_idx, *args(cid)): ([cid], h)
            for h, cids in plan.items() for cid in cids
        }
        yield from self._gather(pending, timeout)

    def train_jobs(self, jobs: Sequence[tuple[np.ndarray, int, int]], timeout: float | None = None,
                   extras: Sequence[tuple] | None = None) -> Iterator[Update | Failure]:
        examples = self.num_examples()
        plan = self._plan(range(len(jobs)), [examples[c] for _, _, c in jobs])  # by job index
        if isinstance(plan, str):
            yield from (Failure(client_id=cid, host=-1, error=plan, round=r) for _, r, cid in jobs)
            return
        refs: dict[int, tuple[np.ndarray, object]] = {}  # each distinct weights array into the store once
        for weights, _, _ in jobs:
            if id(weights) not in refs:
                refs[id(weights)] = (weights, self._ray.put(weights))
        pending = {}
        for h, indices in plan.items():
            for i in indices:
                weights, round_idx, cid = jobs[i]
                more = tuple(self._ray.put(a) if isinstance(a, np.ndarray) else a for a in (extras[i] if extras else ()))
                pending[self.actors[h].train.remote(refs[id(weights)][1], cid, round_idx, *more)] = ([cid], h, round_idx)
        yield from self._gather(pending, timeout)

    def train_sums(
        self, global_weights: np.ndarray, round_idx: int, client_ids: Sequence[int], total_examples: int,
        timeout: float | None = None,
    ) -> Iterator[HostSum | Failure]:
        plan = self._plan(client_ids)
        if isinstance(plan, str):
            yield from (Failure(client_id=cid, host=-1, error=plan) for cid in client_ids)
            return
        weights_ref = self._weights_ref(global_weights)
        pending = {self.actors[h].train_sum.remote(weights_ref, cids, round_idx, total_examples): (cids, h)
                   for h, cids in plan.items() if cids}
        yield from self._gather(pending, timeout)

    def _gather(self, pending: dict, timeout: float | None) -> Iterator:
        """The calls' results as they finish (`pending`: ref -> (its clients, its host[, its round key])); a call that fails
        is a Failure for each of its clients, and a host still busy when `timeout` runs out is killed."""
        ray = self._ray
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=remaining)
            if not done:  # out of time: every host still busy is a straggler
                for cids, host, *key in pending.values():
                    yield from (Failure(client_id=cid, host=host, error=f"timed out after {timeout:g} s",
                                        round=key[0] if key else None) for cid in cids)
                for host in sorted({h for _, h, *_ in pending.values()}):
                    ray.kill(self.actors[host], no_restart=False)
                    self._lost(host)
                return
            if len(pending) > 1:  # take every call finished by now, not one per wait over all m pending
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                cids, host, *key = pending.pop(ref)
                round_key = key[0] if key else None
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    self._lost(host)
                    yield from (Failure(client_id=cid, host=host, error=f"host {host} died: {_first_line(exc)}",
                                        round=round_key) for cid in cids)
                except ray.exceptions.RayTaskError as exc:
                    yield from (Failure(client_id=cid, host=host, error=_first_line(exc), round=round_key)
                                for cid in cids)

    def evaluate(self, weights: np.ndarray, num_test: int, *, hits: bool = False,
                 held_out: bool = False) -> list[EvalPart]:
        ray = self._ray
        weights_ref = self._weights_ref(weights)
        for _ in range(MAX_ATTEMPTS):
            self._revive()
            if not self.alive:
                self._revive(wait_seconds=self.REVIVE_WAIT_SECONDS)
            if not self.alive:
                raise RoundFailed(f"evaluation: {self._none_left()}")
            hosts = list(self.alive)
            slices = eval_slices(num_test, len(hosts))
            refs = [self.actors[h].evaluate.remote(weights_ref, a, b, hits=hits, held_out=held_out)
                    for h, (a, b) in zip(hosts, slices)]
            try:
                return ray.get(refs)
            except ray.exceptions.RayActorError:
                for h, ref in zip(hosts, refs):  # find who died, then evaluate again on the rest
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayActorError:
                        self._lost(h)
        raise RoundFailed(f"evaluation failed {MAX_ATTEMPTS} times: client hosts keep dying")

    def evaluate_personal(self, weights: np.ndarray, round_idx: int, clients: Sequence[int],
                          positions: Sequence[np.ndarray], held_out: bool,
                          states: dict[int, dict[str, np.ndarray]]) -> list[tuple[int, int, int, float]]:
        ray = self._ray
        weights_ref = self._weights_ref(weights)
        where = {c: i for i, c in enumerate(clients)}
        for _ in range(MAX_ATTEMPTS):
            self._revive()
            if not self.alive:
                self._revive(wait_seconds=self.REVIVE_WAIT_SECONDS)
            if not self.alive:
                raise RoundFailed(f"personalized evaluation: {self._none_left()}")
            sizes = [0] * (max(clients) + 1)
            for c in clients:
                sizes[c] = len(positions[where[c]])
            plan = balance(clients, sizes, self.alive)
            refs = {self.actors[h].evaluate_personal.remote(
                        weights_ref, round_idx, cids, [positions[where[c]] for c in cids], held_out,
                        *personal_arguments(cids, states)): h
                    for h, cids in plan.items() if cids}
            try:
                found = {row[0]: row for part in ray.get(list(refs)) for row in part}
                return [found[c] for c in clients]
            except ray.exceptions.RayActorError:
                for ref, h in refs.items():  # find who died, then evaluate again on the rest
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayActorError:
                        self._lost(h)
        raise RoundFailed(f"personalized evaluation failed {MAX_ATTEMPTS} times: client hosts keep dying")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
