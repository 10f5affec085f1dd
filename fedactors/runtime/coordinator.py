"""The round loop: sample, collect (fedactors.runtime.collect: dispatch, retry, refuse, accept), aggregate, evaluate, emit
one event per round.

`Coordinator` is a plain object over a `HostPool`, so its logic runs in-process (`LocalPool`)
as well as on Ray (`RayPool` over ClientHost actors, driven from `CoordinatorActor`).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator

import numpy as np

from fedactors import aggregate
from fedactors.attacks import byzantine_clients
from fedactors.store.checkpoint import STATE_LAYOUT, Checkpoint, RedisStore
from fedactors.runtime.collect import MAX_ATTEMPTS, Collection, Refused
from fedactors.compress import old_residuals, parse as parse_compressor
from fedactors.runtime.states import ALGORITHM, DOWNLINK, HOST_STAGES, RESIDUAL, ClientStates, updated
from fedactors.runtime.asynchronous import Schedule
from fedactors.config import RunConfig, host_sums_apply
from fedactors.errors import ConfigError, RoundFailed
from fedactors.messages import Failure, RoundStats, Update
from fedactors.runtime.pool import HostPool, LocalPool, RayPool, balance, eval_slices
from fedactors.privacy import divergence_hint
from fedactors.runtime.samplers import Buffered, Clock, Poisson, Uniform
from fedactors.secagg.stage import SecureRound, planned_neighbours
from fedactors.runtime.systems import Systems, Trace, parse_speed
from fedactors.seeding import Purpose, holdout_clients
from fedactors.algorithms import bind, builtin, make_algorithm, server_step
from fedactors.traffic import Totals, per_client, secure_per_client

# The pool's names stay importable from here, where they lived before fedactors.runtime.pool.
__all__ = ["Coordinator", "CoordinatorActor", "HostPool", "LocalPool", "MAX_ATTEMPTS", "RayPool", "balance",
           "client_spread", "eval_slices", "uses_host_sums"]


def uses_host_sums(config: RunConfig) -> bool:
    """Whether FedAvg's sum is made on the hosts (one partial sum per host a round, not one buffer per client).

    For --aggregator fedavg with a built-in strategy that needs only the average (FedAvg, FedProx and the
    server optimizers), unless --no-host-sums. Robust aggregators, SCAFFOLD (each client's control
    variate), DP-FedAvg (each update clipped) and strategies of your own (handed every update) get
    each client's weights. Either way FedAvg's bytes are the same: the sum is exact."""
    return (config.host_sums and host_sums_apply(config.aggregator, config.strategy, config.compress, config.dp)
            and config.compress_down is None)  # each client starts from the model it decoded, not one for all


def client_spread(hits: np.ndarray, owners: np.ndarray, target: float) -> dict:
    """The distribution over clients of their own accuracy (each client's share of its examples classified right):
    mean, 10th/50th/90th percentiles, worst, the fraction at or above `target`, and how many clients."""
    counts = np.bincount(owners)
    right = np.bincount(owners, weights=hits.astype(np.float64), minlength=len(counts))
    accuracy = right[counts > 0] / counts[counts > 0]
    p10, p50, p90 = np.percentile(accuracy, [10, 50, 90])
    return {"clients": len(accuracy), "mean": float(accuracy.mean()), "p10": float(p10), "p50": float(p50),
            "p90": float(p90), "worst": float(accuracy.min()), "at_target": float((accuracy >= target).mean())}


def personal_spread(global_right: np.ndarray, personal_right: np.ndarray, counts: np.ndarray) -> dict:
    """Each client's personalized model against the global one on its own split (per-client right and example
    counts): the example-weighted and the plain mean, p10, p50 and worst of the personalized accuracies, the
    global model's weighted and plain mean beside them, and the share of clients personalization hurt (below the
    global model on their own split: Wu et al. 2022's Motley)."""
    personal, global_ = personal_right / counts, global_right / counts
    p10, p50 = np.percentile(personal, [10, 50])
    return {"clients": len(counts), "weighted": float(personal_right.sum() / counts.sum()),
            "mean": float(personal.mean()), "p10": float(p10), "p50": float(p50), "worst": float(personal.min()),
            "global_weighted": float(global_right.sum() / counts.sum()), "global_mean": float(global_.mean()),
            "hurt": float((personal < global_).mean())}


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
        strategy: object | None = None,
        strategy_state: tuple | None = None,
        eval_owners: np.ndarray | None = None,
        held_out: bool = False,
        classes: bool = True,
        traffic: Totals | None = None,
        trace: Trace | None = None,
        clock: dict | None = None,
        clients: dict | None = None,
    ) -> None:
        """`strategy`: the algorithm object (else config.strategy's: fedactors.algorithms); `strategy_state`: a checkpoint's state to resume,
        (the strategy's buffers, its scalars, the framework's buffers) as Checkpoint.strategy_state gives it.
        `eval_owners`: the client each example of the per-client evaluation belongs to: of the test set, or with
        `held_out` of the examples --eval-clients keeps out of training (None: no per-client evaluation).
        `traffic`: the bytes communicated before `start_round` (a resumed run's; fedactors.traffic).
        `trace`: --client-trace's rows (read where the file is); `clock`: a resumed run's virtual clock (its
        checkpoint's extra["clock"]): the time, and for fedbuff or fedasync the schedule of clients in flight.
        `clients`: a resumed run's manifest of its clients' state (its checkpoint's extra["clients"]), read from
        `store` as the clients train (fedactors.runtime.states)."""
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
        self.traffic = traffic if traffic is not None else Totals(since_round=start_round)
        self.strategy = strategy if strategy is not None else make_algorithm(config)
        bind(self.strategy, config)  # the run's settings, for an algorithm that reads them (Algorithm.bind)
        spec = builtin(config.strategy)
        self.asynchronous = spec is not None and spec.asynchronous  # fedbuff, fedasync: run_async, no rounds
        # Differentially private (DP-FedAvg, or a user's subclass of it): Poisson sampling, an epsilon to report.
        self.private = callable(getattr(self.strategy, "epsilon", None)) and callable(getattr(self.strategy, "sample", None))
        compressor = parse_compressor(config.compress)
        # --compress topk or sign: each client's error-feedback residual is its state "feedback/residual".
        self.feedback = compressor is not None and compressor.feedback
        # Each client's own state (the algorithm's Reply.keep, the residual), in the store (fedactors.runtime.states).
        self.states = ClientStates.of_checkpoint({"clients": clients} if clients else {})
        self.versions: dict[int, np.ndarray] = {}  # fedbuff, fedasync: older weights that clients in flight train from
        if strategy_state is not None:
            # (buffers, scalars[, the framework's buffers]): Checkpoint.strategy_state. Without the third (a
            # checkpoint written before STATE_LAYOUT), the framework's are told from the strategy's by name.
            buffers, scalars, own = (*strategy_state, None)[:3]
            if own is None:
                own, buffers = self._framework_buffers_by_old_names(buffers)
            # A checkpoint written before per-client state holds residuals ("residual<k>") and an algorithm's
            # per-client buffers (SCAFFOLD's "c<k>") among its own: they become the clients' state, written out
            # whole by the next checkpoint. Copies: the checkpoint's arrays are read-only views.
            residuals, own = old_residuals(own)
            move = getattr(self.strategy, "client_state_from", None)
            buffers, theirs = move(dict(buffers)) if move is not None else (buffers, {})
            for cid, kept in theirs.items():
                self.states.put(cid, {ALGORITHM + n: np.array(b) for n, b in kept.items()})
            if self.feedback:
                for cid, residual in residuals.items():
                    self.states.put(cid, {**self.states.changed.get(cid, {}), RESIDUAL: residual})
            self.versions = {int(name[len("version"):]): np.array(b) for name, b in own.items()
                             if name.startswith("version")}
            self.strategy.load_state({name: np.array(b) for name, b in buffers.items()}, dict(scalars))
        # The virtual clock (fedactors.runtime.systems), only when a systems setting or an asynchronous strategy asks for it.
        self.systems = (Systems(config.clients, config.seed, parse_speed(config.client_speed), trace)
                        if config.simulates_systems else None)
        self.now = float((clock or {}).get("now", 0.0))
        self.clock = clock
        self.schedule: Schedule | None = None  # fedbuff, fedasync: made by run(), once the hosts hold their data
        self._work: np.ndarray | None = None  # on the clock: each client's examples processed in a round (work())
        self.secure: SecureRound | None = None  # the last round's secure aggregation: who dropped, when, its seconds
        self._sampler: Uniform | Poisson | Clock | Buffered | None = None  # sampler(): made once the loop is known
        self._round0: np.ndarray | None = None  # --compress-down: the model a client never sent one has
        # Personalized evaluation (--finetune-steps, an algorithm's personalize()): each client's own model judged on
        # its own split beside the global one; it needs per-client splits (--client-test-fraction, owners' tests).
        self.personalizes = callable(getattr(self.strategy, "personalize", None)) or config.finetune_steps > 0
        # --holdout-clients: the clients that never train, judged beside the others (the participation gap).
        self.unseen = (holdout_clients(config.seed, config.clients, config.holdout_clients)
                       if config.holdout_clients is not None else None)
        if self.unseen is not None and eval_owners is None:
            raise ConfigError(f"--holdout-clients {config.holdout_clients:g} keeps clients out of training to judge "
                              "them on their own splits, and no client has one: add --client-test-fraction F")
        if self.personalizes and eval_owners is None:
            why = (f"--finetune-steps {config.finetune_steps}" if config.finetune_steps
                   else f"--strategy {config.strategy} personalizes its clients' models")
            raise ConfigError(f"{why}, but no client has a test split of its own to judge them on: add "
                              "--client-test-fraction F (or use data with owners' test sets)")

    def run(self) -> Iterator[dict]:
        """Yields {"type": "round", **RoundStats} per round, then {"type": "done", "weights": ...}.

        A {"type": "warning", "message": ...} may come before a round's event (the store lost data).
        """
        cfg = self.config
        self.states.bind(self.store, self.run_id)
        if self.systems is not None and cfg.deadline is not None:
            self._check_deadline()
        if self.asynchronous and self.schedule is None:
            down, up = per_client(cfg.strategy, len(self.weights), cfg.compress, cfg.compress_down)
            self.schedule = Schedule(seed=cfg.seed, concurrency=cfg.concurrency_value, buffer=cfg.buffer_value,
                                     systems=self.systems, work=self.work(), bytes_down=down, bytes_up=up,
                                     state=self.clock if self.clock and "flights" in self.clock else None)
        while self.round < cfg.rounds:
            over = self._over_budget(self.round + 1)
            if over:  # only on resume: a run that ran into its budget stopped after the round before
                yield {"type": "budget", "round": self.round, "message": over}
                break
            # The run's last round: its configured last, or the last its privacy budget allows.
            budget_end = self._over_budget(self.round + 2)
            last = self.round + 1 == cfg.rounds or budget_end is not None
            stats = (self.run_async(self.round + 1, last=last) if self.schedule is not None
                     else self.run_round(self.round + 1, last=last))
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

    def _framework_buffers_by_old_names(self, buffers: dict) -> tuple[dict, dict]:
        """(the framework's buffers, the strategy's) of a checkpoint written before STATE_LAYOUT: as it was
        written, residual<k> with error feedback and version<v> for fedbuff or fedasync; any other name (a user's
        "residual_norm", or "version3" where there are no versions) is the strategy's."""
        def own(name: str) -> bool:
            for prefix, used in (("residual", self.feedback),
                                 ("version", self.asynchronous)):
                if used and name.startswith(prefix) and name[len(prefix):].isdigit():
                    return True
            return False

        return ({n: b for n, b in buffers.items() if own(n)}, {n: b for n, b in buffers.items() if not own(n)})

    def _over_budget(self, round_idx: int) -> str | None:
        """Why round `round_idx` may not run (it would spend more than --target-epsilon), or None."""
        target = self.config.target_epsilon
        if target is None or not self.private:
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
        buffers = {
            **{f"algorithm/{name}": b for name, b in buffers.items()},
            **{f"async/version{v}": w for v, w in self.versions.items()},
        }
        clients, manifest = self.states.checkpoint(self.round)
        clock = {}
        if self.systems is not None:
            clock = {"clock": self.schedule.state() if self.schedule is not None else {"now": self.now}}
        ckpt = Checkpoint(
            run_id=self.run_id,
            round=self.round,
            weights=self.weights,
            fingerprint=self.fingerprint,
            config=cfg.to_dict(),
            history=self.history,
            extra={"wall_seconds": round(time.time() - self.run_started_at, 3), "identity": self.identity,
                   "strategy": scalars, "bytes": self.traffic.to_dict(), "state_layout": STATE_LAYOUT, **clock,
                   **({"clients": manifest} if manifest else {})},
            state=buffers,
        )
        warning = self.store.save(ckpt, keep=cfg.keep, **({"clients": clients} if clients else {}))
        self.states.saved(self.round)
        return warning

    def run_round(self, round_idx: int, *, last: bool = False) -> RoundStats:
        """One round: every sampled client's update (retrying failures), aggregated, then evaluated.

        Collected as fedactors.runtime.collect says, as an asynchronous update is: an update holding NaN or infinity, or
        a value FedAvg's exact sum cannot hold, is rejected, never aggregated, and not retried (the same seeds
        would give it again); the round goes on only if --min-fit-fraction allows the loss.
        """
        cfg = self.config
        t0 = time.perf_counter()
        draw = self.sampler().draw(round_idx, self.now)  # uniform, Poisson (DP) or on the clock: fedactors.runtime.samplers
        sampled, todo, required, plan = draw.clients, draw.jobs, draw.required, draw.plan
        # FedAvg's exact sum (aggregate.ExactSum) takes each update as it arrives, in any order, or
        # each host's partial sum of its clients (host-side sums: linear built-in strategies only).
        num_examples = self.pool.num_examples()
        needs_aggregate = getattr(self.strategy, "needs_aggregate", True)
        exact = (aggregate.ExactSum(len(self.weights), sum(num_examples[c] for c in todo))
                 if cfg.aggregator == "fedavg" and needs_aggregate and todo else None)
        # Secure aggregation (fedactors.secagg.stage): the sampled clients' key exchange, before any trains; their
        # hosts then send masked updates, of which the server can unmask only the round's sum.
        secure = (SecureRound.start(cfg, round_idx, sampled, len(self.weights), exact.total)
                  if exact is not None and cfg.secure_aggregation else None)
        on_hosts = exact is not None and uses_host_sums(cfg) and secure is None
        configure = getattr(self.strategy, "configure", None)  # the algorithm's server half: what each client is sent
        # The clients' own state, read once for the round (with --compress-down every sampled client's: each was
        # sent the model, the late ones too).
        before = self.states.get(sampled if cfg.compress_down else todo) if not on_hosts else {}
        extras = (self._extras(round_idx, configure, before)
                  if configure is not None or any(n.startswith(HOST_STAGES) for s in before.values() for n in s) else None)
        starts = self._downlink(round_idx, sampled, before) if cfg.compress_down else None
        if secure is not None:  # each client's host gets its MaskJob besides the rest
            extras = secure.arguments(extras)

        def dispatch(todo: list[int]) -> Iterator[tuple[int, object]]:
            """Each client's outcome: its Update, or under host sums (host, examples, loss, seconds) once its host's
            partial sum is merged; a Failure; a Refused the host decided."""
            if starts is not None:  # --compress-down: each client trains from the model it decoded
                jobs = [(starts[c], round_idx, c) for c in todo]
                more = [extras(c) for c in todo] if extras is not None else None
                for result in self.pool.train_jobs(jobs, timeout=cfg.round_timeout, extras=more):
                    yield result.client_id, result
                return
            if not on_hosts:
                for result in self.pool.train(self.weights, round_idx, todo, timeout=cfg.round_timeout, extras=extras):
                    yield result.client_id, result
                return
            for result in self.pool.train_sums(self.weights, round_idx, todo, int(exact.total),
                                               timeout=cfg.round_timeout):
                if isinstance(result, Failure):
                    yield result.client_id, result
                    continue
                exact.merge(result.acc, sum(result.num_examples))
                for cid, n, loss, seconds in zip(result.clients, result.num_examples, result.train_losses,
                                                 result.train_seconds):
                    yield cid, (result.host, n, loss, seconds)
                for cids, finite in ((result.rejected, False), (result.out_of_range, True)):
                    for cid in cids:
                        yield cid, Refused(result.host, finite)
                for cid, error in result.failures:
                    yield cid, Failure(cid, result.host, error)

        def admit(cid: int, result: object) -> Refused | None:
            """Into the exact sum as it arrives (which refuses NaN and inf too: tell the two apart only then)."""
            if on_hosts:
                return None  # the host summed it, or said why not
            summed = (secure.add(cid, result.weights, num_examples[cid]) if secure is not None
                      else exact.add(result.weights, num_examples[cid]) if exact is not None
                      else aggregate.all_finite(result.weights))
            return None if summed else Refused(result.host, aggregate.all_finite(result.weights))

        in_plan = set(todo)
        collection = Collection([c for c in sampled if c in in_plan], required).collect(dispatch, admit)
        last_arrival = collection.last_arrival or t0
        wait_seconds = last_arrival - t0  # to the last update's arrival, before the result is made
        private = self.private
        collection.accept(round_idx, of=len(sampled), min_fit_fraction=cfg.min_fit_fraction, private=private,
                          divergence=(lambda: divergence_hint(self.strategy.noise_to_clip(len(self.weights))))
                          if private and round_idx > 1 else None)
        updates = {c: u for c, u in collection.results.items() if isinstance(u, Update)}
        done = {c: (u.host, u.num_examples, u.train_loss, u.train_seconds) if isinstance(u, Update) else u
                for c, u in collection.results.items()}  # client -> (host, examples, loss, train seconds)
        kept = collection.usable  # sampled order: same bytes whatever arrived first
        ordered = [updates[c] for c in kept if c in updates] if secure is None else []  # masked: only the sum is read
        if secure is not None and kept:
            # Unmasked from the shares of the clients that still answer: on the clock, those online when the round
            # closes (one whose window closed after it sent its masked update is dropped after masking).
            exact = secure.finish((lambda c: self.systems.online_until(c, self.now) > self.now + plan.seconds)
                                  if plan is not None else None)
        self.secure = secure
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
        dp = self.strategy if private else None
        clip_used = dp.clip if dp is not None and dp.adaptive else None  # this round's, before the step moves it
        if kept or self.systems is None:  # on the virtual clock, a round nobody finished in time leaves the model
            self.weights = server_step(self.strategy, self.weights, combined, ordered, round_idx)
        after: dict[int, dict[str, np.ndarray]] = {}
        for u in ordered:  # the accepted clients' state from now on (the others keep theirs)
            if u.kept_stages:
                after[u.client_id] = updated(before.get(u.client_id, {}), u.kept, u.kept_stages)
        for c in starts or ():  # every sampled client holds the model it was sent, whatever became of its update
            after[c] = updated(after.get(c, before.get(c, {})), {DOWNLINK: starts[c]}, (DOWNLINK,))
        for c, state in after.items():
            self.states.put(c, state)
        aggregate_seconds = time.perf_counter() - last_arrival  # what averaging adds once the last update is in
        per_host: dict[int, float] = {}
        for host, _, _, seconds in done.values():
            per_host[host] = per_host.get(host, 0.0) + seconds
        down, up = per_client(cfg.strategy, len(self.weights), cfg.compress, cfg.compress_down)
        stats = RoundStats(
            round=round_idx,
            secure=secure.report() if secure is not None and kept else None,
            clients=sampled,
            **self._count_bytes(*(secure.traffic(down * len(sampled)) if secure is not None
                                  else (down * len(sampled), up * collection.uploads))),
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
            retried=collection.retried,
            dropped=collection.dropped,
            rejected=collection.rejected,
            byzantine=[c for c in sampled if c in self.byzantine],
            hosts={c: done[c][0] for c in kept},
            failures=[f"client {f.client_id} on host {f.host}: {f.error}" for f in collection.failures],
        )
        if self.systems is not None:
            self.now += plan.seconds
            stats.virtual_seconds, stats.available, stats.late, stats.offline = (self.now, plan.available, plan.late,
                                                                                  plan.offline)
        self._evaluate(stats, round_idx, last)
        stats.round_seconds = time.perf_counter() - t0
        return stats

    def sampler(self) -> Uniform | Poisson | Clock | Buffered:
        """Who each round trains (fedactors.runtime.samplers): the asynchronous schedule's buffers, Poisson sampling for a
        private algorithm, the virtual clock's plan, or the paper's uniform m; made once, when first asked for."""
        if self._sampler is None:
            cfg = self.config
            if self.schedule is not None:
                self._sampler = Buffered(self.schedule, cfg.min_fit_fraction)
            elif self.private:  # keyed by the algorithm's secret
                self._sampler = Poisson(self.strategy.sample, cfg.min_fit_fraction)
            elif self.systems is not None:
                down, up = per_client(cfg.strategy, len(self.weights), cfg.compress, cfg.compress_down)
                down, up = secure_per_client(down, up, len(self.weights), planned_neighbours(cfg))
                self._sampler = Clock(self.systems, cfg.seed, cfg.clients_per_round, cfg.over_select or 0.0,
                                      cfg.deadline, self.work(), down, up, cfg.min_fit_fraction)
            else:
                pool = (None if self.unseen is None
                        else np.setdiff1d(np.arange(cfg.clients), self.unseen))  # --holdout-clients never train
                self._sampler = Uniform(cfg.seed, cfg.clients, cfg.clients_per_round, cfg.min_updates, pool)
        return self._sampler

    def _check_deadline(self) -> None:
        """A --deadline no client can meet is a failure of the run's first round, not rounds that never train."""
        cfg = self.config
        down, up = per_client(cfg.strategy, len(self.weights), cfg.compress, cfg.compress_down)
        down, up = secure_per_client(down, up, len(self.weights), planned_neighbours(cfg))
        fastest = float(self.systems.durations(self.work(), down, up).min())
        if fastest > cfg.deadline:
            raise RoundFailed(f"round {self.round + 1}: --deadline {cfg.deadline:g} virtual s is shorter than any "
                              f"client's round: the fastest takes {fastest:.3g} s (--dry-run shows the spread)")

    def work(self) -> np.ndarray:
        """Each client's examples processed in one local training (epochs x its examples), for the virtual clock."""
        if self._work is None:
            self._work = np.asarray(self.pool.num_examples(), dtype=np.int64) * self.config.epochs
        return self._work

    def _weights_at(self, version: int) -> np.ndarray:
        """fedbuff, fedasync: the weights of `version`, the current or one a client in flight started from."""
        return self.weights if version == self.schedule.version else self.versions[version]

    def run_async(self, round_idx: int, *, last: bool = False) -> RoundStats:
        """fedbuff or fedasync: the clock runs to the next `--buffer` arrivals (fedactors.runtime.asynchronous.Schedule), each
        is trained from the weights of its start version, and the server applies their update: version round_idx.

        Collected as a synchronous round is (fedactors.runtime.collect: the same retries, refusals, acceptance and counts):
        an update holding NaN or infinity, or one whose staleness-weighted value FedAvg's exact sum cannot hold, is
        left out of the buffer, which goes on with the others if --min-fit-fraction of the buffer allows."""
        cfg, schedule = self.config, self.schedule
        t0 = time.perf_counter()
        draw = self.sampler().draw(round_idx)  # the schedule's next --buffer arrivals (fedactors.runtime.samplers.Buffered)
        arrivals, lost, freed, required = draw.arrivals, draw.lost, draw.freed, draw.required
        by_key = {(a.client, a.batch): a for a in arrivals}  # (client, start batch): a fast client may arrive twice
        taus = {key: schedule.staleness(a) for key, a in by_key.items()}  # before this update moves the version

        before = self.states.get(sorted({a.client for a in arrivals}))  # the arrivals' own state, read once
        latest: dict[int, dict[str, np.ndarray]] = {}  # a client's state as its next job in this buffer starts

        def dispatch(todo: list[tuple[int, int]]) -> Iterator[tuple[tuple[int, int], object]]:
            """The jobs in waves: a client's second job in this buffer started after its first arrived, so it trains
            from the state the first left (its error-feedback residual, its algorithm's state); without state, one
            wave holds every job."""
            waves: list[list[tuple[int, int]]] = []
            seen: dict[int, int] = {}
            chained = self.feedback
            for key in sorted(todo, key=lambda k: (k[0], k[1])):  # a client's jobs in the order they started
                wave = seen.get(key[0], 0) if chained else 0
                seen[key[0]] = wave + 1
                waves.extend([] for _ in range(wave + 1 - len(waves)))
                waves[wave].append(key)
            blocked: set[int] = set()  # clients whose earlier job failed this try: their later ones wait for its retry
            for wave in waves:
                ready = [key for key in todo if key in set(wave) and key[0] not in blocked]  # the round's order
                for key in wave:
                    if key[0] in blocked:
                        yield key, Failure(key[0], -1, "not trained: its earlier update in this buffer failed and is "
                                                       "retried first (error feedback chains them)", round=key[1])
                jobs = [(self._weights_at(by_key[key].version), key[1], key[0]) for key in ready]
                extras = None
                if any(latest.get(c, before[c]) for _, _, c in jobs):
                    extras = [state_arguments(latest.get(c, before[c])) for _, _, c in jobs]
                for result in self.pool.train_jobs(jobs, timeout=cfg.round_timeout, extras=extras):
                    if isinstance(result, Failure):
                        blocked.add(result.client_id)
                    elif result.kept_stages and aggregate.all_finite(result.weights):
                        c = result.client_id  # its next job starts from the state it left
                        latest[c] = updated(latest.get(c, before[c]), result.kept, result.kept_stages)
                    yield (result.client_id, result.round), result

        collection = Collection(draw.jobs, required, client=lambda key: key[0]).collect(dispatch)
        last_arrival = collection.last_arrival or t0

        def accept() -> tuple[list, list[Update]]:
            """The arrivals' keys with a usable update, in virtual arrival order, and their updates."""
            collection.accept(round_idx, of=len(arrivals), min_fit_fraction=cfg.min_fit_fraction)
            return collection.usable, [collection.results[key] for key in collection.usable]

        kept, got = accept()
        old = self.weights
        new = None
        if kept:  # the algorithm's server update (fedactors.algorithms.fedbuff), arrivals in virtual arrival order
            new, left_out = self.strategy.server_update(
                old, [(u.weights, u.num_examples, taus[key], self._weights_at(by_key[key].version))
                      for key, u in zip(kept, got)], round_idx)
            for i in left_out:  # too large for the exact sum once weighted by its staleness
                collection.refuse(kept[i], Refused(got[i].host, finite=True))
            if left_out:
                kept, got = accept()
        if new is None:  # nobody arrived usable, or every arrival was left out and --min-fit-fraction allows it
            new = old
        if not aggregate.all_finite(new):
            raise RoundFailed(f"round {round_idx}: the server update holds NaN or infinity")
        kept_state: dict[int, dict[str, np.ndarray]] = {}  # the kept updates' state, a client's last in arrival order
        for key, u in zip(kept, got):
            if u.kept_stages:
                kept_state[key[0]] = updated(kept_state.get(key[0], before[key[0]]), u.kept, u.kept_stages)
        for c, state in kept_state.items():
            self.states.put(c, state)
        self.versions[schedule.version] = old
        self.weights = new
        schedule.applied(freed)
        needed = schedule.needed_versions() - {schedule.version}  # once: it walks every client in flight
        self.versions = {v: w for v, w in self.versions.items() if v in needed}
        aggregate_seconds = time.perf_counter() - last_arrival
        per_host: dict[int, float] = {}  # as a synchronous round reports it: the busiest host's training
        for u in got:
            per_host[u.host] = per_host.get(u.host, 0.0) + u.train_seconds
        kept_taus = [taus[key] for key in kept]
        down, up = per_client(cfg.strategy, len(self.weights), cfg.compress, cfg.compress_down)
        stats = RoundStats(
            round=round_idx,
            clients=[a.client for a in arrivals],
            **self._count_bytes(down * (len(arrivals) + len(lost)), up * collection.uploads),
            num_updates=len(kept),
            round_seconds=0.0,
            train_seconds=max(per_host.values(), default=0.0),
            wait_seconds=last_arrival - t0,
            aggregate_seconds=aggregate_seconds,
            train_loss=(float(np.average([u.train_loss for u in got], weights=[u.num_examples for u in got]))
                        if kept else None),
            retried=[c for c, _ in collection.retried],
            dropped=[c for c, _ in collection.dropped],
            rejected=[c for c, _ in collection.rejected],
            byzantine=[a.client for a in arrivals if a.client in self.byzantine],
            hosts={key[0]: u.host for key, u in zip(kept, got)},
            failures=[f"client {f.client_id} on host {f.host}: {f.error}" for f in collection.failures],
            virtual_seconds=schedule.now,
            offline=[f.client for f in lost],
            staleness={"mean": float(np.mean(kept_taus)) if kept_taus else 0.0, "max": max(kept_taus, default=0),
                       "counts": {str(t): kept_taus.count(t) for t in sorted(set(kept_taus))}},
        )
        self._evaluate(stats, round_idx, last)
        stats.round_seconds = time.perf_counter() - t0
        return stats

    def _count_bytes(self, down: int, up: int) -> dict:
        """Add a round's bytes to the run's totals; RoundStats' byte fields."""
        self.traffic.add(down, up)
        return {"bytes_down": down, "bytes_up": up, "bytes_down_total": self.traffic.down,
                "bytes_up_total": self.traffic.up, "bytes_since_round": self.traffic.since_round}

    def _evaluate(self, stats: RoundStats, round_idx: int, last: bool) -> None:
        """Evaluate the model after `round_idx` into `stats` if this round is evaluated; note the hosts lost."""
        cfg = self.config
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
                hits = np.concatenate([p.hits for p in own])
                stats.client_accuracy = client_spread(hits, self.eval_owners, cfg.target)
                self._per_client(stats, round_idx, hits)
            stats.eval_seconds = time.perf_counter() - t2
        stats.lost_hosts = self.pool.newly_lost()
        stats.failures += [f"host {h} is lost for good: {why}" for h, why in sorted(stats.lost_hosts.items())]

    def _downlink(self, round_idx: int, clients: list[int], states: dict) -> dict[int, np.ndarray]:
        """--compress-down: the model each of `clients` decodes this round, the global weights sent as a quantized
        delta from the model it last received (its state DOWNLINK; the round-0 model, which every party can make
        from the seed, for a client sent none yet). Its rounding draws are keyed by (seed, round, client)."""
        cfg = self.config
        down = parse_compressor(cfg.compress_down)
        made = {}
        for c in clients:
            reference = states.get(c, {}).get(DOWNLINK)
            if reference is None:
                if self._round0 is None:
                    self._round0 = self.pool.initial_weights()
                reference = self._round0
            delta = np.subtract(self.weights, reference, dtype=np.float32)
            encoded = down.encode(delta, cfg.seed, round_idx, c, purpose=Purpose.QUANTIZE_DOWN)
            made[c] = np.add(reference, down.decode(encoded, len(delta), cfg.seed, round_idx), dtype=np.float32)
        return made

    def _per_client(self, stats: RoundStats, round_idx: int, hits: np.ndarray) -> None:
        """Each evaluated client's accuracy on its own split (stats.clients_table, for clients.jsonl), and with
        personalization its personalized model's beside the global one (stats.personal_accuracy)."""
        owners = self.eval_owners
        counts = np.bincount(owners)
        clients = np.flatnonzero(counts)
        right = np.bincount(owners, weights=hits.astype(np.float64), minlength=len(counts))[clients]
        table = {"round": round_idx, "clients": clients.tolist(), "examples": counts[clients].tolist(),
                 "global": (right / counts[clients]).tolist()}
        seen = np.ones(len(clients), dtype=bool)
        if self.unseen is not None:
            seen = ~np.isin(clients, self.unseen)
            table["unseen"] = clients[~seen].tolist()
        if self.personalizes:
            order = np.argsort(owners, kind="stable")
            positions = np.split(order, np.cumsum(counts)[:-1])
            states = self.states.get(clients[seen].tolist())  # a client that never trained has none
            rows = self.pool.evaluate_personal(self.weights, round_idx, clients.tolist(),
                                               [positions[c] for c in clients], self.held_out, states)
            mine = np.array([r[1] for r in rows], dtype=np.float64)
            table["personal"] = (mine / counts[clients]).tolist()
        else:
            mine = right
        n = counts[clients].astype(np.float64)
        if seen.any() and (self.personalizes or self.unseen is not None):
            stats.personal_accuracy = personal_spread(right[seen], mine[seen], n[seen])
        if self.unseen is not None and (~seen).any():  # the participation gap, global and personalized
            unseen = personal_spread(right[~seen], mine[~seen], n[~seen])
            stats.personal_accuracy = {**(stats.personal_accuracy or {}), "unseen": unseen}
        stats.clients_table = table

    def _extras(self, round_idx: int, configure, states: dict[int, dict[str, np.ndarray]]) -> callable:
        """client -> what ClientHost.train takes besides the weights: the names, then the arrays, of what the
        algorithm's configure() sends it and of its own state (`states`, read for the round)."""
        def extras(client_id: int) -> tuple:
            sent = configure(client_id, round_idx, self.weights) if configure is not None else {}
            return state_arguments(states.get(client_id, {}), sent)

        return extras


