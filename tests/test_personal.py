"""Issue 36 item 2: the personalized methods (fedper, fedrep, fedbn, ditto), each keeping its clients' own part of
the model as per-client state and putting it back before a client trains and before it is judged; which parameters
are personal is the task's (Task.personal patterns), else the method's default. In process, no Ray: a few seconds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedactors.algorithms import Ditto, FedBN, FedPer, FedRep, LocalClient
from fedactors.algorithms.personal import KEPT, Parts, resolve
from fedactors.config import RunConfig
from fedactors.errors import ConfigError
from fedactors.task import Task, flat_layout


def _bn_mlp():
    """digits' MLP with a BatchNorm: 64 -> 32 (BatchNorm, ReLU) -> 10."""
    from torch import nn

    return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def _digits_task(**more) -> Task:
    from fedactors.tasks.digits import DIGITS_MLP

    return dataclasses.replace(DIGITS_MLP, builtin=False, **more)


def _run(tmp_path, rounds: int = 3, task: Task | None = None, **settings):
    """An in-process digits run with --client-test-fraction 0.2 on the pathological split: (round events, coordinator).
    `settings` may hold the Coordinator's own keywords (store, run_id, start_round, weights, clients)."""
    import torch

    from fedactors.data.partition import hold_out, partition
    from fedactors.runtime.client import ClientHost
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.task import load_arrays, load_task

    own = {k: settings.pop(k) for k in ("store", "run_id", "start_round", "weights", "clients") if k in settings}
    cfg = RunConfig(**{"task": task.name if task else "digits-mlp", "clients": 10, "frac": 0.5, "rounds": rounds,
                       "epochs": 1, "batch_size": 20, "partition": "noniid", "seed": 0, "client_test_fraction": 0.2,
                       **settings})
    task = task or load_task(cfg.task)
    data = load_arrays(task, None, tmp_path)
    parts, holdout = hold_out(partition(data.y_train, cfg.clients, cfg.partition, cfg.seed), 1.0, cfg.seed,
                              examples=cfg.client_test_fraction)
    threads = torch.get_num_threads()
    try:
        hosts = [ClientHost(cfg, host_id=i, threads=1, task=task) for i in range(2)]
        for host in hosts:
            host.load(data.x_train, data.y_train, parts, data.x_test, data.y_test, holdout.indices)
        owners = np.repeat(np.arange(len(holdout)), holdout.sizes)
        coordinator = Coordinator(cfg, LocalPool(hosts), num_test=len(data.y_test), eval_owners=owners, held_out=True,
                                  **own)
        events = list(coordinator.run())
    finally:
        torch.set_num_threads(threads)
    return [e for e in events if e["type"] == "round"], coordinator, hosts, events[-1]["weights"]


def _client(host, cid: int, weights: np.ndarray, state: dict, round_idx: int = 1) -> LocalClient:
    """Client `cid` as its host makes it to train or personalize it: its model holding `weights`."""
    import torch

    idx = host.client_indices[cid]
    host.model.set_weights(weights)
    cfg = host.config
    return LocalClient(host.model, torch.from_numpy(host.train_images[idx]), torch.from_numpy(host.train_labels[idx]),
                       cid, round_idx, weights, {}, host.local, cfg.epochs, cfg.batch_size, cfg.seed, state)


def test_patterns_name_ranges_of_the_flat_weights_and_the_defaults_are_the_papers():
    """The CNN with batch norm: its personal parts sit where FlatModel put those tensors (trained parameters, then float
    buffers); FedPer's and FedRep's default is the last layer, FedBN's every BatchNorm's weights and statistics; a
    frozen parameter is not in the flat weights, so no pattern can take it."""
    import torch
    from torch import nn

    from fedactors.data.registry import load_task
    from fedactors.model import FlatModel

    model = FlatModel(load_task("mnist-cnn-bn").model)
    assert model.params.numel() == 1_663_562 and model.size == 1_663_562 + 192
    tensors = {**dict(model.module.named_parameters()), **dict(model.module.named_buffers())}
    for name, start, stop in flat_layout(model.module):
        assert tensors[name].data_ptr() == model.state[start:stop].data_ptr(), name  # the same memory
    bn = FedBN().parts(model)
    assert bn.names == ("bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias", "bn1.running_mean", "bn1.running_var",
                        "bn2.running_mean", "bn2.running_var")
    assert bn.trained == bn.names[:4] and bn.size == 4 * (32 + 64)
    assert FedPer().parts(model).names == FedRep().parts(model).names == ("fc2.weight", "fc2.bias")
    state = model.get_weights()
    assert np.array_equal(bn.take(state), np.concatenate([tensors[n].detach().flatten().numpy() for n in bn.names]))
    values = np.arange(bn.size, dtype=np.float32)
    bn.put(model, values)
    assert np.array_equal(bn.take_from(model), values) and np.array_equal(model.module.bn2.running_var.numpy(),
                                                                          values[-64:])
    outside = np.ones(model.size, bool)
    for start, stop in bn.ranges:
        outside[start:stop] = False
    assert np.array_equal(model.get_weights()[outside], state[outside])  # nothing else moved

    def frozen_first():
        net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
        net[0].weight.requires_grad_(False)
        return net

    parts = resolve(frozen_first(), ("0.*",), "probe")
    assert parts == Parts(("0.bias",), ((0, 3),), ("0.bias",))  # 0.weight is frozen: not in the flat weights
    assert torch.is_tensor(tensors["bn1.running_mean"])


