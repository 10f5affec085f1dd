"""Data split by its owners: owner ids in npz and LEAF files, --partition natural, the text tasks, per-client evaluation."""

import json

import numpy as np
import pytest

from conftest import accuracies, fedactors


# ---- Owners and the natural partition --------------------------------------------------------------

def test_owners_become_client_numbers_in_sorted_order_and_test_owners_map_to_them():
    from fedactors.task import Arrays, owner_numbers

    raw = Arrays(np.zeros((5, 2)), np.zeros(5), np.zeros((3, 2)), np.zeros(3),
                 client_train=["bo", "al", "bo", "cy", "al"], client_test=["cy", "al", "cy"])
    train, test, owners = owner_numbers(raw)
    assert owners.tolist() == ["al", "bo", "cy"]
    assert train.tolist() == [1, 0, 1, 2, 0] and test.tolist() == [2, 0, 2]


def test_the_natural_partition_gives_each_owner_its_examples_in_order():
    from fedactors.data.partition import partition, summary

    owners = np.array([2, 0, 2, 1, 0, 2])
    labels = np.array([1, 1, 0, 3, 1, 0])
    parts = partition(labels, None, "natural", seed=0, owners=owners)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5]]
    s = summary(parts, labels, owners=np.array(["a", "b", "c"]))
    assert s["clients"] == 3 and s["examples"] == {"min": 1, "median": 2.0, "max": 3}
    assert s["labels"] == {"min": 1, "median": 1.0, "max": 2}
    assert s["fewest"][0] == {"owner": "b", "examples": 1}


def test_a_million_owners_each_become_one_client_holding_just_their_examples():
    from fedactors.data.partition import natural

    # How long it takes (one sort of the examples, not a loop over owners) is a benchmark's figure, not a test's:
    # bench/million.py --natural measures it. A wall-time bound here failed on shared cores for no fault of the code.
    rng = np.random.default_rng(0)
    k = 1_000_000
    owners = np.concatenate([np.arange(k), rng.integers(0, k, 2_000_000 - k)])  # every owner holds one or more
    parts = natural(owners)
    assert len(parts) == k and parts.sizes.sum() == 2_000_000
    assert np.array_equal(parts.sizes, np.bincount(owners, minlength=k))
    for c in (0, k // 2, k - 1):
        assert np.array_equal(parts[c], np.flatnonzero(owners == c))  # its own examples, in their order


def _npz(tmp_path, **arrays):
    path = tmp_path / "owned.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def _digits_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 17, (n, 64)).astype(np.float32), rng.integers(0, 10, n)


def test_npz_owner_ids_may_be_integers_or_strings(tmp_path):
    from fedactors.task import load_arrays, load_task

    x, y = _digits_rows(6)
    for ids in (np.array([7, 3, 7, 3, 9, 9]), np.array(["w7", "w3", "w7", "w3", "w9", "w9"])):
        data = load_arrays(load_task("digits-mlp"), _npz(tmp_path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2],
                                                          client_train=ids, client_test=ids[:2]), tmp_path)
        assert data.client_train.tolist() == [1, 0, 1, 0, 2, 2] and data.client_test.tolist() == [1, 0]
        assert data.owners.tolist() == sorted(set(ids.tolist()))


@pytest.mark.parametrize(("owners", "message"), [
    ({"client_train": np.arange(5)}, r"client_train must hold one owner id per example \(6\)"),
    ({"client_train": np.arange(6), "client_test": np.array([0, 77])}, "client_test names owners with no training"),
    ({"client_test": np.arange(2)}, "client_test is given without client_train"),
    ({"client_train": np.linspace(0, 1, 6)}, "integer or string owner ids"),
])
def test_bad_owner_ids_are_one_clear_error(tmp_path, owners, message):
    from fedactors.errors import DataError
    from fedactors.task import load_arrays, load_task

    x, y = _digits_rows(6)
    with pytest.raises(DataError, match=message):
        load_arrays(load_task("digits-mlp"), _npz(tmp_path, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2], **owners),
                    tmp_path)


# ---- LEAF's layout -------------------------------------------------------------------------------

