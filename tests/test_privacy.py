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
    from fedactors.runtime.client import ClientHost
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
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


# ---- DP-FedAvg with a server optimizer (DP-FedAvgM, DP-FedAdam, ...: issue 35) -------------------------------------

@pytest.mark.parametrize(("optimizer", "clip"), [("fedavgm", 1.0), ("fedadam", "adaptive"), ("fedyogi", 0.5)])
def test_dp_with_a_server_optimizer_is_dp_fedavgs_noised_average_then_the_optimizers_step(optimizer, clip):
    """The same secret keys the same sampling and noise: plain DP-FedAvg's step gives the noised average, and the
    optimizer's step on it (its NumPy oracle, computed here) gives the new weights, to the byte, round after round
    (the moments carried over), with the same clip moving under --clip adaptive."""
    from fedactors.strategy import DPFedAvg, make_strategy, server_step_reference

    settings = dict(strategy="dp-fedavg", clients=200, frac=0.1, dp_seed=11, clip=clip, noise_multiplier=1.0)
    composed = make_strategy(RunConfig(**settings, server_optimizer=optimizer, server_lr=0.5))
    plain = make_strategy(RunConfig(**settings))
    assert isinstance(composed, DPFedAvg) and composed.optimizer.name == optimizer and plain.optimizer is None
    rng = np.random.default_rng(3)
    x = rng.standard_normal(300).astype(np.float32)
    m, v = np.zeros_like(x), (None if optimizer == "fedavgm" else np.zeros_like(x))
    beta1 = 0.9  # --server-momentum and --beta1 both default to 0.9
    for round_idx in range(1, 5):
        updates = [x + rng.standard_normal(300).astype(np.float32) * s for s in (0.1, 0.5, 2.0)]
        noised = plain.step(x, x, updates, [1, 1, 1], round_idx)
        expected = server_step_reference(optimizer, noised, x, m, v, lr=0.5, beta1=beta1, beta2=0.99, tau=1e-3)
        got = composed.step(x, x, updates, [1, 1, 1], round_idx)
        assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()
        assert got.tobytes() != noised.tobytes()  # the optimizer did take a step of its own
        assert composed.clip == plain.clip and composed.last_norms == plain.last_norms
        x = got
    assert composed.optimizer.m.tobytes() == m.tobytes()


