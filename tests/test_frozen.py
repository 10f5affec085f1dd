"""Frozen parameters travel nowhere: only requires_grad parameters are sent, averaged, checkpointed and in weights.npy.

The runs are real (a task file through the command line, a local Ray, the embedded Redis) and
small: 10 clients of the 8x8 digits, a 330-float head on a frozen 64-32 body. The body is drawn
from the RNG the run seeds, as a model's layers are by default: were a host to build it
otherwise (unseeded, say), its clients would train against another body, and the bytes of one
host and of two would differ. (examples/frozen_head.py's body has a seed of its own, so it could
not show that; its own checks are below, in process.)
"""

import json

import numpy as np
import pytest

from conftest import REPO, accuracies, fedactors, run_main

pytestmark = pytest.mark.slow

BODY_FLOATS, HEAD_FLOATS = 64 * 32 + 32, 32 * 10 + 10
ROUNDS = 30
CLIENTS_PER_ROUND = 5
FROZEN_BODY_TASK = """
from fedactors.task import Task
from fedactors.tasks.digits import load, prepare

def model():
    from torch import nn
    body = nn.Linear(64, 32).requires_grad_(False)  # torch's default init, from the run's seed
    return nn.Sequential(body, nn.ReLU(), nn.Linear(32, 10))

task = Task(name="frozen-body", model=model, load=load, prepare=prepare, num_classes=10)
"""


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("task") / "frozen_body.py"
    path.write_text(FROZEN_BODY_TASK)
    return path


def frozen_args(task_file, hosts: int) -> list[str]:
    # E=20 makes a round long enough (~0.1 s here) to be killed in the middle of the run.
    return ["--task", f"{task_file}:task", "--clients", "10", "--frac", "0.5", "--partition", "iid",
            "--epochs", "20", "--batch-size", "10", "--lr", "0.1", "--seed", "4", "--eval-every", str(ROUNDS),
            "--hosts", str(hosts), "--rounds", str(ROUNDS)]


