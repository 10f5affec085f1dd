import numpy as np
import pytest

from fedactors.seeding import Purpose, generator, sample_clients, torch_seed


def test_streams_depend_only_on_their_keys():
    a = generator(Purpose.SHUFFLE, 1, 2, 3).permutation(100)
    b = generator(Purpose.SHUFFLE, 1, 2, 3).permutation(100)
    np.testing.assert_array_equal(a, b)
    for other in [(Purpose.SAMPLE, 1, 2, 3), (Purpose.SHUFFLE, 2, 2, 3), (Purpose.SHUFFLE, 1, 3, 3), (Purpose.SHUFFLE, 1, 2, 4)]:
        assert not np.array_equal(a, generator(*other).permutation(100))


def test_sample_clients_is_sorted_distinct_and_seeded():
    s = sample_clients(0, 5, 100, 10)
    assert len(s) == 10 and len(set(s.tolist())) == 10 and np.all(np.diff(s) > 0)
    assert s.min() >= 0 and s.max() < 100
    np.testing.assert_array_equal(s, sample_clients(0, 5, 100, 10))
    assert not np.array_equal(s, sample_clients(0, 6, 100, 10))
    np.testing.assert_array_equal(sample_clients(0, 1, 10, 10), np.arange(10))


def test_sampling_is_uniform_over_many_rounds():
    counts = np.zeros(100)
    for r in range(1, 2001):
        counts[sample_clients(7, r, 100, 10)] += 1
    # Each client is expected 200 times; binomial sd ~13.4, so 5 sd either side.
    assert counts.min() > 200 - 67 and counts.max() < 200 + 67


def test_torch_seed_is_stable_and_in_range():
    assert torch_seed(0) == torch_seed(0) != torch_seed(1)
    assert 0 <= torch_seed(123) < 2**63


def test_negative_keys_are_refused():
    with pytest.raises(ValueError):
        generator(Purpose.SAMPLE, -1)