def test_the_server_optimizers_state_is_namespaced_and_resumes_bit_exactly():
    """Its moments are DP-FedAvg's state under server-optimizer/, beside the secret and the clip: a strategy loaded
    from that state steps as the one that wrote it; the identity gains the optimizer only when there is one."""
    from fedactors.strategy import OPTIMIZER_PREFIX, make_strategy

    config = RunConfig(strategy="dp-fedavg", clients=200, frac=0.1, dp_seed=2, clip="adaptive",
                       server_optimizer="fedadam")
    a = make_strategy(config)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(100).astype(np.float32)
    updates = [x + rng.standard_normal(100).astype(np.float32) for _ in range(4)]
    x = a.step(x, x, updates, [1] * 4, 1)
    buffers, scalars = a.state()
    assert sorted(buffers) == [OPTIMIZER_PREFIX + "m", OPTIMIZER_PREFIX + "v"] == ["server-optimizer/m",
                                                                                     "server-optimizer/v"]
    assert {"secret", "clip", "rounds_accounted"} <= set(scalars)
    b = make_strategy(config)
    b.load_state({k: v.copy() for k, v in buffers.items()}, json.loads(json.dumps(scalars)))
    assert b.step(x, x, updates, [1] * 4, 2).tobytes() == a.step(x, x, updates, [1] * 4, 2).tobytes()
    assert a.settings()["optimizer"] == {"name": "fedadam", "lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    assert "optimizer" not in make_strategy(RunConfig(strategy="dp-fedavg", dp_seed=2)).settings()


@pytest.mark.parametrize("optimizer", ["fedavgm", "fedadagrad", "fedadam", "fedyogi"])
def test_a_server_optimizer_is_post_processing_the_epsilon_and_preflight_are_dp_fedavgs(optimizer):
    from fedactors.privacy import dp_epsilon, preflight
    from fedactors.strategy import make_strategy

    for clip in (1.0, "adaptive"):
        plain = RunConfig(strategy="dp-fedavg", clients=1000, frac=0.1, clip=clip, noise_multiplier=1.0, rounds=200)
        composed = RunConfig(**{**plain.to_dict(), "server_optimizer": optimizer})
        assert make_strategy(composed).optimizer.name == optimizer  # the optimizer is there, and spends nothing
        assert make_strategy(composed).epsilon(200) == make_strategy(plain).epsilon(200) == dp_epsilon(
            0.1, 1.0, 200, 1e-5, "pld")
        assert preflight(composed, 199_210) == preflight(plain, 199_210)


def test_no_server_optimizer_leaves_every_dp_runs_identity_as_it_was():
    """--server-optimizer fedavg (the default, none) is stored as None: the committed DP runs' strategy settings (in
    their identity) come out as their run.json recorded them, and the field stays out of their fingerprint."""
    from pathlib import Path

    from fedactors.strategy import make_strategy

    runs = sorted((Path(__file__).resolve().parent.parent / "docs" / "runs").glob("dp-*/run.json"))
    assert len(runs) >= 9
    for path in runs:
        run = json.loads(path.read_text())
        if run["config"].get("server_optimizer"):
            continue
        configs = [RunConfig.from_dict({**run["config"], **extra}) for extra in ({}, {"server_optimizer": "fedavg"})]
        assert configs[1].server_optimizer is None and configs[1].to_dict() == configs[0].to_dict()
        assert "server_optimizer" not in configs[1].experiment()
        assert configs[1].fingerprint(run["identity"]) == configs[0].fingerprint(run["identity"])
        for config in configs:
            assert make_strategy(config).settings() == run["identity"]["strategy"]["settings"], path
    with_one = RunConfig(strategy="dp-fedavg", server_optimizer="fedavgm")
    assert with_one.experiment()["server_optimizer"] == "fedavgm"
    assert with_one.fingerprint({}) != RunConfig(strategy="dp-fedavg").fingerprint({})


def test_dp_fedavgm_with_adaptive_clipping_resumes_bit_exactly_from_a_mid_run_checkpoint(redis_server):
    """In process (LocalPool), checkpoints in a real Redis: 2 rounds, then 2 more from round 2's checkpoint (its
    momentum, clip and secret), against 4 in one go."""
    from fedactors.store.checkpoint import RedisStore
    from fedactors.runtime.client import ClientHost
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
    from fedactors.strategy import make_strategy
    from fedactors.task import load_arrays, load_task

    def make(rounds, **more):
        cfg = RunConfig(task="digits-mlp", clients=40, frac=0.25, rounds=rounds, epochs=1, batch_size=10, lr=0.1,
                        partition="iid", strategy="dp-fedavg", clip="adaptive", noise_multiplier=0.5,
                        clip_count_noise=1.0, dp_seed=9, server_optimizer="fedavgm", server_lr=0.5, eval_every=2,
                        accountant="rdp")
        data = load_arrays(load_task(cfg.task), None, None)
        parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed)
        hosts = [ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, host_id=i, threads=1)
                 for i in range(2)]
        return Coordinator(cfg, LocalPool(hosts), num_test=len(data.y_test), **more)

    straight = list(make(4).run())
    with RedisStore(redis_server.url, retry_seconds=5) as store:
        list(make(2, store=store, run_id="dpm").run())
        ckpt, _ = store.latest("dpm")
    buffers, scalars, _ = ckpt.strategy_state()
    assert ckpt.round == 2 and sorted(buffers) == ["server-optimizer/m"] and "clip" in scalars
    cfg = RunConfig.from_dict(ckpt.config)
    strategy = make_strategy(cfg)
    rest = list(make(4, start_round=2, weights=ckpt.weights.copy(), strategy=strategy,
                     strategy_state=ckpt.strategy_state()).run())
    assert rest[-1]["weights"].tobytes() == straight[-1]["weights"].tobytes()
    assert strategy.optimizer.m is not None and strategy.clip != 0.1  # the clip moved, and came back with the state
    # What each round reports is the same (its epsilon plain DP-FedAvg's, the clip it used), resumed or not.
    from fedactors.privacy import dp_epsilon

    def rounds(events):
        return [(e["round"], e["epsilon"], e["clip"], e["accuracy"]) for e in events if e["type"] == "round"]

    assert rounds(straight)[2:] == rounds(rest) and rounds(rest)[-1][1] == dp_epsilon(0.25, 0.5, 4, 1e-5, "rdp")


