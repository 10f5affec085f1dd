import math

import pytest

from fedactors.config import RunConfig, parse_batch_size
from fedactors.errors import ConfigError


def test_defaults_are_the_papers_canonical_setup():
    cfg = RunConfig()
    assert (cfg.clients, cfg.frac, cfg.epochs, cfg.batch_size, cfg.partition) == (100, 0.1, 5, 10, "noniid")
    assert cfg.clients_per_round == 10


@pytest.mark.parametrize(
    ("frac", "clients", "m"),
    [(0.1, 100, 10), (1.0, 10, 10), (0.001, 100, 1), (0.05, 10, 1), (0.25, 10, 3), (0.15, 10, 2)],
)
def test_clients_per_round_rounds_halves_up_and_is_at_least_one(frac, clients, m):
    assert RunConfig(frac=frac, clients=clients, partition="iid").clients_per_round == m


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frac": 0.0}, r"--frac must be in \(0, 1\]"),
        ({"frac": 1.5}, r"--frac must be in \(0, 1\]"),
        ({"frac": math.nan}, r"--frac"),
        ({"clients": 0}, r"--clients must be a positive integer"),
        ({"rounds": -1}, r"--rounds must be a positive integer"),
        ({"epochs": 0}, r"--epochs must be a positive integer"),
        ({"batch_size": 0}, r"--batch-size must be a positive integer"),
        ({"lr": 0.0}, r"--lr must be a positive"),
        ({"lr": math.inf}, r"--lr must be a positive"),
        ({"target": 1.2}, r"--target"),
        ({"seed": -3}, r"--seed"),
        ({"hosts": 0}, r"--hosts must be a positive integer"),
        ({"eval_every": 0}, r"--eval-every"),
        ({"partition": "federated"}, r"--partition must be one of iid, noniid, shards, dirichlet, unbalanced"),
        ({"alpha": 0.0}, r"--alpha must be a positive number"),
        ({"sigma": -1.0}, r"--sigma must be a number >= 0"),
        ({"shards_per_client": 0}, r"--shards-per-client must be a positive integer"),
        ({"task": ""}, r"--task must name a task"),
        ({"data": "x.npz"}, r"--data must be npz:PATH"),
        ({"cpus_per_host": 0}, r"--cpus-per-host must be positive"),
        ({"gpus_per_host": -0.1}, r"--gpus-per-host must be >= 0"),
        ({"gpus_per_host": 1.5}, r"--gpus-per-host above 1 must be a whole number"),
        ({"min_fit_fraction": 0.0}, r"--min-fit-fraction must be in \(0, 1\]"),
        ({"round_timeout": 0}, r"--round-timeout must be a positive"),
        ({"checkpoint_every": 0}, r"--checkpoint-every must be a positive integer"),
        ({"keep": 0}, r"--keep must be a positive integer"),
        ({"aggregator": "bulyan"}, r"--aggregator must be one of fedavg, median, trimmed-mean, krum, multi-krum"),
        ({"trim_fraction": 0.5}, r"--trim-fraction must be in \[0, 0.5\)"),
        ({"trim_fraction": -0.1}, r"--trim-fraction must be in \[0, 0.5\)"),
        ({"byzantine": 100}, r"--byzantine must be an integer in \[0, --clients\)"),
        ({"byzantine": -1}, r"--byzantine must be an integer"),
        ({"attack": "label-flip"}, r"--attack must be one of sign-flip, gaussian, nan"),
        ({"attack_scale": 0.0}, r"--attack-scale must be a positive finite number"),
        ({"precision": "fp16"}, r"--precision must be one of fp32, bf16"),
    ],
)
def test_out_of_range_values_name_the_flag(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**kwargs)


def test_any_k_is_accepted_the_data_decides_later():
    assert RunConfig(clients=300, partition="noniid").clients == 300  # 600 shards of 100
    assert RunConfig(clients=7, partition="iid").clients == 7  # 8572 or 8571 each (fedactors.data.partition)


