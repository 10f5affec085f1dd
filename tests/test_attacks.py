"""fedactors.attacks: who the Byzantine clients are and what each attack sends, against NumPy by hand."""

import numpy as np
import pytest

from fedactors.attacks import byzantine_clients, corrupt

GLOBAL = np.linspace(-1, 1, 1001, dtype=np.float32)
LOCAL = GLOBAL + np.float32(0.01) * np.cos(np.arange(1001, dtype=np.float32))


def test_byzantine_clients_are_fixed_by_the_seed_and_distinct():
    chosen = byzantine_clients(seed=3, num_clients=100, num_byzantine=10)
    assert len(chosen) == 10 and all(0 <= c < 100 for c in chosen)
    assert chosen == byzantine_clients(seed=3, num_clients=100, num_byzantine=10)
    assert chosen != byzantine_clients(seed=4, num_clients=100, num_byzantine=10)
    assert byzantine_clients(seed=3, num_clients=100, num_byzantine=0) == frozenset()


def test_sign_flip_reverses_and_amplifies_the_update():
    sent = corrupt("sign-flip", LOCAL, GLOBAL, scale=4.0, seed=0, round_idx=1, client_id=2)
    assert sent.dtype == np.float32
    np.testing.assert_allclose(sent - GLOBAL, -4.0 * (LOCAL - GLOBAL), rtol=1e-5, atol=1e-6)


def test_gaussian_replaces_the_update_by_seeded_noise_of_the_given_scale():
    sent = corrupt("gaussian", LOCAL, GLOBAL, scale=0.5, seed=0, round_idx=1, client_id=2)
    noise = sent - GLOBAL
    assert sent.dtype == np.float32 and abs(noise.std() - 0.5) < 0.05 and abs(noise.mean()) < 0.05
    again = corrupt("gaussian", LOCAL, GLOBAL, scale=0.5, seed=0, round_idx=1, client_id=2)
    other = corrupt("gaussian", LOCAL, GLOBAL, scale=0.5, seed=0, round_idx=2, client_id=2)
    assert np.array_equal(sent, again) and not np.array_equal(sent, other)


def test_nan_sends_nothing_but_nan_and_leaves_the_inputs_alone():
    local = LOCAL.copy()
    sent = corrupt("nan", local, GLOBAL, scale=1.0, seed=0, round_idx=1, client_id=2)
    assert np.isnan(sent).all() and sent.shape == LOCAL.shape
    assert np.array_equal(local, LOCAL)


def test_unknown_attack_is_refused():
    with pytest.raises(ValueError, match="unknown attack 'flip'"):
        corrupt("flip", LOCAL, GLOBAL, scale=1.0, seed=0, round_idx=1, client_id=2)