@pytest.mark.parametrize(("flags", "message"), [
    (["--server-optimizer", "fedadam"], "--server-optimizer applies to --strategy dp-fedavg or fedbuff only, not fedavg"),
    (["--strategy", "fedprox", "--server-optimizer", "fedavgm"], "--server-optimizer applies to --strategy dp-fedavg or "
                                                                  "fedbuff only, not fedprox"),
    (["--strategy", "dp-fedavg", "--server-momentum", "0.5"], "--server-momentum with --strategy dp-fedavg needs "
                                                              "--server-optimizer fedavgm"),
    (["--strategy", "dp-fedavg", "--server-lr", "0.5"], "--server-lr with --strategy dp-fedavg needs --server-optimizer "
                                                        "fedavgm or fedadagrad or fedadam or fedyogi"),
    (["--strategy", "dp-fedavg", "--server-optimizer", "fedavg", "--tau", "0.01"], "--tau with --strategy dp-fedavg "
                                                                                   "needs --server-optimizer fedadagrad"),
    (["--strategy", "dp-fedavg", "--server-optimizer", "fedadam", "--server-momentum", "0.5"],
     "--server-momentum with --strategy dp-fedavg needs --server-optimizer fedavgm"),
    (["--strategy", "dp-fedavg", "--server-optimizer", "fedadam", "--aggregator", "median"],
     "dp-fedavg clips and sums the updates itself: it needs --aggregator fedavg"),
    (["--strategy", "dp-fedavg", "--server-optimizer", "fedavgm", "--client-speed", "lognormal:1"],
     "--strategy dp-fedavg does not run on the virtual clock"),
])
def test_what_a_server_optimizer_does_not_go_with_is_one_line_exit_2(flags, message, tmp_path, monkeypatch, capsys):
    from conftest import run_main

    out = tmp_path / "x"
    status, _, err = run_main(monkeypatch, capsys, "run", "--task", "digits-mlp", *flags, "--out", str(out),
                              "--dry-run")
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_the_docs_and_help_say_what_dp_takes_a_server_optimizer_with():
    from pathlib import Path

    from click.testing import CliRunner

    from fedactors.cli import cli

    section = (Path(__file__).resolve().parent.parent / "docs" / "privacy.md").read_text()  # the guide's DP page
    assert "--strategy dp-fedavg --server-optimizer" in section and "post-processing" in section
    assert "--server-optimizer" in section.split("## Adaptive clipping")[0]
    help_text = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "dp-fedavg: its step on the noised average's" in help_text


def test_a_dp_runs_report_label_names_its_server_optimizer():
    from fedactors.results.report import config_label

    plain = RunConfig(strategy="dp-fedavg", clients=1000).to_dict()
    assert config_label(plain).endswith("K=1000 dp(S=1,z=1)")
    assert config_label({**plain, "server_optimizer": "fedadam"}).endswith("K=1000 dp(S=1,z=1)+fedadam")
    assert config_label({**plain, "server_optimizer": "fedavgm", "server_lr": 0.5}).endswith(
        "dp(S=1,z=1)+fedavgm server_lr=0.5")