@pytest.fixture(scope="module")
def frozen_reference(tmp_path_factory, task_file):
    """An uninterrupted frozen-body run on 2 hosts: what the others must reproduce."""
    out = tmp_path_factory.mktemp("frozen") / "ref"
    result = fedactors("run", *frozen_args(task_file, hosts=2), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert accuracies(out)[-1] > 0.5, accuracies(out)  # it learned (chance is 0.1): a head on random frozen features
    return out, result.stdout


def _same_bytes(out, reference):
    assert (out / "weights.npy").read_bytes() == (reference / "weights.npy").read_bytes()
    assert accuracies(out) == accuracies(reference)


def test_only_the_trainable_floats_are_in_the_weights_and_the_identity_says_what_is_frozen(frozen_reference):
    out, stdout = frozen_reference
    weights = np.load(out / "weights.npy")
    assert weights.dtype == np.float32 and weights.size == HEAD_FLOATS
    identity = json.loads((out / "run.json").read_text())["identity"]
    assert identity["weights"] == HEAD_FLOATS and identity["parameters"] == [[10, 32], [10]]
    assert identity["frozen"]["names"] == ["0.weight", "0.bias"]
    bytes_each_way = CLIENTS_PER_ROUND * 4 * HEAD_FLOATS
    assert f"{HEAD_FLOATS:,} floats travel: {bytes_each_way:,} bytes a round each way" in stdout
    assert f"of the {CLIENTS_PER_ROUND * 4 * (HEAD_FLOATS + BODY_FLOATS):,} with every parameter trained" in stdout


def test_one_host_killed_and_resumed_gives_the_bytes_of_two_uninterrupted(frozen_reference, task_file, tmp_path):
    """Both guarantees in one run, to keep the suite short: one host trains every client (each host builds
    the frozen body itself, so one must make the same body as two), is SIGKILLed mid-run with its whole
    tree, and the resume (again one host) must give the uninterrupted two-host run's bytes."""
    from test_resume import start_and_kill_mid_round

    reference, _ = frozen_reference
    out = tmp_path / "run"
    args = frozen_args(task_file, hosts=1)[:-2]  # start_and_kill_mid_round passes --rounds itself
    start_and_kill_mid_round(out, "--run-id", "fz", args=args, rounds=ROUNDS, after_rounds=5)
    hosts = json.loads((out / "run.json").read_text())["host_info"]
    assert len(hosts) == 1 and hosts[0]["frozen"]["names"] == ["0.weight", "0.bias"]
    result = fedactors("run", "--resume", "fz", "--out", str(out), "--hosts", "1")
    assert result.returncode == 0, result.stderr
    assert "1 client host on 1 node" in result.stdout
    _same_bytes(out, reference)


def test_a_model_with_every_parameter_frozen_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    task = tmp_path / "all_frozen.py"
    task.write_text(
        "from fedactors.task import Task\n"
        "from fedactors.tasks.digits import load, prepare\n"
        "def model():\n"
        "    from torch import nn\n"
        "    return nn.Linear(64, 10).requires_grad_(False)\n"
        "task = Task(name='all-frozen', model=model, load=load, prepare=prepare, num_classes=10)\n")
    code, out, err = run_main(monkeypatch, capsys, "run", "--task", f"{task}:task", "--clients", "4", "--partition", "iid",
                              "--rounds", "1", "--out", str(tmp_path / "run"))
    assert code == 2, err
    assert err.strip().splitlines() == [
        "fedactors: error: the task's model has no parameters to train: every one is frozen (requires_grad=False); "
        "leave at least one trainable"]
    assert not (tmp_path / "run" / "weights.npy").exists()


def test_hosts_that_built_other_frozen_parameters_are_refused(task_file):
    """A factory reading a pretrained file that differs between nodes: caught before any round, in one line."""
    import torch

    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig
    from fedactors.errors import ConfigError
    from fedactors.runtime.experiment import frozen_identity
    from fedactors.task import load_task

    cfg = RunConfig(task=f"{task_file}:task", clients=4, partition="iid", seed=4)
    task = load_task(cfg.task)
    hosts = [ClientHost(cfg, task=task, host_id=i).describe() for i in range(2)]
    assert hosts[0]["frozen"]["floats"] == BODY_FLOATS and hosts[0]["weights"] == HEAD_FLOATS
    assert frozen_identity(hosts) == {"names": ["0.weight", "0.bias"], "sha256": hosts[0]["frozen"]["sha256"]}
    host = ClientHost(cfg, task=task, host_id=1)
    with torch.no_grad():
        host.model.module[0].weight[0, 0] += 1.0  # a different "pretrained file" on host 1's node
    with pytest.raises(ConfigError) as refused:
        frozen_identity([hosts[0], host.describe()])
    assert "host 1 built other frozen parameters than host 0" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    # A model with nothing frozen describes itself as before: no "frozen" key, so its run's identity is unchanged.
    assert "frozen" not in ClientHost(RunConfig(task="digits-mlp", clients=4, partition="iid")).describe()


# ---- The examples, in process ----------------------------------------------------------------------

def test_frozen_head_sends_the_head_and_keeps_its_body_whatever_the_run_seed():
    from fedactors.model import FlatModel
    from fedactors.task import load_task

    task = load_task(f"{REPO}/examples/frozen_head.py:task")
    a, b = FlatModel(task.model, init_seed=1), FlatModel(task.model, init_seed=2)
    assert a.size == 256 * 10 + 10 and a.frozen_floats() == 64 * 256 + 256 + 256 * 256 + 256
    assert a.frozen_digest() == b.frozen_digest()  # the "pretrained" body has its own seed
    assert not np.array_equal(a.get_weights(), b.get_weights())  # the head is the run's
    full = FlatModel(load_task(f"{REPO}/examples/frozen_head.py:full").model, init_seed=1)
    assert full.frozen == [] and full.size == a.size + a.frozen_floats()


def test_lora_adapters_start_as_the_base_and_are_all_that_trains():
    import torch

    from fedactors.model import FlatModel
    from fedactors.task import load_task

    lora = load_task(f"{REPO}/examples/lora.py:task")
    m = FlatModel(lora.model, init_seed=0)
    adapted = [sub for sub in m.module.modules() if type(sub).__name__ == "LoRALinear"]
    assert len(adapted) == 4  # q and v of 2 blocks
    assert m.size == 4 * (4 * 32 + 32 * 4) + 32 * 10 + 10  # A and B of rank 4, and the head
    x = torch.rand(16, 8, 32)
    for layer in adapted:  # B = 0: the adapted layer is the base one, exactly
        assert torch.equal(layer(x), layer.base(x))
    frozen = {name: p.detach().clone() for name, p in m.module.named_parameters() if not p.requires_grad}
    images = torch.rand(32, 8, 8, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        m.sgd_step(images, torch.arange(32) % 10, lr=0.2)
    assert all(torch.equal(p, frozen[name]) for name, p in m.module.named_parameters() if name in frozen)
    assert all(not torch.equal(layer(x), layer.base(x)) for layer in adapted)  # B has moved off zero


def test_lora_learns_federated_above_chance():
    from fedactors.runtime.client import ClientHost
    from fedactors.config import RunConfig
    from fedactors.runtime.coordinator import Coordinator, LocalPool
    from fedactors.data.partition import partition
    from fedactors.task import load_arrays, load_task

    cfg = RunConfig(task=f"{REPO}/examples/lora.py:task", clients=10, frac=0.5, rounds=6, epochs=2, batch_size=10,
                    lr=0.2, partition="iid", seed=0, eval_every=6)
    task = load_task(cfg.task)
    data = load_arrays(task, None, None)
    parts = partition(data.y_train, cfg.clients, cfg.partition, cfg.seed)
    host = ClientHost(cfg, data.x_train, data.y_train, parts, data.x_test, data.y_test, task=task)
    events = list(Coordinator(cfg, LocalPool([host]), num_test=len(data.y_test)).run())
    assert events[-2]["accuracy"] > 0.3, [e.get("accuracy") for e in events]  # chance is 0.1