def state_arguments(state: dict[str, np.ndarray], sent: dict[str, np.ndarray] | None = None) -> tuple:
    """ClientHost.train's arguments after (weights, client, round): ((kind, name), ...), then the arrays. Only the
    stages a host uses travel (HOST_STAGES: not the server's record of what it sent the client)."""
    named = [(("sent", n), a) for n, a in (sent or {}).items()] + [(("state", n), a) for n, a in state.items()
                                                                   if n.startswith(HOST_STAGES)]
    return (tuple(k for k, _ in named), *(a for _, a in named))


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
        strategy: object | None = None,
        strategy_state: tuple | None = None,
        eval_owners: np.ndarray | None = None,
        held_out: bool = False,
        classes: bool = True,
        traffic: Totals | None = None,
        trace: Trace | None = None,
        clock: dict | None = None,
        clients: dict | None = None,
    ) -> None:
        self.store_retry_seconds = store_retry_seconds
        self.coordinator = Coordinator(
            config, RayPool(host_actors, data), num_test=num_test, start_round=start_round,
            weights=weights, history=history, run_id=run_id, run_started_at=run_started_at,
            strategy=strategy, strategy_state=strategy_state, eval_owners=eval_owners, held_out=held_out,
            classes=classes, traffic=traffic, trace=trace, clock=clock, clients=clients,
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
