"""fedactors.data.partition: every scheme seeded, deterministic, disjoint and covering, no client empty."""

import numpy as np
import pytest

from fedactors.errors import ConfigError
from fedactors.data.partition import dirichlet, iid, partition, shards, summary, unbalanced


def _check_covering(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n and len(np.unique(allidx)) == n  # disjoint and covering


@pytest.mark.parametrize("k", [1, 7, 10, 100, 600])
def test_iid_partition_sizes_disjoint_covering(k):
    parts = iid(60_000, k, seed=0)
    assert len(parts) == k and {len(p) for p in parts} <= {60_000 // k, 60_000 // k + 1}
    _check_covering(parts, 60_000)
    again = iid(60_000, k, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    if k > 1:
        assert not np.array_equal(parts[0], iid(60_000, k, seed=1)[0])


def test_iid_clients_see_all_labels(mnist):
    parts = iid(60_000, 100, seed=0)
    assert all(len(np.unique(mnist.train_labels[p])) == 10 for p in parts)


def test_noniid_is_two_label_sorted_shards_per_client(mnist):
    labels = mnist.train_labels
    parts = shards(labels, 100, 0)
    assert len(parts) == 100 and all(len(p) == 600 for p in parts)
    _check_covering(parts, 60_000)
    # Rebuild the 200 shards of 300 from the stable label sort: every client is exactly two of them.
    cut = np.split(np.argsort(labels, kind="stable"), 200)
    shard_of = np.empty(60_000, dtype=int)
    for s, idx in enumerate(cut):
        shard_of[idx] = s
    used = [tuple(sorted(set(shard_of[p].tolist()))) for p in parts]
    assert all(len(u) == 2 for u in used)
    assert sorted(s for u in used for s in u) == list(range(200))
    # A shard spans at most 2 labels (it may straddle a class boundary), so a client sees at most 4,
    # and most clients see exactly the paper's 2 digits or fewer.
    assert all(len(np.unique(labels[idx])) <= 2 for idx in cut)
    n_labels = [len(np.unique(labels[p])) for p in parts]
    assert max(n_labels) <= 4 and sum(n <= 2 for n in n_labels) >= 80
    assert not all(np.array_equal(a, b) for a, b in zip(parts, shards(labels, 100, 1)))


def test_noniid_general_k_including_ones_that_do_not_divide(mnist):
    parts = partition(mnist.train_labels, 50, "noniid", 3)
    assert len(parts) == 50 and all(len(p) == 1200 for p in parts)
    _check_covering(parts, 60_000)
    parts = partition(mnist.train_labels, 7, "noniid", 0)  # 14 shards of 4285 or 4286
    assert sorted({len(p) for p in parts}) in ([8570, 8571, 8572], [8571, 8572], [8570, 8571])
    _check_covering(parts, 60_000)




def test_shards_per_client_generalises_the_papers_two(mnist):
    labels = mnist.train_labels
    parts = partition(labels, 100, "shards", 5, shards_per_client=3)
    assert len(parts) == 100 and all(len(p) == 600 for p in parts)  # 300 shards of 200
    _check_covering(parts, 60_000)
    two = partition(labels, 100, "shards", 5, shards_per_client=2)
    assert all(np.array_equal(a, b) for a, b in zip(two, partition(labels, 100, "noniid", 5)))


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_is_seeded_covering_and_skewed_as_alpha_says(mnist, alpha):
    labels = mnist.train_labels
    parts = dirichlet(labels, 50, seed=1, alpha=alpha)
    _check_covering(parts, 60_000)
    assert all(len(p) > 0 for p in parts)
    again = dirichlet(labels, 50, seed=1, alpha=alpha)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    top_share = np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])
    if alpha == 0.1:
        assert top_share > 0.6  # mostly one label per client
    if alpha == 100.0:
        assert top_share < 0.2  # close to IID's 0.1


def test_dirichlet_that_leaves_a_client_empty_is_refused():
    labels = np.repeat(np.arange(2), 10)  # 20 examples, 2 labels, 15 clients: tiny alpha cannot cover them
    with pytest.raises(ConfigError, match=r"--partition dirichlet --alpha 0.001 left some of the 15 clients without examples"):
        partition(labels, 15, "dirichlet", 0, alpha=0.001)


def test_unbalanced_sizes_spread_with_sigma_and_cover_everything():
    parts = unbalanced(60_000, 100, seed=2, sigma=1.0)
    _check_covering(parts, 60_000)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 1 and sizes.max() > 3 * sizes.min()
    equal = unbalanced(60_000, 100, seed=2, sigma=0.0)
    assert {len(p) for p in equal} == {600}
    with pytest.raises(ConfigError, match="--sigma must be >= 0"):
        unbalanced(100, 10, seed=0, sigma=-1.0)
    with pytest.raises(ConfigError, match="--sigma 1000 is too large"):  # overflowed into empty, overlapping clients
        unbalanced(1437, 100, seed=0, sigma=1000.0)
    wide = unbalanced(1437, 100, seed=0, sigma=50.0)  # as skewed as it gets, and still a partition
    assert min(map(len, wide)) >= 1 and np.array_equal(np.sort(np.concatenate(wide)), np.arange(1437))


def test_more_clients_than_examples_is_refused():
    with pytest.raises(ConfigError, match="--clients 30 is more than the 20 training examples"):
        partition(np.zeros(20, np.int64), 30, "iid", 0)


def test_summary_counts_examples_and_labels_per_client(mnist):
    s = summary(partition(mnist.train_labels, 100, "noniid", 0), mnist.train_labels)
    assert s["clients"] == 100 and s["examples"] == {"min": 600, "median": 600.0, "max": 600}
    assert s["labels"]["min"] >= 1 and s["labels"]["max"] <= 4 and s["labels"]["median"] == 2.0


@pytest.mark.parametrize("n, k", [(60_000, 100), (60_000, 7), (1003, 1003), (60_000, 60_000)])
def test_iid_is_the_shuffle_dealt_in_array_split_runs_each_sorted(n, k):
    # The definition, one small array per client, against the vectorised Parts that replaced it.
    from fedactors.seeding import Purpose, generator

    order = generator(Purpose.PARTITION, 5).permutation(n)
    expected = [np.sort(chunk) for chunk in np.array_split(order, k)]
    got = iid(n, k, 5)
    assert len(got) == k and all(np.array_equal(a, b) for a, b in zip(expected, got))


def test_parts_is_a_read_only_sequence_of_every_clients_indices():
    from fedactors.data.partition import Parts

    lists = [np.array([4, 9]), np.array([0]), np.array([1, 2, 3])]
    parts = Parts.of(lists)
    assert len(parts) == 3 and parts.sizes.tolist() == [2, 1, 3]
    assert [p.tolist() for p in parts] == [[4, 9], [0], [1, 2, 3]] and parts[-1].tolist() == [1, 2, 3]
    assert [p.tolist() for p in parts[1:]] == [[0], [1, 2, 3]]
    with pytest.raises(IndexError, match="client 3 of 3"):
        parts[3]
    with pytest.raises(ValueError, match="read-only"):
        parts[0][0] = 1
    import pickle

    again = pickle.loads(pickle.dumps(parts))  # how it travels to the hosts: two arrays, whatever K is
    assert [p.tolist() for p in again] == [p.tolist() for p in parts]


@pytest.mark.parametrize("scheme", ["iid", "noniid", "dirichlet", "unbalanced"])
def test_summary_is_the_per_client_count_of_examples_and_distinct_labels(mnist, scheme):
    parts = partition(mnist.train_labels, 100, scheme, 0)
    sizes = np.array([len(p) for p in parts])
    distinct = np.array([len(np.unique(mnist.train_labels[p])) for p in parts])
    s = summary(parts, mnist.train_labels)
    assert s["examples"] == {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())}
    assert s["labels"] == {"min": int(distinct.min()), "median": float(np.median(distinct)), "max": int(distinct.max())}
