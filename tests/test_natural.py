"""Data split by its owners: owner ids in npz and LEAF files, --partition natural, the text tasks, per-client evaluation."""

import json
import time

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
    from fedactors.partition import partition, summary

    owners = np.array([2, 0, 2, 1, 0, 2])
    labels = np.array([1, 1, 0, 3, 1, 0])
    parts = partition(labels, None, "natural", seed=0, owners=owners)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5]]
    s = summary(parts, labels, owners=np.array(["a", "b", "c"]))
    assert s["clients"] == 3 and s["examples"] == {"min": 1, "median": 2.0, "max": 3}
    assert s["labels"] == {"min": 1, "median": 1.0, "max": 2}
    assert s["fewest"][0] == {"owner": "b", "examples": 1}


def test_a_million_owners_partition_in_about_the_time_of_ten_thousand():
    from fedactors.partition import natural

    rng = np.random.default_rng(0)
    timings = {}
    for k in (10_000, 1_000_000):
        owners = np.concatenate([np.arange(k), rng.integers(0, k, 2_000_000 - k)])  # every owner holds one or more
        t0 = time.perf_counter()
        parts = natural(owners)
        timings[k] = time.perf_counter() - t0
        assert len(parts) == k and parts.sizes.sum() == 2_000_000
        assert np.all(owners[parts[k // 2]] == k // 2)
    assert timings[1_000_000] < 3 * timings[10_000] + 0.5, timings  # one sort of the examples, not a loop over owners


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

def write_leaf(root, users: dict, split_test: int = 2) -> None:
    """LEAF files for `users` (name -> (x list, y list)): each user's last `split_test` examples in test/, the
    users spread over two files per split as LEAF's sampling scripts leave them."""
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
        names = list(users)
        for part, chunk in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
            data = {}
            for u in chunk:
                x, y = users[u]
                cut = slice(0, len(x) - split_test) if split == "train" else slice(len(x) - split_test, len(x))
                data[u] = {"x": x[cut], "y": y[cut]}
            doc = {"users": chunk, "num_samples": [len(data[u]["y"]) for u in chunk], "user_data": data}
            (root / split / f"all_data_{part}.json").write_text(json.dumps(doc))


def femnist_like(num_users=6, per_user=12, seed=0):
    """Writers of 8x8 'digits' (sklearn-digits-sized rows), each with its own few labels."""
    rng = np.random.default_rng(seed)
    users = {}
    for w in range(num_users):
        y = rng.choice([w % 10, (w + 3) % 10], per_user)
        x = (rng.random((per_user, 64)) * 4 + y[:, None]).round(3)  # learnable: pixel level follows the label
        users[f"f{w:04d}_{w}"] = (x.tolist(), y.tolist())
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
    from fedactors.leaf import load_leaf

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
    write_leaf(tmp_path / "leaf", femnist_like())
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


def test_shakespeare_lstm_runs_on_leaf_files_with_a_client_per_role(tmp_path):
    write_leaf(tmp_path / "leaf", shakespeare_like())
    out = tmp_path / "run"
    result = fedactors("run", "--task", "shakespeare-lstm", "--data", f"leaf:{tmp_path / 'leaf'}", "--partition", "natural",
                       "--frac", "0.5", "--rounds", "1", "--epochs", "1", "--batch-size", "4", "--lr", "0.8",
                       "--hosts", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["clients"] == 4 and run["partition"]["clients"] == 4
    assert run["partition"]["examples"] == {"min": 8, "median": 8.0, "max": 8}
    assert np.load(out / "weights.npy").size == run["identity"]["weights"]
    assert 0 <= accuracies(out)[0] <= 1


def test_a_femnist_like_leaf_set_trains_with_a_builtin_model_and_clients_given_is_refused(tmp_path):
    write_leaf(tmp_path / "leaf", femnist_like())
    base = ["--task", "digits-mlp", "--data", f"leaf:{tmp_path / 'leaf'}", "--partition", "natural"]
    refused = fedactors("run", *base, "--clients", "6", "--out", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "--clients does not go with --partition natural" in refused.stderr
    dry = fedactors("run", *base, "--dry-run", "--out", str(tmp_path / "dry"))
    assert dry.returncode == 0, dry.stderr
    assert "partition natural: 6 clients" in dry.stdout and "owners with the fewest examples: f0000_0 (10)" in dry.stdout


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
