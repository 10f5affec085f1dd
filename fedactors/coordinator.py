"""The round loop: sample, dispatch, gather, retry, aggregate, evaluate, emit one event per round.

`Coordinator` is a plain object over a `HostPool`, so its logic runs in-process (`LocalPool`)
as well as on Ray (`RayPool` over ClientHost actors, driven from `CoordinatorActor`).
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fedactors import aggregate
from fedactors.attacks import byzantine_clients
from fedactors.checkpoint import Checkpoint, RedisStore
from fedactors.config import RunConfig, host_sums_apply
from fedactors.errors import RoundFailed
from fedactors.messages import EvalPart, Failure, HostSum, RoundStats, Update
from fedactors.privacy import divergence_hint
from fedactors.seeding import sample_clients
from fedactors.strategy import DPFedAvg, Scaffold, Strategy, checked_step, make_strategy

if TYPE_CHECKING:
    import ray.actor

    from fedactors.client import ClientHost

MAX_ATTEMPTS = 3  # per client and round: the first try plus two retries on other hosts


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

    def newly_lost(self) -> dict[int, str]:
        """Hosts gone for good since the last call (host -> why), for the round to report."""
        ...


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

    def _plan(self, client_ids: Sequence[int]) -> dict[int, list[int]] | str:
        """The alive hosts' shares of `client_ids`, or why there is no host to train them."""
        self._revive()
        if not self.alive:
            self._revive(wait_seconds=self.REVIVE_WAIT_SECONDS)
        if not self.alive:
            return self._none_left()
        return balance(client_ids, self.num_examples(), self.alive)

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
        """The calls' results as they finish (`pending`: ref -> (its clients, its host)); a call that fails
        is a Failure for each of its clients, and a host still busy when `timeout` runs out is killed."""
        ray = self._ray
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=remaining)
            if not done:  # out of time: every host still busy is a straggler
                for cids, host in pending.values():
                    yield from (Failure(client_id=cid, host=host, error=f"timed out after {timeout:g} s") for cid in cids)
                for host in sorted({h for _, h in pending.values()}):
                    ray.kill(self.actors[host], no_restart=False)
                    self._lost(host)
                return
            if len(pending) > 1:  # take every call finished by now, not one per wait over all m pending
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                cids, host = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    self._lost(host)
                    yield from (Failure(client_id=cid, host=host, error=f"host {host} died: {_first_line(exc)}")
                                for cid in cids)
                except ray.exceptions.RayTaskError as exc:
                    yield from (Failure(client_id=cid, host=host, error=_first_line(exc)) for cid in cids)

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


def uses_host_sums(config: RunConfig) -> bool:
    """Whether FedAvg's sum is made on the hosts (one partial sum per host a round, not one buffer per client).

    For --aggregator fedavg with a built-in strategy that needs only the average (FedAvg, FedProx and the
    server optimizers), unless --no-host-sums. Robust aggregators, SCAFFOLD (each client's control
    variate), DP-FedAvg (each update clipped) and strategies of your own (handed every update) get
    each client's weights. Either way FedAvg's bytes are the same: the sum is exact."""
    return config.host_sums and host_sums_apply(config.aggregator, config.strategy)


def client_spread(hits: np.ndarray, owners: np.ndarray, target: float) -> dict:
    """The distribution over clients of their own accuracy (each client's share of its examples classified right):
    mean, 10th/50th/90th percentiles, worst, the fraction at or above `target`, and how many clients."""
    counts = np.bincount(owners)
    right = np.bincount(owners, weights=hits.astype(np.float64), minlength=len(counts))
    accuracy = right[counts > 0] / counts[counts > 0]
    p10, p50, p90 = np.percentile(accuracy, [10, 50, 90])
    return {"clients": len(accuracy), "mean": float(accuracy.mean()), "p10": float(p10), "p50": float(p50),
            "p90": float(p90), "worst": float(accuracy.min()), "at_target": float((accuracy >= target).mean())}


