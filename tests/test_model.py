import numpy as np
import pytest
import torch

from fedactors.model import CNN, NUM_PARAMETERS, FlatModel


def test_the_papers_cnn_has_exactly_1663370_parameters():
    assert sum(p.numel() for p in CNN().parameters()) == NUM_PARAMETERS == 1_663_370


def test_parameters_and_gradients_are_views_into_the_flat_buffers():
    m = FlatModel(init_seed=0)
    assert m.params.numel() == NUM_PARAMETERS
    pbase, gbase, end = m.params.data_ptr(), m.grads.data_ptr(), 4 * NUM_PARAMETERS
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    m.sgd_step(x, y, lr=0.1)  # after a backward pass the grads must still be the views
    for p in m.module.parameters():
        assert pbase <= p.data_ptr() < pbase + end
        assert gbase <= p.grad.data_ptr() < gbase + end
    # Writing the flat buffer changes the layers: no hidden copies.
    m.set_weights(np.zeros(NUM_PARAMETERS, dtype=np.float32))
    assert all(float(p.detach().abs().sum()) == 0.0 for p in m.module.parameters())


def test_sgd_step_is_plain_sgd():
    m = FlatModel(init_seed=1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    ref = CNN()
    ref.load_state_dict(m.module.state_dict())
    before = m.get_weights()
    m.sgd_step(x, y, lr=0.05)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    opt.step()
    expected = torch.cat([p.detach().flatten() for p in ref.parameters()]).numpy()
    np.testing.assert_allclose(m.get_weights(), expected, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(before, m.get_weights())


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    a, b = FlatModel(init_seed=42).get_weights(), FlatModel(init_seed=42).get_weights()
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, FlatModel(init_seed=43).get_weights())


def test_set_weights_accepts_read_only_and_rejects_wrong_shape():
    m = FlatModel()
    w = np.full(NUM_PARAMETERS, 0.5, dtype=np.float32)
    w.setflags(write=False)
    m.set_weights(w)
    np.testing.assert_array_equal(m.get_weights(), w)
    with pytest.raises(ValueError, match="expected float32 weights"):
        m.set_weights(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="expected float32 weights"):
        m.set_weights(np.zeros(NUM_PARAMETERS, dtype=np.float64))


def test_evaluate_counts_correct_predictions():
    m = FlatModel(init_seed=0)
    x, y = torch.randn(50, 1, 28, 28), torch.randint(0, 10, (50,))
    loss_sum, correct = m.evaluate(x, y, batch_size=7)
    with torch.no_grad():
        logits = m.module(x)
    assert correct == int((logits.argmax(1) == y).sum())
    assert loss_sum == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y, reduction="sum")), rel=1e-5)
