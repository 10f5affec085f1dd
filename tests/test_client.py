import numpy as np
import pytest
import torch

from fedactors.runtime.client import ClientHost, local_update
from fedactors.config import RunConfig
from fedactors.data.partition import partition
from fedactors.model import CNN, FlatModel


def _host(mnist, config, **kw):
    parts = partition(mnist.train_labels, config.clients, config.partition, config.seed)
    return ClientHost(config, mnist.train_images, mnist.train_labels, parts, mnist.test_images, mnist.test_labels, **kw)


def test_local_update_is_minibatch_sgd_reshuffled_every_epoch(mnist):
    x = torch.from_numpy(mnist.train_images[:100].copy())
    y = torch.from_numpy(mnist.train_labels[:100].copy())
    model = FlatModel(init_seed=0)
    ref = CNN()
    ref.load_state_dict(model.module.state_dict())

    local_update(model, x, y, epochs=2, batch_size=30, lr=0.1, rng=np.random.default_rng(9))

    # The oracle: torch's own SGD over the same permutations, batches of 30 with a short last one.
    rng = np.random.default_rng(9)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        order = torch.from_numpy(rng.permutation(100))
        for start in range(0, 100, 30):
            idx = order[start : start + 30]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
    expected = torch.cat([p.detach().flatten() for p in ref.parameters()]).numpy()
    np.testing.assert_allclose(model.get_weights(), expected, rtol=1e-4, atol=1e-5)


def test_full_batch_is_one_step_per_epoch(mnist):
    x = torch.from_numpy(mnist.train_images[:64].copy())
    y = torch.from_numpy(mnist.train_labels[:64].copy())
    a, b = FlatModel(init_seed=3), FlatModel(init_seed=3)
    local_update(a, x, y, epochs=3, batch_size=None, lr=0.1, rng=np.random.default_rng(0))
    for _ in range(3):  # order does not matter for a full-batch gradient, up to float rounding
        b.sgd_step(x, y, lr=0.1)
    np.testing.assert_allclose(a.get_weights(), b.get_weights(), rtol=1e-4, atol=1e-6)


def test_host_trains_any_client_deterministically(mnist):
    cfg = RunConfig(clients=100, partition="noniid", epochs=1, batch_size=50, seed=4)
    host = _host(mnist, cfg)
    w0 = host.initial_weights()
    u = host.train(w0, client_id=17, round_idx=3)
    assert u.client_id == 17 and u.round == 3 and u.num_examples == 600
    assert u.weights.dtype == np.float32 and u.weights.shape == w0.shape
    assert np.isfinite(u.train_loss) and u.train_seconds > 0
    again = _host(mnist, cfg, host_id=1).train(w0, client_id=17, round_idx=3)
    np.testing.assert_array_equal(u.weights, again.weights)  # another host, same bytes
    other_round = host.train(w0, client_id=17, round_idx=4)
    assert not np.array_equal(u.weights, other_round.weights)  # reshuffled by round
    # Updates are copies: training another client does not change a returned update.
    snapshot = u.weights.copy()
    host.train(w0, client_id=18, round_idx=3)
    np.testing.assert_array_equal(u.weights, snapshot)


def test_host_accepts_read_only_global_weights_and_data(mnist):
    cfg = RunConfig(clients=100, partition="iid", epochs=1, batch_size=100)
    ro = [a.view() for a in (mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels)]
    for a in ro:
        a.setflags(write=False)
    parts = partition(mnist.train_labels, 100, "iid", 0)
    host = ClientHost(cfg, ro[0], ro[1], parts, ro[2], ro[3])
    w0 = host.initial_weights()
    w0.setflags(write=False)
    u = host.train(w0, 0, 1)
    part = host.evaluate(u.weights, 0, 500)
    assert part.count == 500 and 0 <= part.correct <= 500


def test_evaluate_slices_add_up(mnist):
    cfg = RunConfig(clients=10, partition="iid", epochs=1, batch_size=50)
    host = _host(mnist, cfg)
    w = host.train(host.initial_weights(), 0, 1).weights
    whole = host.evaluate(w, 0, 2000)
    halves = [host.evaluate(w, 0, 1000), host.evaluate(w, 1000, 2000)]
    assert whole.correct == sum(h.correct for h in halves)
    assert whole.loss_sum == pytest.approx(sum(h.loss_sum for h in halves), rel=1e-5)
    assert whole.correct / whole.count > 0.7  # one epoch on 6000 images already learns


def test_device_choice_falls_back_to_cpu_with_a_reason():
    from fedactors.runtime.client import choose_device

    assert choose_device(0.0, cuda_available=True) == ("cpu", None)
    assert choose_device(0.5, cuda_available=True) == ("cuda", None)
    device, why = choose_device(0.1, cuda_available=False)
    assert device == "cpu" and "torch cannot use CUDA" in why


def test_bf16_on_a_cpu_without_bf16_instructions_is_reported_as_slow():
    from fedactors.runtime.client import precision_warning

    assert "several times slower than fp32" in precision_warning("bf16", "cpu", native_bf16=False)
    assert precision_warning("bf16", "cpu", native_bf16=True) is None
    assert precision_warning("bf16", "cuda", native_bf16=False) is None
    assert precision_warning("fp32", "cpu", native_bf16=False) is None


