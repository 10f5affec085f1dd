"""DP-FedAvg's arithmetic (fedactors.privacy): adaptive clipping, its accounting, the pre-flight, the failure that
names DP noise. Pure functions, the command line's --dry-run and an in-process round; an adaptive run killed and
resumed is test_strategy's DP-FedAvg resume test."""

import json
import math

import numpy as np
import pytest

from fedactors.config import RunConfig
from fedactors.errors import ConfigError, RoundFailed

# ---- Adaptive clipping (Andrew et al. 2021) ------------------------------------------------------


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.9])
def test_the_adaptive_clip_converges_to_the_target_quantile_of_the_update_norms(quantile):
    """Synthetic rounds: 200 expected clients, norms log-normal around 3 (the clip starts at 0.1, 30x below),
    the count noised with the paper's sigma_b = 200 / 20. After 300 rounds the clip sits at the norms'
    `quantile`-quantile, and the share of the last 100 rounds' norms it leaves whole is about `quantile`."""
    from fedactors.privacy import next_clip

    rng = np.random.default_rng(0)
    expected, count_noise = 200, 10.0
    clip, clips, below = 0.1, [], []
    for _ in range(300):
        norms = np.exp(rng.normal(math.log(3.0), 0.5, size=rng.poisson(expected)))
        below.append(float(np.mean(norms <= clip)))
        clip = next_clip(clip, norms.tolist(), count_noise * rng.standard_normal(), expected, quantile, 0.2)
        clips.append(clip)
    truth = 3.0 * math.exp(0.5 * _normal_quantile(quantile))
    assert np.median(clips[-100:]) == pytest.approx(truth, rel=0.1)
    assert np.mean(below[-100:]) == pytest.approx(quantile, abs=0.05)