class Coordinator:
    """Runs rounds start_round+1 .. config.rounds from `weights`, yielding an event per round.

    With a `store`, the state after every `config.checkpoint_every`-th round (and the last)
    is saved under `run_id` before that round's event is emitted: an event a caller has seen
    is never ahead of what a resume can recover. `history` is the metric rows so far.
    """

    def __init__(
        self,
        config: RunConfig,
        pool: HostPool,
        *,
        num_test: int = 10_000,
        start_round: int = 0,
        weights: np.ndarray | None = None,
        history: list[dict] | None = None,
        store: RedisStore | None = None,
        run_id: str | None = None,
        run_started_at: float | None = None,
        fingerprint: str = "",
        identity: dict | None = None,
        strategy: Strategy | None = None,
        strategy_state: tuple[dict, dict] | None = None,
        eval_owners: np.ndarray | None = None,
        held_out: bool = False,
        classes: bool = True,
    ) -> None:
        """`strategy`: a Strategy object (else config.strategy's); `strategy_state`: its (buffers, scalars) to resume.
        `eval_owners`: the client each example of the per-client evaluation belongs to: of the test set, or with
        `held_out` of the examples --eval-clients keeps out of training (None: no per-client evaluation)."""
        if store is not None and run_id is None:
            raise ValueError("a checkpoint store needs a run id")
        # Unix time the run would have started at had it never stopped: checkpoints record its wall time.
        self.run_started_at = time.time() if run_started_at is None else run_started_at
        self.config = config
        self.pool = pool
        self.num_test = num_test
        self.round = start_round
        self.weights = pool.initial_weights() if weights is None else weights
        self.history = list(history or [])
        self.store = store
        self.run_id = run_id
        self.fingerprint = fingerprint  # of the run: its settings, task and data (experiment.run)
        self.identity = identity or {}
        self.byzantine = byzantine_clients(config.seed, config.clients, config.byzantine)
        self.eval_owners = eval_owners
        self.held_out = held_out
        self.classes = classes  # False for a task of float targets ("values"): no accuracy, the loss and metrics
        self.strategy = strategy if strategy is not None else make_strategy(config)
        if strategy_state is not None:
            buffers, scalars = strategy_state  # writable copies: the checkpoint's arrays are read-only views
            self.strategy.load_state({name: np.array(b) for name, b in buffers.items()}, dict(scalars))

    def run(self) -> Iterator[dict]:
        """Yields {"type": "round", **RoundStats} per round, then {"type": "done", "weights": ...}.

        A {"type": "warning", "message": ...} may come before a round's event (the store lost data).
        """
        cfg = self.config
        while self.round < cfg.rounds:
            over = self._over_budget(self.round + 1)
            if over:  # only on resume: a run that ran into its budget stopped after the round before
                yield {"type": "budget", "round": self.round, "message": over}
                break
            # The run's last round: its configured last, or the last its privacy budget allows.
            budget_end = self._over_budget(self.round + 2)
            last = self.round + 1 == cfg.rounds or budget_end is not None
            stats = self.run_round(self.round + 1, last=last)
            self.round = stats.round
            if stats.loss is not None:  # evaluated
                self.history.append(stats.metrics_row())
            if self.store is not None and (self.round % cfg.checkpoint_every == 0 or last):
                t0 = time.perf_counter()
                warning = self.save_checkpoint()
                stats.checkpoint_seconds = time.perf_counter() - t0
                if warning:
                    yield {"type": "warning", "message": warning}
            yield {"type": "round", **vars(stats)}
            if budget_end is not None:
                yield {"type": "budget", "round": self.round, "message": budget_end}
                break
        yield {"type": "done", "round": self.round, "weights": self.weights}

    def _over_budget(self, round_idx: int) -> str | None:
        """Why round `round_idx` may not run (it would spend more than --target-epsilon), or None."""
        target = self.config.target_epsilon
        if target is None or not isinstance(self.strategy, DPFedAvg):
            return None
        spent = self.strategy.epsilon(round_idx)
        if spent <= target:
            return None
        return (f"stopped before round {round_idx}: it would bring epsilon to {spent:.3f} at delta "
                f"{self.config.delta:g}, over --target-epsilon {target:g}")

    def save_checkpoint(self) -> str | None:  # only called when self.store is set
        """Store the state after self.round; returns the store's warning, if any (RedisStore.save).

        Raises StoreUnavailable if the store stays down."""
        cfg = self.config
        buffers, scalars = self.strategy.state()
        ckpt = Checkpoint(
            run_id=self.run_id,
            round=self.round,
            weights=self.weights,
            fingerprint=self.fingerprint,
            config=cfg.to_dict(),
            history=self.history,
            extra={"wall_seconds": round(time.time() - self.run_started_at, 3), "identity": self.identity,
                   "strategy": scalars},
            state=buffers,
        )
        return self.store.save(ckpt, keep=cfg.keep)

    def run_round(self, round_idx: int, *, last: bool = False) -> RoundStats:
        """One round: every sampled client's update (retrying failures), aggregated, then evaluated.

        An update holding NaN or infinity is rejected, never aggregated, and not retried (the same
        seeds would give it again); the round goes on only if --min-fit-fraction allows the loss.
        """
        cfg = self.config
        t0 = time.perf_counter()
        if isinstance(self.strategy, DPFedAvg):  # Poisson sampling, keyed by its secret
            sampled = self.strategy.sample(round_idx)
            required = math.ceil(cfg.min_fit_fraction * len(sampled) - 1e-9)
        else:
            sampled = sample_clients(cfg.seed, round_idx, cfg.clients, cfg.clients_per_round).tolist()
            required = cfg.min_updates
        # FedAvg's exact sum (aggregate.ExactSum) takes each update as it arrives, in any order, or
        # each host's partial sum of its clients (host-side sums: linear built-in strategies only).
        num_examples = self.pool.num_examples()
        needs_aggregate = getattr(self.strategy, "needs_aggregate", True)
        exact = (aggregate.ExactSum(len(self.weights), sum(num_examples[c] for c in sampled))
                 if cfg.aggregator == "fedavg" and needs_aggregate and sampled else None)
        on_hosts = exact is not None and uses_host_sums(cfg)
        last_arrival = t0
        updates: dict[int, Update] = {}  # per-client mode: each client's update
        done: dict[int, tuple[int, int, float, float]] = {}  # client -> (host, examples, loss, train seconds)
        failures: list[Failure] = []
        retried: list[int] = []
        rejected: list[int] = []
        too_large: list[int] = []
        todo = sampled
        extras = None
        if isinstance(self.strategy, Scaffold):
            length = len(self.weights)
            extras = lambda cid: self.strategy.controls(cid, length)  # noqa: E731 - (c, c_i)

        def reject(cid: int, host: int, finite: bool) -> None:
            why = ("returned values too large for FedAvg's exact sum (|share x value| >= 2^18): rejected" if finite
                   else "returned NaN or infinite weights: rejected")
            failures.append(Failure(cid, host, why))
            (too_large if finite else rejected).append(cid)

        for _attempt in range(MAX_ATTEMPTS if sampled else 0):
            failed_now = []
            results = (self.pool.train_sums(self.weights, round_idx, todo, int(exact.total), timeout=cfg.round_timeout)
                       if on_hosts else
                       self.pool.train(self.weights, round_idx, todo, timeout=cfg.round_timeout, extras=extras))
            for result in results:
                if isinstance(result, Failure):
                    failures.append(result)
                    failed_now.append(result.client_id)
                elif isinstance(result, HostSum):
                    last_arrival = time.perf_counter()
                    exact.merge(result.acc, sum(result.num_examples))
                    for cid, n, loss, seconds in zip(result.clients, result.num_examples, result.train_losses,
                                                     result.train_seconds):
                        done[cid] = (result.host, n, loss, seconds)
                    for cids, finite in ((result.rejected, False), (result.out_of_range, True)):
                        for cid in cids:
                            reject(cid, result.host, finite)
                    for cid, error in result.failures:
                        failures.append(Failure(cid, result.host, error))
                        failed_now.append(cid)
                else:
                    summed = (exact.add(result.weights, num_examples[result.client_id]) if exact is not None
                              else aggregate.all_finite(result.weights))
                    if not summed:  # the exact sum refuses NaN and inf too: tell the two apart only then
                        reject(result.client_id, result.host, aggregate.all_finite(result.weights))
                        continue
                    last_arrival = time.perf_counter()
                    updates[result.client_id] = result
                    done[result.client_id] = (result.host, result.num_examples, result.train_loss, result.train_seconds)
            # Enough updates (all of them unless --min-fit-fraction allows fewer), or nothing to retry.
            if len(done) >= required or not failed_now:
                break
            retried.extend(failed_now)
            todo = failed_now
        wait_seconds = last_arrival - t0  # to the last update's arrival, before the result is made
        dropped = [c for c in sampled if c not in done]
        if len(done) < required:
            raise RoundFailed(self._shortfall(round_idx, sampled, dropped, failures, rejected, too_large, required))
        kept = [c for c in sampled if c in done]  # sampled order: same bytes whatever arrived first
        ordered = [updates[c] for c in kept if c in updates]
        if exact is not None and kept:
            combined = exact.result()
        elif not needs_aggregate or not ordered:
            combined = self.weights  # the strategy works from the updates (or nobody was sampled)
        else:
            try:
                combined = aggregate.combine(cfg.aggregator, [u.weights for u in ordered],
                                             [u.num_examples for u in ordered], trim_fraction=cfg.trim_fraction,
                                             krum_f=cfg.krum_f)
            except ValueError as exc:  # Krum left with too few updates (--min-fit-fraction)
                raise RoundFailed(f"round {round_idx}: {exc}") from None
        dp = self.strategy if isinstance(self.strategy, DPFedAvg) else None
        clip_used = dp.clip if dp is not None and dp.adaptive else None  # this round's, before the step moves it
        self.weights = checked_step(self.strategy, self.weights, combined, [u.weights for u in ordered],
                                    [u.num_examples for u in ordered], round_idx)
        if isinstance(self.strategy, Scaffold):
            self.strategy.accept({u.client_id: u.control for u in ordered})
        aggregate_seconds = time.perf_counter() - last_arrival  # what averaging adds once the last update is in
        per_host: dict[int, float] = {}
        for host, _, _, seconds in done.values():
            per_host[host] = per_host.get(host, 0.0) + seconds
        stats = RoundStats(
            round=round_idx,
            clients=sampled,
            num_updates=len(kept),
            round_seconds=0.0,
            train_seconds=max(per_host.values(), default=0.0),
            wait_seconds=wait_seconds,
            aggregate_seconds=aggregate_seconds,
            train_loss=(float(np.average([done[c][2] for c in kept], weights=[done[c][1] for c in kept]))
                        if kept else None),
            epsilon=dp.epsilon() if dp is not None else None,
            private=dp is not None,
            clip=clip_used,
            retried=retried,
            dropped=dropped,
            rejected=rejected + too_large,
            byzantine=[c for c in sampled if c in self.byzantine],
            hosts={c: done[c][0] for c in kept},
            failures=[f"client {f.client_id} on host {f.host}: {f.error}" for f in failures],
        )
        if round_idx % cfg.eval_every == 0 or round_idx == cfg.rounds or last:
            t2 = time.perf_counter()
            owners_test = self.eval_owners is not None and not self.held_out  # the test set's owners are clients
            parts = self.pool.evaluate(self.weights, self.num_test, hits=owners_test)
            count = sum(p.count for p in parts)
            if count == 0:
                raise RoundFailed(f"round {round_idx}: evaluation returned no test examples")
            stats.accuracy = sum(p.correct for p in parts) / count if self.classes else None
            stats.loss = sum(p.loss_sum for p in parts) / count
            stats.metrics = {name: sum(p.sums[name] for p in parts) / count for name in parts[0].sums}
            if self.eval_owners is not None:
                own = (self.pool.evaluate(self.weights, len(self.eval_owners), hits=True, held_out=True)
                       if self.held_out else parts)
                stats.client_accuracy = client_spread(np.concatenate([p.hits for p in own]), self.eval_owners,
                                                      cfg.target)
            stats.eval_seconds = time.perf_counter() - t2
        stats.lost_hosts = self.pool.newly_lost()
        stats.failures += [f"host {h} is lost for good: {why}" for h, why in sorted(stats.lost_hosts.items())]
        stats.round_seconds = time.perf_counter() - t0
        return stats

    def _shortfall(self, round_idx: int, sampled: list[int], dropped: list[int], failures: list[Failure],
                   rejected: list[int], too_large: list[int], required: int) -> str:
        """Why round `round_idx` cannot be aggregated without the `dropped` clients: the RoundFailed message."""
        cfg = self.config
        failed = [c for c in dropped if c not in rejected and c not in too_large]
        parts = [f"clients {failed} failed {MAX_ATTEMPTS} times"] if failed else []
        if rejected:
            parts.append(f"clients {sorted(rejected)} returned NaN or infinite weights, which are never aggregated")
        if too_large:
            parts.append(f"clients {sorted(too_large)} returned values too large for FedAvg's exact sum "
                         "(|share x value| >= 2^18)")
        errors = "; ".join(dict.fromkeys(f.error for f in failures if f.client_id in failed))
        message = (f"round {round_idx}: {' and '.join(parts)}, leaving {len(sampled) - len(dropped)} of {len(sampled)} "
                   f"updates where {required} are required")
        if failed:
            message += f" (errors: {errors})"
        if rejected and isinstance(self.strategy, DPFedAvg) and round_idx > 1:
            # Its clients trained from noised weights: fewer of them would not help, so no word of --min-fit-fraction.
            return message + divergence_hint(self.strategy.noise_to_clip(len(self.weights)))
        if (rejected or too_large) and cfg.min_fit_fraction == 1:
            message += "; --min-fit-fraction below 1 accepts rounds without them"
        return message