def test_bad_patterns_and_parts_a_method_cannot_use_are_one_line(tmp_path, monkeypatch, capsys):
    """A pattern matching nothing, patterns taking every trained parameter, a bare string: refused as the model is
    built (the command's check of a user's model: exit 2, nothing run); FedBN on a model without BatchNorm and FedRep
    with a 'head' of buffers only, by the method."""
    from conftest import run_main

    from fedactors.model import FlatModel

    with pytest.raises(ConfigError, match=r"^task digits-mlp: personal must be a tuple of name patterns such as "
                                          r"\(\"fc2\.\*\",\), got 'fc2\.\*'$"):
        _digits_task(personal="fc2.*")
    nothing = _digits_task(personal=("2.*", "fc9.*"))
    with pytest.raises(ConfigError, match=r"^task digits-mlp: personal pattern 'fc9\.\*' matches none of the model's "
                                          r"trained parameters and float buffers \(0\.weight, 0\.bias, 2\.weight, "
                                          r"2\.bias\)$"):
        FlatModel(nothing.model)
    with pytest.raises(ConfigError, match=r"^task digits-mlp: personal pattern '\*\.weight', '\*bias' takes in every "
                                          r"parameter the model trains: its clients would share nothing they train$"):
        FlatModel(_digits_task(personal=["*.weight", "*bias"]).model)
    with pytest.raises(ConfigError, match=r"^--strategy fedbn keeps every BatchNorm layer \(its weight, bias and "
                                          r"running statistics\) with each client, and the task's model has none"):
        FedBN().parts(FlatModel(_digits_task().model))
    buffers = FlatModel(_digits_task(model=_bn_mlp, personal=("1.running_*",)).model)
    assert FedPer().parts(buffers).names == ("1.running_mean", "1.running_var")  # FedPer keeps them, as FedBN would
    with pytest.raises(ConfigError, match=r"1\.running_mean, 1\.running_var holds no parameter the model trains: "
                                          r"there is no head to train$"):
        FedRep().parts(buffers)
    # The command line: a user's task file with a pattern matching nothing, refused before anything runs.
    (tmp_path / "mine.py").write_text("import dataclasses\nfrom fedactors.tasks.digits import DIGITS_MLP\n"
                                      "task = dataclasses.replace(DIGITS_MLP, name='mine', builtin=False, "
                                      "personal=('fc9.*',))\n")
    status, _, err = run_main(monkeypatch, capsys, "run", "--task", f"{tmp_path}/mine.py:task", "--strategy", "fedper",
                              "--clients", "10", "--partition", "iid", "--client-test-fraction", "0.2", "--dry-run")
    assert status == 2 and err.strip().splitlines() == [
        ("fedactors: error: task mine: personal pattern 'fc9.*' matches none of the model's trained parameters and "
         "float buffers (0.weight, 0.bias, 2.weight, 2.bias)")]
    # A built-in task without the part a method keeps: refused before Ray starts (experiment.run resolves it).
    status, _, err = run_main(monkeypatch, capsys, "run", "--task", "digits-mlp", "--strategy", "fedbn", "--clients",
                              "10", "--rounds", "1", "--out", str(tmp_path / "bn"))
    assert status == 2 and err.strip().splitlines()[-1].startswith(
        "fedactors: error: --strategy fedbn keeps every BatchNorm layer (its weight, bias and running statistics) "
        "with each client, and the task's model has none")