def _normal_quantile(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def test_next_clip_is_the_papers_geometric_step_on_the_centred_noised_count():
    from fedactors.privacy import next_clip

    # 3 of 4 norms <= 1 (the one equal to the clip is not clipped), expected 5 clients, noise 0.5:
    # b = (3 - 4/2 + 0.5) / 5 + 1/2 = 0.8; C = 1 * exp(-0.2 (0.8 - 0.5)).
    assert next_clip(1.0, [0.5, 1.0, 0.9, 1.5], 0.5, 5.0, 0.5, 0.2) == pytest.approx(math.exp(-0.2 * 0.3), rel=1e-15)
    assert next_clip(2.0, [], 0.0, 5.0, 0.5, 0.2) == 2.0  # nobody sampled, no noise: the clip stays


def test_adaptive_clipping_moves_the_clip_as_state_and_resumes_from_it():
    from fedactors import _kernels
    from fedactors.privacy import update_noise_multiplier
    from fedactors.strategy import DPFedAvg, make_strategy

    config = RunConfig(strategy="dp-fedavg", clip="adaptive", clients=200, frac=0.1, dp_seed=5, noise_multiplier=1.0)
    a = make_strategy(config)
    assert isinstance(a, DPFedAvg) and a.adaptive and a.clip == 0.1 and a.count_noise == 1.0  # q K / 20
    assert a.update_noise_multiplier == pytest.approx(update_noise_multiplier(1.0, 1.0)) == pytest.approx(3 ** -0.5 * 2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(500).astype(np.float32)
    updates = [x + rng.standard_normal(500).astype(np.float32) for _ in range(20)]  # norms ~22: all clipped
    first = a.step(x, x, updates, [1] * 20, 1)
    total, _ = _kernels.clipped_sum(updates, x, clip=0.1)
    noise = (first - x) * np.float32(20) - total
    assert 0.9 < float(np.std(noise)) / (0.1 * a.update_noise_multiplier) < 1.1  # the update's noise is z_delta C
    assert a.clip > 0.1  # every norm was above it: it grows
    buffers, scalars = a.state()
    assert json.loads(json.dumps(scalars))["clip"] == a.clip  # a JSON float, exactly
    b = make_strategy(config)
    b.load_state(buffers, json.loads(json.dumps(scalars)))
    assert b.clip == a.clip and b.step(first, first, updates, [1] * 20, 2).tobytes() == a.step(
        first, first, updates, [1] * 20, 2).tobytes()
    assert a.settings() == {"clip": "adaptive", "initial_clip": 0.1, "noise_multiplier": 1.0, "rate": 0.1,
                            "target_quantile": 0.5, "clip_lr": 0.2, "count_noise": 1.0}


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_adaptive_clipping_is_accounted_as_the_composition_of_its_two_gaussian_releases(accountant):
    """The update's sum (multiplier z_delta) and the centred count (std sigma_b, sensitivity 1/2: multiplier
    2 sigma_b) on the same sampled clients: dp-accounting composes the two inside one Poisson-sampled event
    (RDP takes that event directly), and the run reports that, at z. It is more than the update's own noise
    would spend (fixed clipping at z_delta) by the count's share."""
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    from fedactors.privacy import dp_epsilon, update_noise_multiplier
    from fedactors.strategy import make_strategy

    q, z, sigma_b, rounds, delta = 0.1, 1.0, 2.0, 100, 1e-5
    config = RunConfig(strategy="dp-fedavg", clip="adaptive", clients=400, frac=q, noise_multiplier=z,
                       clip_count_noise=sigma_b, accountant=accountant)
    adaptive = make_strategy(config)
    z_delta = update_noise_multiplier(z, sigma_b)
    direct = rdp_privacy_accountant.RdpAccountant()
    direct.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(z_delta), dp_accounting.GaussianDpEvent(2 * sigma_b)])), rounds))
    both = direct.get_epsilon(delta)
    update_alone = dp_epsilon(q, z_delta, rounds, delta, accountant)
    assert adaptive.epsilon(rounds) == dp_epsilon(q, z, rounds, delta, accountant)
    if accountant == "rdp":
        assert adaptive.epsilon(rounds) == pytest.approx(both, rel=1e-9)
    else:  # PLD takes only a Gaussian inside Poisson sampling: the composition is one Gaussian of multiplier z
        assert adaptive.epsilon(rounds) < both
    assert adaptive.epsilon(rounds) > update_alone * 1.01  # the count's release is paid for


@pytest.mark.parametrize(("settings", "message"), [
    ({"clip": "sometimes"}, "--clip must be a positive number or 'adaptive'"),
    ({"clip": 1.0, "target_quantile": 0.5}, "--target-quantile applies to --clip adaptive only"),
    ({"clip": "adaptive", "target_quantile": 1.0}, r"--target-quantile must be in \(0, 1\)"),
    ({"clip": "adaptive", "clip_lr": 0.0}, "--clip-lr must be a positive number"),
    ({"clip": "adaptive", "initial_clip": -1.0}, "--initial-clip must be a positive number"),
    ({"clip": "adaptive", "clip_count_noise": 0.5}, r"sigma_b \(--clip-count-noise\) is 0.5, and must exceed z / 2 = 0.5"),
    ({"clip": "adaptive", "clients": 100}, r"its default q K / 20 = 0.1 x 100 / 20\) is 0.5, and must exceed z / 2"),
    ({"accountant": "moments"}, "--accountant must be one of pld, rdp"),
])
def test_bad_adaptive_and_accountant_settings_are_one_clear_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**{"strategy": "dp-fedavg", "clients": 1000, **settings})


def test_adaptive_settings_count_in_the_fingerprint_only_when_set():
    fixed = RunConfig(strategy="dp-fedavg", clients=1000)
    adaptive = RunConfig(strategy="dp-fedavg", clients=1000, clip="adaptive")
    tuned = RunConfig(strategy="dp-fedavg", clients=1000, clip="adaptive", target_quantile=0.7)
    assert not {"target_quantile", "clip_lr", "initial_clip", "clip_count_noise"} & set(fixed.experiment())
    assert len({fixed.fingerprint({}), adaptive.fingerprint({}), tuned.fingerprint({})}) == 3
    assert tuned.experiment()["target_quantile"] == 0.7


