"""The default local update's optimizers and learning-rate schedules (fedactors.algorithms.local): each against plain torch or
its formula, the default's bytes and fingerprint as before, bad settings refused in one line, and a resume bit-exact."""

import hashlib
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedactors.runtime.client import local_update
from fedactors.config import RunConfig
from fedactors.errors import ConfigError
from fedactors.algorithms.local import LocalSettings, optimizer_step, parse_schedule
from fedactors.model import CNN, FlatModel

from conftest import run_main


def _batches(mnist, n=100):
    return torch.from_numpy(mnist.train_images[:n].copy()), torch.from_numpy(mnist.train_labels[:n].copy())


def _settings(**kw) -> LocalSettings:
    return LocalSettings.of(RunConfig(**{"lr": 0.05, "rounds": 10, **kw}))


@pytest.mark.parametrize(("settings", "reference"), [
    ({"client_optimizer": "momentum"}, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ({"client_optimizer": "momentum", "client_momentum": 0.5, "weight_decay": 1e-3},
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=1e-3)),
    ({"client_optimizer": "adam"}, lambda p: torch.optim.Adam(p, lr=0.05)),
    ({"client_optimizer": "adam", "weight_decay": 1e-2}, lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=1e-2)),
    ({"weight_decay": 1e-2}, lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=1e-2)),
])
def test_a_local_update_with_each_optimizer_is_plain_torch_on_the_same_batches(mnist, settings, reference):
    # Prepare: the flat model and an ordinary CNN with the same weights; the batches local_update will draw.
    x, y = _batches(mnist)
    model, plain = FlatModel(init_seed=0), FlatModel(init_seed=0)
    ref = CNN()
    ref.load_state_dict(model.module.state_dict())
    local = _settings(**settings)
    # Execute
    local_update(model, x, y, epochs=2, batch_size=30, lr=local.rates(1), rng=np.random.default_rng(9),
                 optimizer=local.make_optimizer(model))
    local_update(plain, x, y, epochs=2, batch_size=30, lr=0.05, rng=np.random.default_rng(9))
    # The oracle: torch's optimizer over the module's own parameters, the same permutations, batches of 30.
    rng, opt = np.random.default_rng(9), reference(ref.parameters())
    for _ in range(2):
        order = torch.from_numpy(rng.permutation(100))
        for start in range(0, 100, 30):
            idx = order[start : start + 30]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
    expected = torch.cat([p.detach().flatten() for p in ref.parameters()]).numpy()
    # Assert: the same bytes as torch's, and not plain SGD's.
    assert model.get_weights().tobytes() == expected.tobytes()
    assert np.abs(model.get_weights() - plain.get_weights()).max() > 1e-4


def test_the_optimizer_path_with_plain_sgd_is_the_models_own_sgd_step(mnist):
    """optimizer_step repeats FlatModel.sgd_step's forward and backward: held to its bytes, with a gradient hook."""
    x, y = _batches(mnist, 40)
    a, b = FlatModel(init_seed=1), FlatModel(init_seed=1)
    opt = torch.optim.SGD([p for p in b.module.parameters() if p.requires_grad], lr=1.0)

    def hook(model):
        return lambda: model.grads.mul_(0.5)

    for start in (0, 20):
        la = a.sgd_step(x[start : start + 20], y[start : start + 20], 0.1, hook(a))
        lb = optimizer_step(b, x[start : start + 20], y[start : start + 20], opt, 0.1, hook(b))
        assert la == lb
    assert a.get_weights().tobytes() == b.get_weights().tobytes()


def test_plain_sgd_makes_no_torch_optimizer_and_the_default_is_the_old_fingerprint():
    assert _settings().make_optimizer(FlatModel(init_seed=0)) is None
    assert _settings(lr_schedule="exp:0.9", lr_warmup_steps=3).plain  # a schedule keeps the model's own step
    default = RunConfig()
    assert RunConfig(client_optimizer="sgd", client_momentum=0.9, weight_decay=0.0, lr_schedule="constant",
                     lr_warmup_steps=0).fingerprint({}) == default.fingerprint({})
    # The fingerprint an old fedactors computed (tests/test_strategy.py: the same sha256 over the same fields).
    old = {k: v for k, v in default.to_dict().items() if k in (
        "task", "data", "clients", "frac", "epochs", "batch_size", "lr", "partition", "shards_per_client", "alpha",
        "sigma", "seed", "aggregator", "trim_fraction", "krum_f", "byzantine", "attack", "attack_scale", "precision",
        "strategy", "server_lr", "server_momentum", "beta1", "beta2", "tau", "mu", "clip", "noise_multiplier")}
    old.update(identity={}, sum="exact-2^-32")
    assert default.fingerprint({}) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    for change in ({"client_optimizer": "adam"}, {"client_optimizer": "momentum", "client_momentum": 0.5},
                   {"weight_decay": 1e-4}, {"lr_schedule": "exp:0.99"}, {"lr_warmup_steps": 5}):
        assert RunConfig(**change).fingerprint({}) != default.fingerprint({}), change
    # Cosine decays over the rounds: they are part of what it computes; another schedule's are not.
    assert RunConfig(lr_schedule="cosine", rounds=10).fingerprint({}) != RunConfig(lr_schedule="cosine",
                                                                                   rounds=20).fingerprint({})
    assert RunConfig(lr_schedule="exp:0.9", rounds=10).fingerprint({}) == RunConfig(lr_schedule="exp:0.9",
                                                                                    rounds=20).fingerprint({})