def test_the_settings_are_refused_where_they_do_nothing_and_the_dp_stage_is_refused(monkeypatch, capsys):
    from conftest import run_main

    for args, message in (
            (["--ditto-lambda", "0.5"], "--ditto-lambda applies to --strategy ditto only, not fedavg"),
            (["--strategy", "fedper", "--head-epochs", "3"], "--head-epochs applies to --strategy fedrep only, not fedper"),
            (["--strategy", "ditto", "--ditto-lambda", "-1"], "--ditto-lambda must be a number >= 0, got -1.0"),
            (["--strategy", "fedrep", "--head-epochs", "0"], "--head-epochs must be a positive integer, got 0"),
            (["--strategy", "fedbn", "--dp", "gaussian"], ("--dp gaussian does not go with --strategy fedbn: the DP "
                                                           "stage trains its clients through its own object")),
            (["--strategy", "ditto", "--host-sums"], "--host-sums applies to --aggregator fedavg with --strategy")):
        status, _, err = run_main(monkeypatch, capsys, "run", "--task", "digits-mlp", "--client-test-fraction", "0.2",
                                  *args, "--dry-run")
        assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, (args, err)
    status, out, _ = run_main(monkeypatch, capsys, "strategies")
    listed = {line.split()[0]: line for line in out.splitlines() if not line.startswith(" ")}
    assert {"fedper", "fedrep", "fedbn", "ditto"} <= set(listed) and "Arivazhagan" in listed["fedper"]
    assert "--head-epochs 10" in out and "--ditto-lambda 0.1" in out


def test_fedper_keeps_each_clients_head_and_the_servers_average_does_not_overwrite_it(tmp_path):
    """Each client trained keeps a head of its own (all different), none of them the global model's (the average);
    the next time it trains, or is judged, it starts from its head and the global body: its update is the one made from
    there, another than from the global head, and the same as from the global head given as its own."""
    rounds, coordinator, hosts, weights = _run(tmp_path, strategy="fedper")
    heads = {c: s["algorithm/" + KEPT] for c, s in coordinator.states.everything().items()}
    trained = set().union(*(r["hosts"] for r in rounds))
    assert set(heads) == trained and len(trained) > 2
    parts = FedPer().parts(hosts[0].model)
    assert parts.names == ("2.weight", "2.bias") and all(len(h) == parts.size for h in heads.values())
    assert len({h.tobytes() for h in heads.values()}) == len(heads)
    global_head = parts.take(weights)
    assert all(not np.array_equal(h, global_head) for h in heads.values())
    assert rounds[-1]["personal_accuracy"]["mean"] > rounds[-1]["client_accuracy"]["mean"] + 0.3

    cid = min(heads)
    host, algorithm = hosts[0], hosts[0].algorithm
    client = _client(host, cid, weights, {KEPT: heads[cid]})
    algorithm.personalize(client)
    personal = host.model.get_weights()
    assert np.array_equal(parts.take(personal), heads[cid])
    body = np.ones(len(weights), bool)
    for start, stop in parts.ranges:
        body[start:stop] = False
    assert np.array_equal(personal[body], weights[body])

    def update(state):
        reply = algorithm.local_update(_client(host, cid, weights, state, round_idx=4))
        return host.model.get_weights(), reply.keep[KEPT]

    mine, kept = update({KEPT: heads[cid]})
    assert np.array_equal(parts.take(mine), kept)
    assert not np.array_equal(mine, update({})[0])
    assert np.array_equal(update({})[0], update({KEPT: global_head.copy()})[0])


def test_fedrep_trains_the_head_with_the_body_frozen_then_the_body_with_the_head_frozen(tmp_path):
    """FedRep's local update against the same steps taken by hand: --head-epochs of the run's default update with the
    body's gradient zeroed, then --epochs with the head's zeroed; the same bytes."""
    _, _, hosts, weights = _run(tmp_path, rounds=1, strategy="fedrep", head_epochs=2)
    host = hosts[0]
    algorithm = host.algorithm
    assert isinstance(algorithm, FedRep) and algorithm.head_epochs == 2
    parts = algorithm.parts(host.model)
    head = np.random.default_rng(0).standard_normal(parts.size).astype(np.float32) * np.float32(0.1)
    reply = algorithm.local_update(_client(host, 3, weights, {KEPT: head}, round_idx=2))
    got = host.model.get_weights()

    import torch

    mask = torch.zeros(host.model.params.numel(), dtype=torch.bool)
    for start, stop in parts.ranges:
        mask[start:stop] = True

    def zeroed(keep_head: bool):
        def hook():
            host.model.grads.masked_fill_(~mask if keep_head else mask, 0.0)
        return hook

    client = _client(host, 3, weights, {}, round_idx=2)
    parts.put(host.model, head)
    dataclasses.replace(client, epochs=2).train(zeroed(keep_head=True))
    after_head = host.model.get_weights()
    client.train(zeroed(keep_head=False))
    expected = host.model.get_weights()
    assert np.array_equal(got, expected)
    assert np.array_equal(reply.keep[KEPT], parts.take(after_head))  # the body's epochs left the head alone
    assert not np.array_equal(parts.take(after_head), head)  # and its own epochs moved it


