"""One round's collection, for the synchronous and the asynchronous loop alike: dispatch the jobs, retry the failed
ones, refuse the unusable, accept the round under --min-fit-fraction or fail it, and count each for the round's row.

Pure of Ray and of the pool: a loop hands `Collection.collect` a `dispatch(todo)` that trains the jobs keyed by
`todo` and yields (key, outcome) as they come back. A key is a client id (a synchronous round) or (client, start
batch) (FedBuff, where a fast client may arrive twice in one buffer). An outcome is

- a messages.Failure: the job did not come back (it raised, its host died, it ran out of time): retried;
- a `Refused`: an update refused where it was made (a host's exact partial sum): never retried;
- anything else, the job's result: `admit(key, result)` says whether it is usable (by default, whether its weights
  are finite) or refused.

The retry rule (docs/clusters.md "When things fail"): failed jobs are retried, each on the next try with the round's others
that failed, until `required` usable results are in or MAX_ATTEMPTS tries are spent: with --min-fit-fraction F < 1,
once ceil(F x jobs) returned the failed ones are dropped instead of retrained; at F = 1 each is retried up to
MAX_ATTEMPTS tries. A refused update is never retried: the same seeds would give it again. A loop that learns of a
refusal only after collecting (FedBuff: out of range once weighted by its staleness) calls `refuse` and `accept`
again; the failed jobs the rule let go stay dropped, and the round fails if too few are left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fedactors import aggregate
from fedactors.errors import RoundFailed
from fedactors.messages import Failure

MAX_ATTEMPTS = 3  # per client and round: the first try plus two retries on other hosts

NOT_FINITE = "returned NaN or infinite weights: rejected"
TOO_LARGE = "returned values too large for FedAvg's exact sum (|share x value| >= 2^18): rejected"


@dataclass(frozen=True)
class Refused:
    """An update that is never aggregated: finite but too large for FedAvg's exact sum (`finite`), or NaN or inf."""

    host: int
    finite: bool


def rejection(client_id: int, host: int, finite: bool) -> Failure:
    """A refused update as the failure the round's row names (never retried: its seeds would give it again)."""
    return Failure(client_id, host, TOO_LARGE if finite else NOT_FINITE)


def finite_weights(key: Hashable, result: Any) -> Refused | None:
    """The default admission: an update holding NaN or infinity is refused, any other is usable."""
    return None if aggregate.all_finite(result.weights) else Refused(result.host, finite=False)


class Collection:
    """The jobs of one round (`keys`, in the order the round reports them) and what became of each.

    `required`: the fewest usable results the round may be aggregated from. `client(key)`: the client id of a key.
    After `collect`: `results` (key -> usable result), `failures` (every failure and refusal, in arrival order),
    `retried` (a key once for each try it failed while fewer than `required` were in, the last try too, as
    run.json has always counted them), `not_finite` and `too_large` (the refused keys).
    """

    def __init__(self, keys: Sequence[Hashable], required: int, *,
                 client: Callable[[Hashable], int] = lambda key: key) -> None:
        self.keys = list(keys)
        self.required = required
        self.client = client
        self.results: dict[Hashable, Any] = {}
        self.failures: list[Failure] = []
        self.retried: list[Hashable] = []
        self.not_finite: list[Hashable] = []
        self.too_large: list[Hashable] = []
        self.tries: dict[Hashable, int] = {}
        self.last_arrival: float | None = None  # perf_counter() when the last usable result came in

    def collect(self, dispatch: Callable[[list], Iterable[tuple[Hashable, Any]]],
                admit: Callable[[Hashable, Any], Refused | None] = finite_weights,
                attempts: int = MAX_ATTEMPTS) -> Collection:
        """Dispatch the keys, then retry the failed ones (the module's retry rule); returns self."""
        todo = self.keys
        for _attempt in range(attempts if todo else 0):
            failed_now = []
            for key in todo:
                self.tries[key] = self.tries.get(key, 0) + 1
            for key, outcome in dispatch(todo):
                if isinstance(outcome, Failure):
                    self.failures.append(outcome)
                    failed_now.append(key)
                    continue
                refused = outcome if isinstance(outcome, Refused) else admit(key, outcome)
                if refused is not None:
                    self.refuse(key, refused)
                else:
                    self.results[key] = outcome
                    self.last_arrival = time.perf_counter()
            if len(self.results) >= self.required or not failed_now:
                break
            self.retried.extend(failed_now)
            again = set(failed_now)
            todo = [key for key in todo if key in again]  # the round's order, whatever order they failed in
        return self

    def refuse(self, key: Hashable, refused: Refused) -> None:
        """Refuse `key`'s update, on arrival or after (a loop's own check): named in failures, counted in rejected."""
        self.results.pop(key, None)
        self.failures.append(rejection(self.client(key), refused.host, refused.finite))
        (self.too_large if refused.finite else self.not_finite).append(key)

    @property
    def usable(self) -> list:
        """The keys with a usable result, in the round's order (the same bytes whatever arrived first)."""
        return [key for key in self.keys if key in self.results]

    @property
    def rejected(self) -> list:
        """The refused keys: NaN or infinite first, then too large, each in the order refused."""
        return self.not_finite + self.too_large

    @property
    def dropped(self) -> list:
        """The keys left without a usable result (failed, refused, or not retried once enough were in)."""
        return [key for key in self.keys if key not in self.results]

    @property
    def uploads(self) -> int:
        """Updates the clients sent: the usable and the refused (a refused update was sent all the same)."""
        return len(self.results) + len(self.not_finite) + len(self.too_large)

    def accept(self, round_idx: int, *, of: int, min_fit_fraction: float, private: bool = False,
               divergence: Callable[[], str] | None = None) -> None:
        """RoundFailed unless `required` usable results are in. The message says who failed or was refused and why,
        and how many are left `of` the round's clients; a `private` (DP) round names neither the clients nor how
        many. `divergence()`: what to say in place of the --min-fit-fraction advice when an update was NaN or inf."""
        if len(self.results) >= self.required:
            return

        def who(keys: list) -> str:
            return "sampled clients" if private else f"clients {[self.client(k) for k in keys]}"

        refused = set(self.rejected)
        failed = [key for key in self.dropped if key not in refused]
        parts = []
        if failed:
            tries = max(self.tries[key] for key in failed)
            parts.append(f"{who(failed)} failed {'once' if tries == 1 else f'{tries} times'}")
        if self.not_finite:
            parts.append(f"{who(sorted(self.not_finite))} returned NaN or infinite weights, which are never aggregated")
        if self.too_large:
            parts.append(f"{who(sorted(self.too_large))} returned values too large for FedAvg's exact sum "
                         "(|share x value| >= 2^18)")
        left = (f"fewer updates than --min-fit-fraction {min_fit_fraction:g} of the round's" if private else
                f"{of - len(self.dropped)} of {of} updates where {self.required} are required")
        message = f"round {round_idx}: {' and '.join(parts)}, leaving {left}"
        if failed:
            ids = {self.client(key) for key in failed}
            message += " (errors: " + "; ".join(dict.fromkeys(f.error for f in self.failures if f.client_id in ids)) + ")"
        if self.not_finite and divergence is not None:
            message += divergence()  # fewer clients would not help: no word of --min-fit-fraction
        elif refused and min_fit_fraction == 1:
            message += "; --min-fit-fraction below 1 accepts rounds without them"
        raise RoundFailed(message)