class CoordinatorActor:
    """The Ray actor around Coordinator; `run` is a generator, so events stream to the caller.

    It opens its own connection to the checkpoint store (`store_url`): a Redis client cannot
    travel between processes, a URL can.
    """

    def __init__(
        self,
        config: RunConfig,
        host_actors: list,
        data: list,
        num_test: int,
        *,
        run_id: str,
        store_retry_seconds: float = 30.0,
        start_round: int = 0,
        weights: np.ndarray | None = None,
        history: list[dict] | None = None,
        run_started_at: float | None = None,
        strategy: Strategy | None = None,
        strategy_state: tuple[dict, dict] | None = None,
        eval_owners: np.ndarray | None = None,
        held_out: bool = False,
        classes: bool = True,
    ) -> None:
        self.store_retry_seconds = store_retry_seconds
        self.coordinator = Coordinator(
            config, RayPool(host_actors, data), num_test=num_test, start_round=start_round,
            weights=weights, history=history, run_id=run_id, run_started_at=run_started_at,
            strategy=strategy, strategy_state=strategy_state, eval_owners=eval_owners, held_out=held_out,
            classes=classes,
        )

    def run(self, store_url: str | None = None, fingerprint: str = "", identity: dict | None = None) -> Iterator[dict]:
        """The rounds' events; checkpoints go to `store_url` (a call argument, never a constructor's), marked
        with the run's `fingerprint` and `identity` (known once the data is loaded and the hosts are up)."""
        try:
            if store_url:
                self.coordinator.store = RedisStore(store_url, retry_seconds=self.store_retry_seconds)
            self.coordinator.fingerprint, self.coordinator.identity = fingerprint, identity or {}
            yield from self.coordinator.run()
        except Exception as exc:
            # Ray would wrap the error in a RayTaskError carrying a remote traceback; the caller
            # wants the error itself, so send it as an event.
            yield {"type": "error", "error": exc, "traceback": traceback.format_exc()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