def test_fedbn_keeps_each_clients_batch_norm_and_judges_it_with_them(tmp_path):
    """A model with a BatchNorm: every client keeps its own weights and running statistics of it (different from
    one another and from the global model's), and is judged with them."""
    task = _digits_task(name="digits-bn", model=_bn_mlp)
    rounds, coordinator, hosts, weights = _run(tmp_path, task=task, strategy="fedbn", batch_size=None)
    kept = {c: s["algorithm/" + KEPT] for c, s in coordinator.states.everything().items()}
    parts = FedBN().parts(hosts[0].model)
    assert parts.names == ("1.weight", "1.bias", "1.running_mean", "1.running_var") and len(kept) > 2
    assert len({k.tobytes() for k in kept.values()}) == len(kept)
    assert all(not np.array_equal(k, parts.take(weights)) for k in kept.values())
    cid = min(kept)
    client = _client(hosts[1], cid, weights, {KEPT: kept[cid]})
    hosts[1].algorithm.personalize(client)
    module = hosts[1].model.module
    assert np.array_equal(module[1].running_mean.numpy(), kept[cid][64:96])
    assert np.array_equal(module[1].running_var.numpy(), kept[cid][96:])
    assert rounds[-1]["personal_accuracy"] is not None


def test_ditto_trains_the_global_model_as_fedavg_and_pulls_each_personal_model_toward_it(tmp_path):
    """The global model is FedAvg's to the byte; each client's personal model v is its state, judged in personalize;
    v trained with a larger lambda ends nearer the global weights (and lambda = 0 is local training from v)."""
    rounds, coordinator, hosts, weights = _run(tmp_path, strategy="ditto", ditto_lambda=0.5)
    _, _, _, fedavg = _run(tmp_path, strategy="fedavg")
    assert weights.tobytes() == fedavg.tobytes()
    personal = {c: s["algorithm/personal"] for c, s in coordinator.states.everything().items()}
    assert len(personal) > 2 and all(len(v) == len(weights) for v in personal.values())
    host = hosts[0]
    cid = min(personal)
    Ditto().personalize(_client(host, cid, weights, {"personal": personal[cid]}))
    assert np.array_equal(host.model.get_weights(), personal[cid])
    Ditto().personalize(_client(host, cid, weights, {}))  # never trained: the global model
    assert np.array_equal(host.model.get_weights(), weights)

    Ditto(lam=0.0).local_update(_client(host, cid, weights, {}, round_idx=4))
    sent = host.model.get_weights()  # what the client sends, whatever its v and lambda: FedAvg's update of w

    def trained(lam: float, state: dict) -> np.ndarray:
        reply = Ditto(lam=lam).local_update(_client(host, cid, weights, state, round_idx=4))
        assert np.array_equal(host.model.get_weights(), sent)
        return reply.keep["personal"]

    mine = {"personal": personal[cid]}
    distances = [float(np.linalg.norm(trained(lam, mine) - weights)) for lam in (0.0, 0.5, 5.0)]
    assert distances[0] > distances[1] > distances[2]
    # v trains from the client's own v (a client's first time: from w)
    assert not np.array_equal(trained(0.5, mine), trained(0.5, {}))
    assert np.array_equal(trained(0.5, {"personal": weights.copy()}), trained(0.5, {}))
    assert rounds[-1]["personal_accuracy"]["mean"] > rounds[-1]["client_accuracy"]["mean"] + 0.3


def test_a_resumed_ditto_run_equals_the_uninterrupted_one_to_the_byte(tmp_path, redis_server):
    """Ditto's personal models go through a real Redis (each client's blob, written by the checkpoint after it
    trained) and back: resumed from round 2's checkpoint, the run ends on the uninterrupted run's global weights,
    every client's personal model and every per-client evaluation; resumed without them, the personal models and
    evaluations differ."""
    from fedactors.store.checkpoint import RedisStore

    straight, reference, _, expected = _run(tmp_path, rounds=5, strategy="ditto")
    everything = {c: s["algorithm/personal"].tobytes() for c, s in reference.states.everything().items()}
    with RedisStore(redis_server.url, retry_seconds=5) as store:
        _run(tmp_path, rounds=5, strategy="ditto", store=store, run_id="d", checkpoint_every=2, keep=5)
        ckpt = store.load("d", 2)
        rest, resumed, _, weights = _run(tmp_path, rounds=5, strategy="ditto", store=store, run_id="d",
                                         start_round=2, weights=ckpt.weights.copy(), clients=ckpt.extra["clients"])
        states = {c: s["algorithm/personal"].tobytes() for c, s in resumed.states.everything().items()}
    assert weights.tobytes() == expected.tobytes() and states == everything
    assert [r["clients_table"] for r in rest] == [r["clients_table"] for r in straight[2:]]
    _, forgot, _, _ = _run(tmp_path, rounds=5, strategy="ditto", start_round=2, weights=ckpt.weights.copy())
    assert {c: s["algorithm/personal"].tobytes() for c, s in forgot.states.everything().items()} != everything
