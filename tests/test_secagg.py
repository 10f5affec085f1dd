"""fedactors.secagg: SecAgg/SecAgg+ whose unmasked sum is ExactSum's, byte for byte; Shamir, the graph, costs.

Everything in process (no Ray): the real protocol objects, the real cryptography, the real
ExactSum kernel as the oracle. The file takes 4-12 s on the shared 2-core Intel Xeon (load 1-10).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from fedactors.aggregate import ExactSum
from fedactors.errors import ConfigError, RoundFailed
from fedactors.secagg import (
    RoundSpec,
    SecAggClient,
    SecAggError,
    SecAggServer,
    check_params,
    client_bytes,
    encode,
    neighbour_graph,
    secagg_plus_params,
    secret_from_seed,
    shamir,
    simulate_round,
)
from fedactors.secagg.protocol import MaskStream, keystream

CNN_LENGTH = 1_663_370  # the paper's CNN


def make_round(n: int, k: int, t: int, length: int, seed: int, round_idx: int = 3):
    """A cohort of n client ids out of 10,000, their float32 updates (weights-like values) and examples."""
    rng = np.random.default_rng([seed, n, k, length])
    clients = tuple(sorted(rng.choice(10_000, size=n, replace=False).tolist()))
    examples = {c: int(rng.integers(10, 700)) for c in clients}
    updates = {}
    for c in clients:
        x = (rng.standard_normal(length) * 0.05).astype(np.float32)
        x[rng.integers(0, length, size=max(1, length // 1000))] *= 100  # a few large weights, up to ~+-20
        updates[c] = (x, examples[c])
    spec = RoundSpec(round_idx, clients, k, t, length, total=sum(examples.values()), seed=seed)
    return spec, updates


def plain_exact_sum(spec: RoundSpec, updates, survivors) -> ExactSum:
    """What the round's ExactSum holds without secure aggregation, over the same surviving clients."""
    exact = ExactSum(spec.length, spec.total)
    for c in sorted(survivors):
        assert exact.add(*updates[c])
    return exact


def recoverable(spec: RoundSpec, before: set[int], after: set[int]) -> bool:
    """Whether every secret the server needs has t shares among the neighbours that answer."""
    answering = set(spec.clients) - before - after
    return all(len(set(spec.graph[c]) & answering) >= spec.threshold for c in spec.clients)