@pytest.mark.parametrize(("text", "value"), [("10", 10), ("inf", None), ("INF", None), ("full", None),
                                             (10, 10), (None, None), (float("inf"), None)])
def test_parse_batch_size(text, value):
    assert parse_batch_size(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "ten", "1.5", 0, True, 1.5, float("-inf")])
def test_parse_batch_size_rejects(text):
    with pytest.raises(ConfigError, match="--batch-size"):
        parse_batch_size(text)


def test_dict_round_trip_and_fingerprint():
    cfg = RunConfig(batch_size=None, rounds=3, hosts=2)
    d = cfg.to_dict()
    assert d["batch_size"] == "inf"
    assert RunConfig.from_dict(d) == cfg
    ident = {"digest": "d" * 64, "parameters": [[10, 4]], "weights": 40}
    # rounds, hosts, address, data dir do not change what is computed; lr, seed, B do.
    assert cfg.fingerprint(ident) == RunConfig(batch_size=None, rounds=50, hosts=1, address="auto").fingerprint(ident)
    assert cfg.fingerprint(ident) != RunConfig(batch_size=None, rounds=3, seed=1).fingerprint(ident)
    assert cfg.fingerprint(ident) != RunConfig(batch_size=50, rounds=3).fingerprint(ident)
    assert cfg.fingerprint(ident) != RunConfig(batch_size=None, lr=0.05).fingerprint(ident)
    # So do the aggregator, the faulty clients, the precision, the task, the data and the partition's settings.
    for change in ({"aggregator": "median"}, {"byzantine": 2}, {"attack": "nan"}, {"attack_scale": 3.0},
                   {"trim_fraction": 0.2}, {"precision": "bf16"}, {"task": "mnist-2nn"}, {"data": "npz:x.npz"},
                   {"alpha": 0.1}, {"shards_per_client": 3}, {"sigma": 2.0}):
        assert cfg.fingerprint(ident) != RunConfig(batch_size=None, rounds=3, **change).fingerprint(ident), change
    # And what the run found its task and data to be.
    assert cfg.fingerprint(ident) != cfg.fingerprint({**ident, "digest": "e" * 64})
    assert cfg.fingerprint(ident) != cfg.fingerprint({**ident, "parameters": [[4, 10]]})


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown configuration keys: momentum"):
        RunConfig.from_dict({"momentum": 0.9})


@pytest.mark.parametrize(("frac", "min_fit", "expected"), [(0.1, 1.0, 10), (0.1, 0.8, 8), (0.1, 0.75, 8), (0.05, 0.8, 4), (0.01, 0.1, 1)])
def test_min_updates(frac, min_fit, expected):
    assert RunConfig(frac=frac, min_fit_fraction=min_fit).min_updates == expected


@pytest.mark.parametrize(("cpus", "threads"), [(0.1, 1), (1, 1), (1.5, 1), (2, 2), (4.0, 4)])
def test_threads_per_host_is_the_whole_cpu_share(cpus, threads):
    assert RunConfig(cpus_per_host=cpus).threads_per_host == threads


def test_dp_fedavgs_server_optimizer_takes_its_own_rate_and_fedavg_means_none():
    from fedactors.config import SERVER_LR

    for name, lr in SERVER_LR.items():
        assert RunConfig(strategy="dp-fedavg", server_optimizer=name).server_lr_value == lr
    assert RunConfig(strategy="dp-fedavg", server_optimizer="fedadam", server_lr=0.3).server_lr_value == 0.3
    plain = RunConfig(strategy="dp-fedavg", server_optimizer="fedavg")
    assert plain.server_optimizer is None and plain == RunConfig(strategy="dp-fedavg")
    assert RunConfig(strategy="fedbuff", server_optimizer="fedavg").server_optimizer is None
    with pytest.raises(ConfigError, match="--server-optimizer must be one of fedavgm, fedadagrad, fedadam, fedyogi"):
        RunConfig(strategy="dp-fedavg", server_optimizer="sgd")