def test_host_reports_its_warnings():
    import torch

    from fedactors.runtime.client import ClientHost, cpu_has_bf16

    host = ClientHost(RunConfig(clients=10, precision="bf16"), threads=1)
    info = host.describe()
    assert len(info["warnings"]) == (0 if cpu_has_bf16() else 1)
    assert ClientHost(RunConfig(clients=10), threads=1).describe()["warnings"] == []


def test_the_bf16_probe_agrees_with_the_cpu_flags():
    """An oracle independent of torch: the kernel's CPU flags. bf16 instructions (AVX512-BF16, AMX) mean
    native bf16; no AVX-512 at all means none. (AVX-512 without them, e.g. Skylake, oneDNN may count either way.)"""
    from fedactors.runtime.client import cpu_has_bf16

    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    flags = set(next(line for line in cpuinfo if line.startswith("flags")).split(":", 1)[1].split())
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert cpu_has_bf16()
    elif "avx512f" not in flags:
        assert not cpu_has_bf16()


def test_importing_the_module_does_not_import_torch():
    # The coordinator imports this module when it unpickles ClientHost actor handles; torch would
    # cost it seconds and hundreds of MiB for nothing.
    import subprocess
    import sys

    code = "import sys, fedactors.runtime.client, fedactors.runtime.coordinator; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_a_model_with_dropout_trains_to_the_same_bytes_whatever_ran_before_on_the_host():
    """torch's generator (dropout) is keyed by (seed, round, client) while a client trains, like its shuffling."""
    import torch
    from torch import nn

    from fedactors.data.partition import partition
    from fedactors.task import Arrays, Task

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((400, 8)).astype(np.float32), rng.integers(0, 2, 400)
    task = Task(name="dropout", model=lambda: nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.5), nn.Linear(32, 2)),
                load=lambda _: Arrays(x, y, x[:50], y[:50]), num_classes=2)
    cfg = RunConfig(task="dropout", clients=4, partition="iid", epochs=2, batch_size=10)
    parts = partition(y, 4, "iid", 0)
    hosts = [ClientHost(cfg, x, y, parts, x[:50], y[:50], threads=1, task=task) for _ in range(2)]
    w0 = hosts[0].initial_weights()
    torch.rand(1000)  # another history of the global generator on one host
    hosts[0].train(w0, 1, 1)
    a, b = hosts[0].train(w0, 2, 1), hosts[1].train(w0, 2, 1)
    assert a.weights.tobytes() == b.weights.tobytes()
    assert hosts[1].train(w0, 2, 2).weights.tobytes() != a.weights.tobytes()  # another round, other dropout masks


def _linear_hosts(n: int = 1, **settings):
    """Hosts of a small linear task (seconds to train), with the default local update's `settings`."""
    from torch import nn

    from fedactors.data.partition import partition
    from fedactors.task import Arrays, Task

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((400, 8)).astype(np.float32), rng.integers(0, 2, 400)
    task = Task(name="linear", model=lambda: nn.Linear(8, 2), load=lambda _: Arrays(x, y, x[:50], y[:50]),
                num_classes=2)
    cfg = RunConfig(**{"task": "linear", "clients": 4, "partition": "iid", "epochs": 2, "batch_size": 10, **settings})
    parts = partition(y, 4, "iid", 0)
    return [ClientHost(cfg, x, y, parts, x[:50], y[:50], task=task) for _ in range(n)]


def test_a_host_trains_round_t_at_its_scheduled_rate():
    """exp:0.5 from lr 0.1 is lr 0.025 in round 3, to the byte; SCAFFOLD's control variate divides by that rate."""
    for strategy in ("fedavg", "scaffold"):
        scheduled = _linear_hosts(strategy=strategy, lr=0.1, lr_schedule="exp:0.5")[0]
        w0 = scheduled.initial_weights()
        c = np.zeros_like(w0)
        # configure()'s arrays (SCAFFOLD's c) and the client's state (its c_i: none yet, zeros), as the loop hands them
        sent = (((("sent", "c"), ("state", "algorithm/c_i")), c, c) if strategy == "scaffold" else ())
        for round_idx, lr in ((1, 0.1), (3, 0.025)):
            constant = _linear_hosts(strategy=strategy, lr=lr)[0]
            a, b = scheduled.train(w0, 1, round_idx, *sent), constant.train(w0, 1, round_idx, *sent)
            assert a.weights.tobytes() == b.weights.tobytes(), (strategy, round_idx)
            if strategy == "scaffold":
                assert a.sent["control"].tobytes() == b.sent["control"].tobytes()
        assert scheduled.train(w0, 1, 3, *sent).weights.tobytes() != _linear_hosts(strategy=strategy, lr=0.1)[0].train(
            w0, 1, 3, *sent).weights.tobytes()


def test_a_hosts_optimizer_state_starts_fresh_each_local_update():
    """Momentum buffers and Adam moments are not kept between updates: a client trains to the same bytes whatever
    the host trained before, as on a fresh host; weight decay changes the result."""
    for settings in ({"client_optimizer": "momentum"}, {"client_optimizer": "adam", "lr": 0.01}, {"weight_decay": 0.1}):
        used, fresh = _linear_hosts(2, **settings)
        w0 = used.initial_weights()
        used.train(w0, 0, 1)
        used.train(w0, 3, 1)
        assert used.train(w0, 2, 1).weights.tobytes() == fresh.train(w0, 2, 1).weights.tobytes(), settings
        plain = _linear_hosts(lr=settings.get("lr"))[0]
        assert fresh.train(w0, 2, 1).weights.tobytes() != plain.train(w0, 2, 1).weights.tobytes(), settings
