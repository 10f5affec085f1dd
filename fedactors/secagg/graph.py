"""Who masks with whom: SecAgg+'s random Harary graph, its (k, t) checks and a parameter finder.

Bell et al. (CCS 2020) replace SecAgg's complete graph (every client masks with and shares its
secrets among all n - 1 others: Bonawitz et al., CCS 2017) by a sparse random one: each client
has k neighbours, k ~ O(log n). As in their implementation (Google's fcp,
fcp/secagg/server/graph_parameter_finder.cc) and Flower's SecAgg+, the graph is a Harary graph
H(k, n) (ring positions joined to the k/2 nearest on either side) under a random permutation of
the clients, seeded by (seed, round), so a resumed round draws the same one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedactors.errors import ConfigError
from fedactors.seeding import Purpose

# The graph's stream, apart from every other draw's.
GRAPH_PURPOSE = int(Purpose.SECAGG_GRAPH)


def check_params(cohort: int, neighbours: int, threshold: int) -> None:
    """ConfigError, one line, unless 1 <= threshold <= neighbours <= cohort - 1 and neighbours is even or cohort - 1."""
    if cohort < 2:
        raise ConfigError(f"secure aggregation needs at least 2 clients a round, got {cohort}")
    if not 1 <= neighbours <= cohort - 1:
        raise ConfigError(f"secure aggregation's neighbours k = {neighbours} must be in [1, {cohort - 1}] "
                          f"(a round's {cohort} clients less one)")
    if neighbours % 2 and neighbours != cohort - 1:
        raise ConfigError(f"secure aggregation's neighbours k = {neighbours} must be even (a Harary graph joins "
                          f"k/2 clients on either side) or {cohort - 1}, every other client")
    if not 1 <= threshold <= neighbours:
        raise ConfigError(f"secure aggregation's threshold t = {threshold} must be in [1, k = {neighbours}]: "
                          f"a client's secrets are shared among its k neighbours, t of them recover them")


def neighbour_graph(clients: Sequence[int], neighbours: int, seed: int, round_idx: int) -> dict[int, tuple[int, ...]]:
    """Each client's neighbours (sorted) in a round: all others for k = n - 1, else a permuted Harary graph.

    Symmetric, no client its own neighbour, every client exactly k neighbours. Depends only on
    the sorted client ids, k, seed and round.
    """
    ids = sorted(int(c) for c in clients)
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("a round's clients must be distinct")
    if neighbours == n - 1:
        return {c: tuple(d for d in ids if d != c) for c in ids}
    if neighbours % 2 or not 2 <= neighbours < n - 1:
        raise ValueError(f"k = {neighbours} must be even and below n - 1 = {n - 1} for a Harary graph")
    rng = np.random.default_rng(np.random.SeedSequence([GRAPH_PURPOSE, seed, round_idx]))
    ring = [ids[i] for i in rng.permutation(n)]  # ring[p]: the client at position p
    half = neighbours // 2
    return {ring[p]: tuple(sorted(ring[(p + d) % n] for d in range(-half, half + 1) if d)) for p in range(n)}


def _tail_above(pmf_terms: list[int], x: int) -> int:
    return sum(pmf_terms[x + 1:])


def _hypergeometric_terms(population: int, marked: int, draws: int) -> list[int]:
    """C(marked, i) C(population - marked, draws - i) for i = 0..draws: P(X = i) times C(population, draws)."""
    return [math.comb(marked, i) * math.comb(population - marked, draws - i) for i in range(draws + 1)]


def secagg_plus_params(cohort: int, adversarial_rate: float, dropout_rate: float, *,
                       security_bits: int = 40, correctness_bits: int = 20) -> tuple[int, int] | None:
    """The smallest even k, and its smallest t, for SecAgg+ against an honest-but-curious server.

    Bell et al.'s conditions as fcp's HararyGraphParameterFinder states them (reimplemented here in
    exact integer arithmetic): with up to floor(adversarial_rate * n) clients colluding with the server
    and up to floor(dropout_rate * n) dropping out, (1) the graph left after removing both stays
    connected except with probability 2^-(security_bits + 1); (2) no client has t colluding neighbours
    except with probability 2^-(security_bits + 1) / n; (3) every client keeps t surviving neighbours
    except with probability 2^-correctness_bits / n. None if no k < n - 1 meets them (use SecAgg's
    complete graph). Used by bench/secagg.py for SecAgg+'s column and by --secure-aggregation's defaults.
    """
    n = cohort
    adversarial = math.floor(adversarial_rate * n + 1e-9)
    dropped = math.floor(dropout_rate * n + 1e-9)
    security = 2 ** (security_bits + 1)
    for k in range(2, n - 1, 2):
        bad = adversarial + dropped
        # (1) removing the bad clients disconnects the ring only by taking k/2 successive ones in two places:
        # union bound over n (n - k - 1) / 2 pairs of gaps, each all-bad with probability C(bad, k) / C(n, k).
        if k <= bad and n * (n - k - 1) * math.comb(bad, k) * security >= 2 * math.comb(n, k):
            continue
        t = _threshold(n, k, adversarial, dropped, security, correctness_bits)
        if t is not None:
            return k, t
    return None


def secagg_plus_threshold(cohort: int, neighbours: int, adversarial_rate: float, dropout_rate: float, *,
                          security_bits: int = 40, correctness_bits: int = 20) -> int | None:
    """The smallest t meeting secagg_plus_params' conditions (2) and (3) for a given k; None if none does."""
    adversarial = math.floor(adversarial_rate * cohort + 1e-9)
    dropped = math.floor(dropout_rate * cohort + 1e-9)
    return _threshold(cohort, neighbours, adversarial, dropped, 2 ** (security_bits + 1), correctness_bits)


def _threshold(n: int, k: int, adversarial: int, dropped: int, security: int, correctness_bits: int) -> int | None:
    """Conditions (2) and (3) of secagg_plus_params for k neighbours: the smallest t (at least 2), or None."""
    whole = math.comb(n, k)
    colluding = _hypergeometric_terms(n, adversarial, k)
    # (2) t_low: the fewest t - 1 with P(colluding neighbours > t - 1) <= 2^-(s+1) / n
    t_low = next(x for x in range(k + 1) if _tail_above(colluding, x) * n * security <= whole) + 1
    alive = _hypergeometric_terms(n, n - dropped, k)
    # (3) t_high: the most t with P(surviving neighbours < t) <= 2^-c / n
    below, t_high = 0, 0
    for x in range(k + 1):
        below += alive[x]  # P(X <= x) * whole
        if below * n * 2**correctness_bits > whole:
            break
        t_high = x + 1
    return max(t_low, 2) if t_low <= t_high else None
