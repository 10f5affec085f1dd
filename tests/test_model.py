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


def test_bf16_computes_in_bfloat16_but_keeps_float32_master_weights():
    x, y = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 10
    fp32, bf16 = FlatModel(init_seed=2), FlatModel(init_seed=2, precision="bf16")
    before = bf16.get_weights()
    losses = [bf16.sgd_step(x, y, lr=0.05) for _ in range(5)]
    fp32.sgd_step(x, y, lr=0.05)
    assert bf16.params.dtype == torch.float32 and bf16.grads.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in bf16.module.parameters())
    assert losses[-1] < losses[0]  # it learns
    # Not the fp32 arithmetic (bf16 rounding shows) but close to it: the same step, in lower precision.
    step_bf16, step_fp32 = bf16.get_weights() - before, fp32.get_weights() - before
    assert not np.array_equal(FlatModel(init_seed=2, precision="bf16").get_weights(), step_bf16)
    first = FlatModel(init_seed=2, precision="bf16")
    first.sgd_step(x, y, lr=0.05)
    one_step = first.get_weights() - before
    assert not np.array_equal(one_step, step_fp32)
    cos = float(one_step @ step_fp32 / (np.linalg.norm(one_step) * np.linalg.norm(step_fp32)))
    assert cos > 0.99
    loss_sum, correct = bf16.evaluate(x, y)
    assert np.isfinite(loss_sum) and 0 <= correct <= 16


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be fp32 or bf16"):
        FlatModel(precision="fp16")


# ---- Frozen parameters: only what trains travels ---------------------------------------------------

def frozen_body():
    """A 4-16 body whose first layer is frozen, a trainable 16-3 head: 4*16+16 frozen, 16*3+3 trained."""
    from torch import nn

    body = nn.Linear(4, 16)
    body.requires_grad_(False)
    return nn.Sequential(body, nn.ReLU(), nn.Linear(16, 3))


def test_frozen_parameters_are_not_in_the_flat_buffer():
    m = FlatModel(frozen_body, init_seed=0)
    assert m.size == m.params.numel() == m.grads.numel() == 16 * 3 + 3
    assert m.frozen == ["0.weight", "0.bias"] and m.frozen_floats() == 4 * 16 + 16
    assert m.shapes == [[3, 16], [3]]
    end = m.params.data_ptr() + 4 * m.size
    for p in m.module[0].parameters():  # ordinary tensors of their own, not views into the buffer
        assert not m.params.data_ptr() <= p.data_ptr() < end


def test_sgd_step_moves_the_trained_parameters_and_leaves_the_frozen_ones():
    m = FlatModel(frozen_body, init_seed=1)
    ref = frozen_body()
    ref.load_state_dict(m.module.state_dict())  # copies: the same model, trained by torch's own SGD below
    frozen = [p.detach().clone() for p in m.module[0].parameters()]
    before = m.get_weights()
    x, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 3
    m.sgd_step(x, y, lr=0.1)
    assert not np.array_equal(before, m.get_weights())
    for was, p in zip(frozen, m.module[0].parameters()):
        assert torch.equal(was, p) and p.grad is None  # autograd never touched it
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.1).step()
    expected = torch.cat([ref[2].weight.detach().flatten(), ref[2].bias.detach()]).numpy()
    np.testing.assert_allclose(m.get_weights(), expected, rtol=1e-6, atol=1e-7)


def test_the_same_factory_and_seed_give_the_same_frozen_parameters():
    a, b, c = FlatModel(frozen_body, init_seed=7), FlatModel(frozen_body, init_seed=7), FlatModel(frozen_body, init_seed=8)
    for p, q in zip(a.module[0].parameters(), b.module[0].parameters()):
        assert torch.equal(p, q)
    assert a.frozen_digest() == b.frozen_digest() != c.frozen_digest()
    assert FlatModel(init_seed=0).frozen == []  # the paper's CNN: everything trains, as before


def test_a_model_whose_every_parameter_is_frozen_is_refused_with_one_line():
    from torch import nn

    from fedactors.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        FlatModel(lambda: nn.Linear(4, 3).requires_grad_(False))
    assert "every one is frozen (requires_grad=False)" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