def pick_dropouts(spec: RoundSpec, fraction: float, seed: int) -> tuple[set[int], set[int]]:
    """fraction of the cohort dropped, about two thirds before masking and one third after, recoverable."""
    rng = np.random.default_rng(seed)
    count = round(fraction * len(spec.clients))
    for _ in range(1000):
        chosen = rng.permutation(spec.clients)[:count].tolist()
        cut = -(-2 * count // 3)
        before, after = set(chosen[:cut]), set(chosen[cut:])
        if recoverable(spec, before, after):
            return before, after
    raise AssertionError("no recoverable dropout set: the test's parameters are wrong")


# ---- the proof: the unmasked sum is ExactSum's, byte for byte -------------------------------------------------

CASES = [  # (n, k, t, dropout fraction): SecAgg (k = n - 1) and SecAgg+ (small even k)
    (3, 2, 1, 0.34), (3, 2, 2, 0.0), (10, 9, 5, 0.3), (10, 4, 2, 0.3), (20, 19, 10, 0.1),
    (20, 6, 2, 0.3), (50, 49, 25, 0.3), (50, 8, 3, 0.3), (50, 12, 4, 0.1),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("n", "k", "t", "fraction"), CASES)
def test_unmasked_sum_is_exactsums_byte_for_byte(n, k, t, fraction, seed) -> None:
    # Prepare
    spec, updates = make_round(n, k, t, 3001, seed)
    before, after = pick_dropouts(spec, fraction, seed)
    # Execute
    got, log = simulate_round(spec, secret_from_seed(seed), updates, dropped_before=before, dropped_after=after)
    # Assert
    survivors = set(spec.clients) - before
    assert log.survivors == survivors and log.dropped == before
    want = plain_exact_sum(spec, updates, survivors)
    assert np.array_equal(got.acc, want.acc)
    assert np.array_equal(got.result(), want.result())
    assert got.result().dtype == np.float32


@pytest.mark.parametrize(("n", "k", "t"), [(5, 4, 2), (7, 4, 2)])
def test_unmasked_sum_is_exactsums_at_the_cnns_length_with_dropouts_before_and_after(n, k, t) -> None:
    # Prepare: about 30% dropped, one before masking and one after
    spec, updates = make_round(n, k, t, CNN_LENGTH, seed=5)
    before, after = {spec.clients[1]}, {spec.clients[-1]}
    assert recoverable(spec, before, after)
    # Execute
    got, _ = simulate_round(spec, secret_from_seed(5), updates, dropped_before=before, dropped_after=after)
    # Assert
    want = plain_exact_sum(spec, updates, set(spec.clients) - before)
    assert np.array_equal(got.acc, want.acc)
    assert np.array_equal(got.result(), want.result())


def test_a_refused_update_counts_as_dropped_before_masking_as_exactsum_would_refuse_it() -> None:
    spec, updates = make_round(6, 5, 2, 1000, seed=1)
    bad = spec.clients[2]
    updates[bad][0][7] = np.nan
    assert SecAggClient(spec, bad, secret_from_seed(1)).mask(*updates[bad]) is None
    got, log = simulate_round(spec, secret_from_seed(1), updates)
    assert bad in log.dropped
    want = plain_exact_sum(spec, updates, set(spec.clients) - {bad})
    assert not ExactSum(spec.length, spec.total).add(*updates[bad])  # the plain path refuses it too
    assert np.array_equal(got.result(), want.result())



def test_a_dropped_client_whose_neighbours_all_dropped_needs_no_shares() -> None:
    # Prepare: a SecAgg+ ring of 10 with k = 2; a client and both its neighbours drop before masking
    spec, updates = make_round(10, 2, 1, 300, seed=2)
    lonely = spec.clients[0]
    before = {lonely, *spec.graph[lonely]}
    # Execute: nobody that sent a vector masked with it, so its mask key (which has no shares left) is not needed
    got, _ = simulate_round(spec, secret_from_seed(2), updates, dropped_before=before)
    # Assert
    assert np.array_equal(got.acc, plain_exact_sum(spec, updates, set(spec.clients) - before).acc)

# ---- dropping too many: a clear error -----------------------------------------------------------------------


@pytest.mark.parametrize(("k", "t"), [(9, 5), (4, 3)])
def test_too_many_dropped_fails_naming_the_round_and_the_client(k, t) -> None:
    # Prepare: a client whose neighbours answer fewer than t times
    spec, updates = make_round(10, k, t, 500, seed=3, round_idx=7)
    victim = spec.clients[0]
    lost = list(spec.graph[victim])[: k - t + 1]
    before, after = set(lost[:1]), set(lost[1:])
    # Execute
    with pytest.raises(SecAggError) as caught:
        simulate_round(spec, secret_from_seed(3), updates, dropped_before=before, dropped_after=after)
    # Assert
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("round 7: client ")
    assert f"fewer than the threshold t = {t}" in message
    named = int(message.split()[3].split("'")[0])
    assert len(set(spec.graph[named]) - before - after) < t  # the client it names really lacks shares
    assert isinstance(caught.value, RoundFailed) and caught.value.exit_code == 1


# ---- the server never sees an unmasked individual vector ---------------------------------------------------------


def test_a_single_masked_vector_is_uniform_mod_2_64_and_not_the_update() -> None:
    # Prepare: a round of 3, so the vector carries two pairwise masks and a self mask
    spec, updates = make_round(3, 2, 2, 200_000, seed=4)
    secret = secret_from_seed(4)
    clients = {c: SecAggClient(spec, c, secret) for c in spec.clients}
    server = SecAggServer(spec)
    to_each = server.neighbour_keys({c: x.public_keys() for c, x in clients.items()})
    routed = server.route_shares({c: clients[c].share_keys(to_each[c]) for c in spec.clients})
    for c, ciphertexts in routed.items():
        clients[c].receive_shares(ciphertexts)
    first = spec.clients[0]
    encoded = encode(*updates[first], spec.total)
    # Execute
    masked = clients[first].mask(*updates[first]).copy()
    server.add_masked(first, masked, updates[first][1])
    # Assert: what the server holds after one vector is that vector, and its bytes are uniform
    assert np.array_equal(server.acc, masked)
    assert np.count_nonzero(masked == encoded.view(np.uint64)) < 3  # chance agreements only (2^-64 each)
    for values in (masked, encoded.view(np.uint64)):
        counts = np.bincount(values.view(np.uint8), minlength=256)
        expected = values.nbytes / 256
        p = chi2.sf(((counts - expected) ** 2 / expected).sum(), df=255)
        if values is masked:
            assert p > 1e-4, f"masked bytes not uniform (p = {p})"
        else:
            assert p < 1e-12  # the check can tell: the encoded update's bytes are far from uniform


def test_a_client_never_reveals_both_shares_of_one_neighbour() -> None:
    spec, _ = make_round(5, 4, 2, 10, seed=6)
    secret = secret_from_seed(6)
    clients = {c: SecAggClient(spec, c, secret) for c in spec.clients}
    server = SecAggServer(spec)
    to_each = server.neighbour_keys({c: x.public_keys() for c, x in clients.items()})
    routed = server.route_shares({c: clients[c].share_keys(to_each[c]) for c in spec.clients})
    holder = clients[spec.clients[0]]
    holder.receive_shares(routed[holder.id])
    other = spec.clients[1]
    with pytest.raises(SecAggError, match="both shares"):
        holder.unmask_shares({other}, {other})
    assert other in holder.unmask_shares({other}, set())
    with pytest.raises(SecAggError, match="already gave"):
        holder.unmask_shares(set(), {other})


def test_a_tampered_share_fails_naming_its_sender() -> None:
    spec, _ = make_round(4, 3, 2, 10, seed=2)
    secret = secret_from_seed(2)
    clients = {c: SecAggClient(spec, c, secret) for c in spec.clients}
    server = SecAggServer(spec)
    to_each = server.neighbour_keys({c: x.public_keys() for c, x in clients.items()})
    sender, holder = spec.clients[0], spec.clients[1]
    sent = clients[sender].share_keys(to_each[sender])
    forged = bytearray(sent[holder])
    forged[10] ^= 1
    clients[holder].share_keys(to_each[holder])
    with pytest.raises(SecAggError, match=f"the shares client {sender} sent client {holder} do not decrypt"):
        clients[holder].receive_shares({sender: bytes(forged)})


def test_keys_come_from_the_secret_round_and_client_and_nowhere_else() -> None:
    spec, _ = make_round(4, 3, 2, 10, seed=0)
    later = RoundSpec(spec.round + 1, spec.clients, 3, 2, 10, spec.total)
    c = spec.clients[0]
    same = SecAggClient(spec, c, secret_from_seed(0)).public_keys()
    assert SecAggClient(spec, c, secret_from_seed(0)).public_keys() == same  # a resumed round: the same keys
    assert SecAggClient(later, c, secret_from_seed(0)).public_keys() != same
    assert SecAggClient(spec, c, secret_from_seed(1)).public_keys() != same
    assert SecAggClient(spec, spec.clients[1], secret_from_seed(0)).public_keys() != same



def test_masks_added_block_by_block_are_the_whole_keystream() -> None:
    length = 3 * MaskStream.BLOCK + 5  # blocks and a short last one
    key = bytes(range(16))
    plus, minus = np.zeros(length, dtype=np.uint64), np.zeros(length, dtype=np.uint64)
    MaskStream(length).add(plus, key, +1)
    MaskStream(length).add(minus, key, -1)
    assert np.array_equal(plus, keystream(key, length))
    assert not (plus + minus).any()
    assert keystream(key, 7).tolist() == keystream(key, length)[:7].tolist()  # a prefix: one stream per key
    assert not np.array_equal(keystream(bytes(16), 7), keystream(key, 7))

# ---- costs: the bytes formula is what the messages hold ----------------------------------------------------------


def test_client_bytes_are_what_the_round_sent_and_received() -> None:
    spec, updates = make_round(20, 6, 2, 777, seed=8)
    before, after = pick_dropouts(spec, 0.3, seed=8)
    _, log = simulate_round(spec, secret_from_seed(8), updates, dropped_before=before, dropped_after=after)
    for c in spec.clients:
        want = client_bytes(6, 777, dropped_neighbours=len(set(spec.graph[c]) & before), masked=c not in before,
                            unmasks=c not in after)
        assert (log.bytes_up[c], log.bytes_down[c]) == (want.up, want.down), c
    assert client_bytes(6, 777).up - 8 * 777 == 64 + 6 * 84 + 6 * 24  # keys, shares out, seed shares back


# ---- Shamir over GF(2^31 - 1) ------------------------------------------------------------------------------------


def _lagrange_oracle(xs: list[int]) -> list[int]:
    p = shamir.PRIME
    out = []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num, den = num * xj % p, den * (xj - xi) % p
        out.append(num * pow(den, -1, p) % p)
    return out


@pytest.mark.parametrize(("k", "t"), [(1, 1), (5, 1), (5, 5), (40, 13), (300, 150)])
def test_shamir_any_t_shares_recover_the_secret(k, t) -> None:
    rng = np.random.default_rng(k * t)
    secret_bytes = rng.bytes(48)
    secret = shamir.to_field(secret_bytes)
    xs = rng.choice(np.arange(1, 10_000), size=k, replace=False)
    coefficients = shamir.uniform_elements(rng.integers(0, 2**63, size=(t - 1, len(secret)), dtype=np.uint64))
    shares = shamir.split(secret, xs, t, coefficients)
    assert shares.shape == (k, len(secret)) and shares.max() < shamir.PRIME
    for _ in range(5):
        pick = rng.choice(k, size=t, replace=False)
        assert shamir.lagrange_at_zero(xs[pick]).tolist() == _lagrange_oracle(xs[pick].tolist())
        assert shamir.from_field(shamir.combine(xs[pick], shares[pick]), 48) == secret_bytes
    wire = shamir.encode_share(shares[0])
    assert len(wire) == 4 * len(secret) and np.array_equal(shamir.decode_share(wire), shares[0])


def test_shamir_fewer_than_t_shares_are_uniform_whatever_the_secret() -> None:
    # t = 3: two shares of the secret 0, and two of the secret 2^30 - 1, over 4,000 draws of the polynomial,
    # fall in 4 x 4 buckets of the field uniformly (jointly).
    rng = np.random.default_rng(11)
    xs = np.array([3, 17, 99])
    for secret in (np.array([0]), np.array([2**30 - 1])):
        draws = np.stack([shamir.split(secret, xs, 3, shamir.uniform_elements(
            rng.integers(0, 2**63, size=(2, 1), dtype=np.uint64)))[:2, 0] for _ in range(4_000)])
        buckets = draws * 4 // shamir.PRIME
        counts = np.bincount(buckets[:, 0] * 4 + buckets[:, 1], minlength=16)
        stat = ((counts - counts.mean()) ** 2 / counts.mean()).sum()
        assert chi2.sf(stat, df=15) > 1e-4


def test_shamir_refuses_what_cannot_be_shares() -> None:
    secret = np.array([5, 6])
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(secret, np.array([1, 1]), 1, np.zeros((0, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(secret, np.array([1, 2]), 3, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="indices"):
        shamir.lagrange_at_zero(np.array([0, 4]))
    with pytest.raises(ValueError, match="outside the field"):
        shamir.decode_share(np.array([2**31 - 1], dtype="<u4").tobytes())
    with pytest.raises(ValueError, match="not of one secret"):
        shamir.from_field(np.array([1 << 31]), 4)


# ---- the graph and its parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(3, 2), (10, 9), (11, 4), (50, 8), (1000, 72)])
def test_the_graph_is_symmetric_k_regular_and_seeded(n, k) -> None:
    clients = list(range(5, 5 + 3 * n, 3))
    graph = neighbour_graph(clients, k, seed=1, round_idx=2)
    assert set(graph) == set(clients)
    for c, near in graph.items():
        assert len(near) == len(set(near)) == k and c not in near
        assert all(c in graph[v] for v in near)
    assert neighbour_graph(list(reversed(clients)), k, seed=1, round_idx=2) == graph
    if k < n - 1:  # a Harary graph under a permutation of (seed, round)
        assert neighbour_graph(clients, k, seed=1, round_idx=3) != graph
        assert neighbour_graph(clients, k, seed=2, round_idx=2) != graph


@pytest.mark.parametrize(("cohort", "k", "t", "says"), [
    (10, 4, 5, "threshold t = 5 must be in [1, k = 4]"),
    (10, 10, 2, "neighbours k = 10 must be in [1, 9]"),
    (10, 5, 2, "k = 5 must be even"),
    (1, 1, 1, "at least 2 clients"),
])
def test_bad_parameters_are_one_line_config_errors(cohort, k, t, says) -> None:
    with pytest.raises(ConfigError) as caught:
        check_params(cohort, k, t)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(("n", "adversarial", "dropout", "k", "t"), [
    # fcp/secagg/server/graph_parameter_finder_test.cc's values (curious server, 2^-40 security, 2^-20 failure)
    (10, 0.33, 0.33, 8, 4), (100, 0.33, 0.33, 68, 34), (1000, 0.33, 0.33, 286, 150),
    (10, 0.05, 0.33, 4, 2), (100, 0.05, 0.33, 28, 6), (1000, 0.05, 0.33, 72, 24),
    (100, 0.33, 0.05, 34, 29), (1000, 0.33, 0.05, 78, 60),
])
def test_secagg_plus_params_are_googles(n, adversarial, dropout, k, t) -> None:
    assert secagg_plus_params(n, adversarial, dropout) == (k, t)