def test_each_schedule_gives_round_t_its_formula():
    lr, T = 0.05, 10
    for t in range(1, T + 1):
        assert _settings().round_lr(t) == lr
        assert _settings(lr_schedule="exp:0.9").round_lr(t) == pytest.approx(lr * 0.9 ** (t - 1), rel=1e-12)
        assert _settings(lr_schedule="step:3:0.5").round_lr(t) == pytest.approx(
            lr * {1: 1, 2: 1, 3: 1, 4: 0.5, 5: 0.5, 6: 0.5, 7: 0.25, 8: 0.25, 9: 0.25, 10: 0.125}[t], rel=1e-12)
        cosine = lr * (0.1 + 0.9 * (1 + math.cos(math.pi * (t - 1) / T)) / 2)
        assert _settings(lr_schedule="cosine:0.1").round_lr(t) == pytest.approx(cosine, rel=1e-12)
    assert _settings(lr_schedule="cosine").round_lr(1) == lr
    assert _settings(lr_schedule="cosine").round_lr(6) == pytest.approx(lr / 2, rel=1e-12)  # half way down
    # Warm-up: (k + 1) / N of the round's rate at step k, then the round's.
    warm = _settings(lr_schedule="exp:0.5", lr_warmup_steps=4)
    assert [warm.step_lr(2, k) for k in range(6)] == pytest.approx([lr / 2 * f for f in (0.25, 0.5, 0.75, 1, 1, 1)])
    assert warm.lr_sum(2, 6) == pytest.approx(lr / 2 * 4.5)


def test_a_warm_up_steps_with_each_steps_rate(mnist):
    x, y = _batches(mnist, 60)
    a, b = FlatModel(init_seed=2), FlatModel(init_seed=2)
    local_update(a, x, y, epochs=2, batch_size=20, lr=_settings(lr_warmup_steps=4).rates(1),
                 rng=np.random.default_rng(3))
    rng = np.random.default_rng(3)
    rates = iter([0.0125, 0.025, 0.0375, 0.05, 0.05, 0.05])
    for _ in range(2):
        order = torch.from_numpy(rng.permutation(60))
        for start in range(0, 60, 20):
            b.sgd_step(x[order[start : start + 20]], y[order[start : start + 20]], next(rates))
    assert a.get_weights().tobytes() == b.get_weights().tobytes()