def write_leaf(root, users: dict, split_test: int = 2, files: int = 2) -> None:
    """LEAF files for `users` (name -> (x list, y list)): each user's last `split_test` examples in test/, the
    users spread over `files` files per split as LEAF's sampling scripts leave them."""
    names = list(users)
    chunks = [names[i * len(names) // files : (i + 1) * len(names) // files] for i in range(files)]
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for part, chunk in enumerate(chunks):
            data = {}
            for u in chunk:
                x, y = users[u]
                cut = slice(0, len(x) - split_test) if split == "train" else slice(len(x) - split_test, len(x))
                data[u] = {"x": x[cut], "y": y[cut]}
            doc = {"users": chunk, "num_samples": [len(data[u]["y"]) for u in chunk], "user_data": data}
            (root / split / f"all_data_{part}.json").write_text(json.dumps(doc))


def digit_writers(num_users=6, per_user=12, seed=0):
    """Writers of 8x8 'digits' (sklearn-digits-sized rows, pixels 0..16), each with its own few labels."""
    rng = np.random.default_rng(seed)
    users = {}
    for w in range(num_users):
        y = rng.choice([w % 10, (w + 3) % 10], per_user)
        x = (rng.random((per_user, 64)) * 4 + y[:, None]).round(3)  # learnable: pixel level follows the label
        users[f"f{w:04d}_{w}"] = (x.tolist(), y.tolist())
    return users


def femnist_writers(num_users=7, per_user=10, classes=62, seed=0):
    """Writers in LEAF's FEMNIST shape: `x` lists of 784 floats in [0, 1] (white 1.0, ink darker, as LEAF's
    preprocessing leaves them), `y` classes 0..classes-1 (every one of them used), writers named like f0000_14."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.resize(np.arange(classes), num_users * per_user)).reshape(num_users, per_user)
    users = {}
    for w in range(num_users):
        ink = rng.random((per_user, 784)) < 0.2
        x = np.where(ink, rng.random((per_user, 784)) * 0.6, 1.0)
        users[f"f{w:04d}_{rng.integers(0, 100):02d}"] = (x.tolist(), labels[w].tolist())
    return users


def shakespeare_like(num_users=4, per_user=10, seed=0):
    """Speaking roles with 80-character lines and the next character, as LEAF's Shakespeare."""
    rng = np.random.default_rng(seed)
    words = "thou art more lovely and more temperate rough winds do shake the darling buds of may ".split()
    users = {}
    for r in range(num_users):
        text = " ".join(rng.choice(words, 200))
        lines = [text[i : i + 80] for i in range(per_user)]
        users[f"ROLE_{r}"] = (lines, [text[i + 80] for i in range(per_user)])
    return users


def test_leaf_files_load_with_each_user_an_owner(tmp_path):
    from fedactors.data.leaf import load_leaf

    write_leaf(tmp_path, shakespeare_like())
    data = load_leaf(tmp_path)
    assert data.x_train.shape == (32,) and data.x_train.dtype.kind == "U" and len(data.x_train[0]) == 80
    assert data.x_test.shape == (8,)
    assert sorted(set(data.client_train.tolist())) == ["ROLE_0", "ROLE_1", "ROLE_2", "ROLE_3"]
    assert data.client_train.tolist()[:8] == ["ROLE_0"] * 8


@pytest.mark.parametrize(("damage", "message"), [
    (lambda doc: (doc["users"].append("ghost"), doc["num_samples"].append(3)),
     "user 'ghost' is in 'users' but not in 'user_data'"),
    (lambda doc: doc["num_samples"].__setitem__(0, 99), "num_samples says 99"),
    (lambda doc: doc.pop("user_data"), "is not a LEAF file"),
])
def test_a_bad_leaf_directory_is_one_line_and_exit_2(tmp_path, damage, message):
    write_leaf(tmp_path / "leaf", digit_writers())
    path = tmp_path / "leaf" / "train" / "all_data_0.json"
    doc = json.loads(path.read_text())
    damage(doc)
    path.write_text(json.dumps(doc))
    result = fedactors("run", "--task", "digits-mlp", "--data", f"leaf:{tmp_path / 'leaf'}", "--partition", "natural",
                       "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("fedactors: error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""  # no round was run


def test_the_text_encoding_is_leafs_letters_with_one_class_for_the_rest():
    from fedactors.tasks.shakespeare import LETTERS, NUM_CLASSES, encode

    ids = encode(np.array(["ab\n}", "Z~ q"]))
    assert ids.dtype == np.int64 and ids.shape == (2, 4)
    assert ids[0].tolist() == [LETTERS.index(c) for c in "ab\n}"]
    assert ids[1].tolist() == [LETTERS.index("Z"), NUM_CLASSES - 1, LETTERS.index(" "), LETTERS.index("q")]
    assert encode(np.array(["a", "~"])).tolist() == [LETTERS.index("a"), NUM_CLASSES - 1]  # labels: one id each


def test_the_shakespeare_lstm_is_the_papers_model():
    import torch

    from fedactors.model import FlatModel
    from fedactors.task import load_task

    model = FlatModel(load_task("shakespeare-lstm").model)
    lstm = model.module.lstm
    assert (model.module.embed.embedding_dim, lstm.num_layers, lstm.hidden_size) == (8, 2, 256)
    out = model.module(torch.zeros((3, 80), dtype=torch.int64))
    assert out.shape == (3, 81)


def accuracy_of(weights, task_name, data) -> float:
    """The test accuracy of a run's final weights, computed here with plain torch (the module's parameters set from
    the flat buffer in order, one forward pass a hundred examples), not by the run's own evaluation."""
    import torch
    from torch.nn.utils import vector_to_parameters

    from fedactors.task import load_task

    module = load_task(task_name).model()
    vector_to_parameters(torch.from_numpy(np.array(weights)), module.parameters())
    module.eval()
    with torch.no_grad():
        guesses = [module(torch.from_numpy(data.x_test[i : i + 100])).argmax(1).numpy()
                   for i in range(0, len(data.y_test), 100)]
    return int((np.concatenate(guesses) == data.y_test).sum()) / len(data.y_test)


def natural_run(args, rounds) -> tuple[dict, object, np.ndarray]:
    """`fedactors run ARGS`'s plan (its --dry-run --json: the configuration and the partition's summary run.json
    gets), and the run itself in this process: (plan, its Coordinator once run, the final weights). The Ray path
    every run shares is run from LEAF files by test_shakespeare_lstm_runs_on_leaf_files_with_a_client_per_role and
    on natural clients by tiny_reference's tests."""
    import torch

    from test_strategy import in_process_run

    plan = fedactors("run", *args, "--rounds", str(rounds), "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    threads = torch.get_num_threads()
    try:
        cfg, run = in_process_run(args, rounds)
        weights = list(run.run())[-1]["weights"]
    finally:
        torch.set_num_threads(threads)
    assert cfg.clients == json.loads(plan.stdout)["partition"]["clients"]  # counted as the run counts them
    return json.loads(plan.stdout), run, weights


def test_shakespeare_lstm_runs_on_leaf_files_with_a_client_per_role(tmp_path):
    from fedactors.task import load_arrays, load_task

    write_leaf(tmp_path / "leaf", shakespeare_like(per_user=6))  # 4 lines a role to train on: the LSTM is not small
    out = tmp_path / "run"
    result = fedactors("run", "--task", "shakespeare-lstm", "--data", f"leaf:{tmp_path / 'leaf'}", "--partition", "natural",
                       "--frac", "0.5", "--rounds", "1", "--epochs", "1", "--batch-size", "2", "--lr", "0.8",
                       "--hosts", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["clients"] == 4 and run["partition"]["clients"] == 4
    assert run["partition"]["examples"] == {"min": 4, "median": 4.0, "max": 4}
    assert np.load(out / "weights.npy").size == run["identity"]["weights"]
    data = load_arrays(load_task("shakespeare-lstm"), f"leaf:{tmp_path / 'leaf'}", tmp_path)
    assert accuracies(out) == [accuracy_of(np.load(out / "weights.npy"), "shakespeare-lstm", data)]


def test_a_leaf_set_of_8x8_digit_writers_plans_with_a_builtin_model_and_clients_given_is_refused(tmp_path):
    write_leaf(tmp_path / "leaf", digit_writers())
    base = ["--task", "digits-mlp", "--data", f"leaf:{tmp_path / 'leaf'}", "--partition", "natural"]
    refused = fedactors("run", *base, "--clients", "6", "--out", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "--clients does not go with --partition natural" in refused.stderr
    dry = fedactors("run", *base, "--dry-run", "--out", str(tmp_path / "dry"))
    assert dry.returncode == 0, dry.stderr
    assert "partition natural: 6 clients" in dry.stdout and "owners with the fewest examples: f0000_0 (10)" in dry.stdout


def test_femnist_cnn_runs_on_leaf_femnist_of_the_real_shape_with_a_client_per_writer(tmp_path):
    from fedactors.tasks.femnist import PARAMETERS
    from fedactors.task import load_arrays, load_task

    users = femnist_writers(num_users=7, per_user=10)  # 784 floats in [0, 1], labels 0..61, writers f0000_NN
    write_leaf(tmp_path / "leaf", users, files=3)
    plan, run, weights = natural_run(["--task", "femnist-cnn", "--data", f"leaf:{tmp_path / 'leaf'}", "--partition",
                                      "natural", "--frac", "0.5", "--epochs", "1", "--batch-size", "4", "--lr", "0.05",
                                      "--hosts", "2"], rounds=2)
    assert run.round == 2 and plan["config"]["clients"] == 7 and plan["partition"]["clients"] == 7
    assert plan["partition"]["examples"] == {"min": 8, "median": 8.0, "max": 8}
    assert {f["owner"] for f in plan["partition"]["fewest"]} <= set(users)
    assert weights.size == run.pool.hosts[0].describe()["weights"] == PARAMETERS
    data = load_arrays(load_task("femnist-cnn"), f"leaf:{tmp_path / 'leaf'}", tmp_path)
    assert data.x_train.shape == (56, 1, 28, 28) and data.x_train.dtype == np.float32
    assert sorted(set(data.y_train.tolist()) | set(data.y_test.tolist())) == list(range(62))
    first = next(iter(users.values()))[0][0]
    assert np.array_equal(data.x_train[0, 0], np.float32(first).reshape(28, 28))  # the pixels as LEAF has them
    assert run.history[-1]["accuracy"] == accuracy_of(weights, "femnist-cnn", data)


def test_the_mnist_models_take_leaf_rows_of_784_as_they_take_28x28_images(tmp_path):
    from fedactors.errors import DataError
    from fedactors.task import load_arrays, load_task

    digits = femnist_writers(num_users=4, per_user=6, classes=10)
    write_leaf(tmp_path / "digits", digits, files=3)
    for name in ("mnist-2nn", "mnist-cnn"):
        task = load_task(name)
        rows = load_arrays(task, f"leaf:{tmp_path / 'digits'}", tmp_path)
        x = np.concatenate([np.asarray(x[:-2], np.float32) for x, _ in digits.values()])
        images = load_arrays(task, _npz(tmp_path, x_train=x.reshape(-1, 28, 28), y_train=rows.y_train,
                                        x_test=x[:3].reshape(-1, 28, 28), y_test=rows.y_test[:3]), tmp_path)
        assert rows.x_train.shape == (16, 1, 28, 28) and rows.x_train.tobytes() == images.x_train.tobytes()
        assert rows.client_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    write_leaf(tmp_path / "femnist", femnist_writers(num_users=7))  # labels 0..61
    with pytest.raises(DataError, match=r"y_train holds labels in \[0, 61\]; task mnist-2nn has 10 classes"):
        load_arrays(load_task("mnist-2nn"), f"leaf:{tmp_path / 'femnist'}", tmp_path)


def test_int_examples_for_a_model_that_needs_floats_are_one_line(tmp_path):
    (tmp_path / "inty.py").write_text(
        "import numpy as np\n"
        "from fedactors.task import Arrays, Task, as_int64\n"
        "def load(d):\n"
        "    x = np.arange(40).reshape(20, 2) % 7\n"
        "    return Arrays(x, np.arange(20) % 2, x, np.arange(20) % 2)\n"
        "def model():\n"
        "    from torch import nn\n"
        "    return nn.Linear(2, 2)\n"
        "task = Task('inty', model, load, prepare=as_int64)\n")
    result = fedactors("run", "--task", f"{tmp_path}/inty.py:task", "--clients", "2", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "model cannot take int64 examples" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---- Per-client evaluation --------------------------------------------------------------------------

def test_the_client_spread_is_each_clients_own_accuracy_summarised():
    from fedactors.runtime.coordinator import client_spread

    owners = np.array([0, 0, 1, 1, 1, 1, 3, 3])  # client 2 has no evaluation examples: not counted
    hits = np.array([1, 1, 0, 1, 0, 0, 1, 0], dtype=bool)
    spread = client_spread(hits, owners, target=0.5)
    own = np.array([1.0, 0.25, 0.5])
    assert spread["clients"] == 3 and spread["worst"] == 0.25 and spread["mean"] == pytest.approx(own.mean())
    assert spread["p10"] == pytest.approx(np.percentile(own, 10)) and spread["p90"] == pytest.approx(np.percentile(own, 90))
    assert spread["at_target"] == pytest.approx(2 / 3)


def test_held_out_examples_leave_training_for_a_seeded_fraction_of_clients():
    from fedactors.data.partition import HOLDOUT_FRACTION, hold_out, partition

    parts = partition(np.arange(1000) % 10, 50, "unbalanced", seed=1)
    train, held = hold_out(parts, 0.3, seed=4)
    assert (held.sizes > 0).sum() == 15  # ceil(0.3 * 50) clients, every one of them with at least 2 examples here
    for k in range(50):
        assert np.array_equal(np.sort(np.concatenate([train[k], held[k]])), parts[k])
        assert len(train[k]) >= 1
        if len(held[k]):
            assert len(held[k]) == max(1, min(round(HOLDOUT_FRACTION * len(parts[k])), len(parts[k]) - 1))
    again = hold_out(parts, 0.3, seed=4)
    assert np.array_equal(again[1].indices, held.indices) and not np.array_equal(hold_out(parts, 0.3, 5)[1].indices,
                                                                                  held.indices)


TINY = ["--task", "char-lm-tiny", "--partition", "natural", "--frac", "0.5", "--epochs", "3", "--batch-size", "10",
        "--lr", "1.0", "--hosts", "2", "--seed", "1"]
TINY_ROUNDS = 6


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "ref"
    result = fedactors("run", *TINY, "--rounds", str(TINY_ROUNDS), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_text_task_of_natural_clients_learns_and_evaluates_every_client_on_its_own_lines(tiny_reference):
    from fedactors.task import load_arrays, load_task

    rows = _rows(tiny_reference)
    assert len(rows) == TINY_ROUNDS and rows[-1]["accuracy"] > 0.25  # above the ~0.17 of always guessing ' '
    data = load_arrays(load_task("char-lm-tiny"), None, tiny_reference)
    tested = np.bincount(data.client_test, minlength=len(data.owners))
    for row in rows:
        spread = row["client_accuracy"]
        assert spread["clients"] == (tested > 0).sum()
        assert spread["worst"] <= spread["p10"] <= spread["p50"] <= spread["p90"] <= 1
    run = json.loads((tiny_reference / "run.json").read_text())
    assert run["config"]["clients"] == len(data.owners) == 17 and run["partition"]["fewest"][0]["owner"] == "MIRANDA"
    assert "clients mean" in fedactors("report", str(tiny_reference)).stdout


@pytest.mark.slow
def test_a_natural_text_run_on_one_host_resumes_after_sigkill_to_the_two_host_bytes(tiny_reference, tmp_path):
    from test_resume import start_and_kill_mid_round

    out = tmp_path / "run"
    one_host = [*TINY[: TINY.index("--hosts")], "--hosts", "1", *TINY[TINY.index("--hosts") + 2 :]]
    start_and_kill_mid_round(out, "--run-id", "tiny", args=one_host, rounds=TINY_ROUNDS, after_rounds=2)
    result = fedactors("run", "--resume", "tiny", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "weights.npy").read_bytes() == (tiny_reference / "weights.npy").read_bytes()
    # Every figure but the times and the test loss, a float sum over each host's slice of the test set (one host
    # here, two in the reference), so equal to the last bits only at equal host counts.
    strip = lambda rows: [{k: v for k, v in r.items() if "seconds" not in k and k != "loss"} for r in rows]  # noqa: E731
    assert strip(_rows(out)) == strip(_rows(tiny_reference))  # the clients' spreads too
    assert [r["loss"] for r in _rows(out)] == pytest.approx([r["loss"] for r in _rows(tiny_reference)], rel=1e-6)


def test_eval_clients_reports_held_out_clients_and_plots_their_band(tmp_path):
    out = tmp_path / "run"
    result = fedactors("run", "--task", "digits-mlp", "--clients", "20", "--partition", "dirichlet", "--frac", "0.5",
                       "--epochs", "2", "--rounds", "4", "--eval-every", "2", "--eval-clients", "0.5", "--hosts", "2",
                       "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = _rows(out)
    assert [r["round"] for r in rows] == [2, 4] and all(r["client_accuracy"]["clients"] == 10 for r in rows)
    assert "clients mean" in result.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["partition"]["held_out"]["clients"] == 10 and run["config"]["eval_clients"] == 0.5
    picture = fedactors("plot", str(out), "--clients", "-o", str(tmp_path / "band.png"))
    assert picture.returncode == 0, picture.stderr
    assert (tmp_path / "band.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_clients_with_data_that_has_owners_test_sets_is_refused(tmp_path):
    result = fedactors("run", "--task", "char-lm-tiny", "--partition", "natural", "--eval-clients", "0.5",
                       "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "drop --eval-clients" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