# ---- The pre-flight and the failure that names its cause -----------------------------------------

def test_the_preflight_gives_the_noise_on_the_average_against_the_clip():
    from fedactors.privacy import preflight

    check = preflight(RunConfig(strategy="dp-fedavg"), 1_663_370)  # the issue's: CNN, K = 100, C = 0.1, z = 1, S = 1
    assert check.expected_clients == pytest.approx(10) and check.noise_std == pytest.approx(0.1)
    assert check.noise_norm == pytest.approx(math.sqrt(1_663_370) * 0.1) and 128 < check.noise_norm < 130
    warning = check.warning()
    assert warning.startswith("DP noise outweighs the updates: the noise added to the average has norm ~129, 129x")
    assert "more clients a round" in warning and "--noise-multiplier" in warning and "smaller model" in warning
    calm = preflight(RunConfig(strategy="dp-fedavg", task="mnist-2nn", clients=6000, frac=0.5, noise_multiplier=0.5),
                     199_210)
    assert calm.noise_to_clip == pytest.approx(math.sqrt(199_210) * 0.5 / 3000) and calm.warning() is None


def test_the_default_tasks_dp_dry_run_warns_with_the_numbers_and_strict_refuses(tmp_path, mnist_dir):
    from conftest import fedactors

    plan = fedactors("run", "--strategy", "dp-fedavg", "--clip", "1.0", "--noise-multiplier", "1.0", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert ("privacy: about 10 clients a round (q K); z = 1; noise on the average: std 0.1 a weight, norm ~129 over "
            "1,663,370 weights, against the clip S = 1 (129x)") in plan.stdout
    assert "the 200 rounds would spend epsilon 9.971 at delta 1e-05 (PLD accountant)" in plan.stdout
    assert "warning: DP noise outweighs the updates" in plan.stdout
    out = tmp_path / "strict"
    strict = fedactors("run", "--strategy", "dp-fedavg", "--strict-dp-check", "--out", str(out))
    assert strict.returncode == 2 and strict.stderr.startswith("fedactors: error: --strict-dp-check: DP noise outweighs")
    assert len(strict.stderr.strip().splitlines()) == 1 and not out.exists()  # refused before anything is written


def test_a_dp_round_whose_clients_diverge_names_the_noise(mnist):
    """Noise of std 1e29 a weight on the first average: the next round's clients return NaN, and the round's failure
    says DP noise is the likely cause with the noise-to-clip ratio, not only the generic NaN line."""
    from fedactors.client import ClientHost
    from fedactors.coordinator import Coordinator, LocalPool
    from fedactors.partition import partition
    from fedactors.task import load_arrays, load_task

    cfg = RunConfig(task="digits-mlp", clients=20, frac=0.5, rounds=3, epochs=1, batch_size=10, partition="iid",
                    strategy="dp-fedavg", clip=1.0, noise_multiplier=1e30, dp_seed=1, eval_every=3, accountant="rdp")
    data = load_arrays(load_task(cfg.task), None, None)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed)
    host = ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=0, threads=1)
    coordinator = Coordinator(cfg, LocalPool([host]), num_test=len(data.y_test))
    with pytest.raises(RoundFailed) as failed:
        list(coordinator.run())
    message = str(failed.value)
    ratio = math.sqrt(len(coordinator.weights)) * 1e30 / 10
    # Who was sampled, and how many, stay out of it (README: what a DP run writes).
    assert message.startswith("round 2: sampled clients returned NaN or infinite weights, which are never aggregated, "
                              "leaving fewer updates than --min-fit-fraction 1 of the round's; ")
    assert f"DP noise is the likely cause: each round adds noise of {ratio:.3g}x the clip's norm" in message