@pytest.mark.parametrize(("flags", "message"), [
    (["--client-optimizer", "rmsprop"], "Invalid value for '--client-optimizer': 'rmsprop' is not one of"),
    (["--client-optimizer", "momentum", "--client-momentum", "1.0"], "--client-momentum must be in [0, 1), got 1.0"),
    (["--client-momentum", "0.5"], "--client-momentum applies to --client-optimizer momentum only, not sgd"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a number >= 0, got -0.1"),
    (["--weight-decay", "nan"], "--weight-decay must be a number >= 0, got nan"),
    (["--lr-schedule", "exp:1.5"], "--lr-schedule exp:1.5: GAMMA must be in (0, 1], got 1.5"),
    (["--lr-schedule", "exp:0"], "--lr-schedule exp:0: GAMMA must be in (0, 1], got 0"),
    (["--lr-schedule", "step:0:0.5"], "--lr-schedule step:0:0.5: EVERY must be a positive number of rounds, got 0"),
    (["--lr-schedule", "step:2"], "--lr-schedule must be constant, exp:GAMMA, step:EVERY:GAMMA or cosine"),
    (["--lr-schedule", "linear"], "--lr-schedule must be constant, exp:GAMMA, step:EVERY:GAMMA or cosine"),
    (["--lr-schedule", "cosine:2", "--rounds", "9"], "--lr-schedule cosine:2: MIN_FRACTION must be in [0, 1], got 2"),
    (["--lr-schedule", "cosine"], "--lr-schedule cosine decays over the run's rounds: give --rounds"),
    (["--lr-warmup-steps", "-1"], "--lr-warmup-steps must be an integer >= 0, got -1"),
    (["--strategy", "scaffold", "--client-optimizer", "momentum"],
     "--client-optimizer momentum does not go with --strategy scaffold: its control variate"),
    (["--strategy", "fedbuff", "--lr-schedule", "exp:0.9"], "--lr-schedule exp:0.9 does not go with --strategy fedbuff"),
])
def test_bad_local_settings_are_one_line_and_exit_2(monkeypatch, capsys, tmp_path, flags, message):
    code, out, err = run_main(monkeypatch, capsys, "run", "--dry-run", "--out", str(tmp_path / "x"), *flags)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_the_python_api_takes_and_checks_the_same_settings(tmp_path):
    import fedactors

    with pytest.raises(ConfigError, match="--client-optimizer must be one of sgd, momentum, adam, got 'sgdm'"):
        fedactors.run("digits-mlp", client_optimizer="sgdm", out=tmp_path / "x")
    with pytest.raises(ConfigError, match="--lr-schedule cosine decays over the run's rounds: give --rounds"):
        fedactors.run("digits-mlp", lr_schedule="cosine", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert parse_schedule("step:5:0.5").every == 5


def test_run_help_documents_every_local_setting(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "run", "--help")
    assert code == 0
    for flag in ("--client-optimizer", "--client-momentum", "--weight-decay", "--lr-schedule", "--lr-warmup-steps"):
        assert flag in out


def test_a_cosine_runs_rounds_cannot_change_on_resume():
    from fedactors.api import resumed_config

    config = RunConfig(lr_schedule="cosine", rounds=10)
    ckpt = SimpleNamespace(config=config.to_dict(), extra={"identity": {}}, fingerprint=config.fingerprint({}), round=4)
    with pytest.raises(ConfigError, match="--rounds 20 differs from run r's 10: its --lr-schedule cosine decays over"):
        resumed_config(ckpt, {"rounds": 20}, "r")
    with pytest.raises(ConfigError, match="--client-optimizer adam differs from run r's sgd"):
        resumed_config(ckpt, {"client_optimizer": "adam"}, "r")
    assert resumed_config(ckpt, {"rounds": 10}, "r").rounds == 10
    # A checkpoint written before these settings existed resumes with the defaults.
    old = RunConfig()
    saved = {k: v for k, v in old.to_dict().items() if k not in ("client_optimizer", "client_momentum", "weight_decay",
                                                                 "lr_schedule", "lr_warmup_steps")}
    before = SimpleNamespace(config=saved, extra={"identity": {}}, fingerprint=old.fingerprint({}), round=4)
    assert resumed_config(before, {}, "r").client_optimizer == "sgd"


def test_the_report_labels_a_runs_local_optimizer_and_schedule():
    from fedactors.results.report import config_label

    plain = config_label(RunConfig().to_dict())
    tuned = config_label(RunConfig(client_optimizer="momentum", weight_decay=1e-4, lr_schedule="exp:0.99",
                                   lr_warmup_steps=5).to_dict())
    assert tuned == plain + " momentum(0.9) wd=0.0001 lr:exp:0.99 warmup=5"
    assert config_label(RunConfig(client_optimizer="adam").to_dict()) == plain + " adam"


def test_a_run_with_momentum_and_a_schedule_resumed_from_a_checkpoint_is_bit_exact(redis_server):
    """Stopped after round 3 (its last), its checkpoint in a real Redis, resumed to round 6 by new hosts with the
    configuration --resume reads from the checkpoint (api.resumed_config): the bytes and metrics of a run that went
    to 6 at once. In process (LocalPool): the Ray and --resume path around it is the same for every setting, and run
    by tests/test_resume.py and tests/test_strategy.py."""
    from fedactors.api import resumed_config
    from fedactors.store.checkpoint import RedisStore
    from test_strategy import in_process_run

    common = ["--task", "digits-mlp", "--clients", "10", "--frac", "0.5", "--partition", "dirichlet", "--alpha", "1.0",
              "--epochs", "2", "--batch-size", "10", "--lr", "0.05", "--eval-every", "3", "--hosts", "2"]
    local = ["--client-optimizer", "momentum", "--weight-decay", "1e-4", "--lr-schedule", "step:2:0.5",
             "--lr-warmup-steps", "3"]
    threads = torch.get_num_threads()
    try:
        with RedisStore(redis_server.url, retry_seconds=5) as store:
            cfg, first = in_process_run([*common, *local], 3, store=store, run_id="a", identity={})
            first.fingerprint = cfg.fingerprint({})
            stopped = list(first.run())[-1]["weights"]
            ckpt, _ = store.latest("a")
        resumed = resumed_config(ckpt, {"rounds": 6}, "a")
        assert (resumed.client_optimizer, resumed.weight_decay, resumed.lr_schedule, resumed.lr_warmup_steps) == (
            "momentum", 1e-4, "step:2:0.5", 3)
        _, rest = in_process_run([*common, *local], 6, config=resumed, start_round=ckpt.round,
                                 weights=ckpt.weights.copy(), history=ckpt.history)
        weights = list(rest.run())[-1]["weights"]
        _, straight = in_process_run([*common, *local], 6)
        expected = list(straight.run())[-1]["weights"]
        _, plain = in_process_run(common, 3)
        plain_weights = list(plain.run())[-1]["weights"]
    finally:
        torch.set_num_threads(threads)
    assert [r["round"] for r in rest.history] == [3, 6]
    assert weights.tobytes() == expected.tobytes()
    assert [(r["accuracy"], r["loss"], r["train_loss"]) for r in rest.history] == [
        (r["accuracy"], r["loss"], r["train_loss"]) for r in straight.history]
    assert plain_weights.tobytes() != stopped.tobytes()  # the settings reached the hosts
