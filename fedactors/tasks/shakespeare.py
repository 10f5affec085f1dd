"""Next-character prediction on Shakespeare's lines, each speaking role one client: the federated text task.

`shakespeare-lstm` is the model of McMahan et al. 2017 (and LEAF's baseline): an 8-dimensional
character embedding, two LSTM layers of 256 units, a softmax over the characters, predicting the
character after an 80-character line. Its data is LEAF's Shakespeare (`--data leaf:DIR`, or
`DATA_DIR/shakespeare/{train,test}` in LEAF's layout; LEAF's `preprocess.sh` makes it from the
Gutenberg text, which fedactors does not download). `char-lm-tiny` is the same shape, smaller
(one LSTM layer of 64 units, 32-character lines), on a few speeches the package ships
(`text/plays.txt`, public-domain Shakespeare): it needs no download and trains in seconds.

Characters are numbered as LEAF numbers them (its 80 letters, `LETTERS`), with one more class
for any other character; examples become int64 token ids once, at load time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedactors.data.arrays import Arrays
from fedactors.errors import DataError
from fedactors.task import Task

# LEAF's models/shakespeare ALL_LETTERS: the characters of its preprocessed Shakespeare.
LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
NUM_CLASSES = len(LETTERS) + 1  # the last: any other character
_CODES = np.array(sorted(ord(c) for c in LETTERS), dtype=np.uint32)
_INDEX = np.array([LETTERS.index(chr(c)) for c in _CODES], dtype=np.int64)
TINY_TEXT = Path(__file__).with_name("text") / "plays.txt"
TINY_LINE = 32  # characters of context in char-lm-tiny
TEST_FRACTION = 0.2
TEXT_INPUTS = "lines of text, all of one length (LEAF's are 80 characters), each labelled with the next character"


def encode(text: np.ndarray) -> np.ndarray:
    """Strings (N,) of one length L -> int64 token ids (N, L); a single character each (labels) -> (N,)."""
    text = np.asarray(text)
    if text.dtype.kind != "U":
        raise DataError(f"the Shakespeare tasks take text (strings), got {text.dtype}")
    width = text.dtype.itemsize // 4
    codes = np.ascontiguousarray(text).view(np.uint32).reshape(len(text), width)
    lengths = np.char.str_len(text)
    if len(text) and (lengths.min() != lengths.max()):
        raise DataError(f"the Shakespeare tasks take lines of one length, got {lengths.min()} to {lengths.max()} "
                        "characters")
    at = np.minimum(np.searchsorted(_CODES, codes), len(_CODES) - 1)
    ids = np.where(_CODES[at] == codes, _INDEX[at], NUM_CLASSES - 1)
    return ids[:, 0].copy() if width == 1 else ids


def lstm(layers: int = 2, hidden: int = 256, embedding: int = 8):
    """A character embedding, stacked LSTM layers, logits over the characters after the last one."""
    from torch import nn

    class CharLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(NUM_CLASSES, embedding)
            self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
            self.out = nn.Linear(hidden, NUM_CLASSES)

        def forward(self, x):
            h, _ = self.lstm(self.embed(x))  # (B, L, hidden)
            return self.out(h[:, -1])  # (B, NUM_CLASSES)

    return CharLSTM()


def load_leaf_dir(data_dir: Path) -> Arrays:
    """LEAF's Shakespeare in DATA_DIR/shakespeare (train/ and test/ of JSON files)."""
    from fedactors.data.leaf import load_leaf_under

    return load_leaf_under(data_dir, "shakespeare", "LEAF's Shakespeare")


def roles(text: str) -> dict[str, str]:
    """A play's speeches ("ROLE: words" a line) as each role's words, joined in order."""
    spoken: dict[str, list[str]] = {}
    for line in text.splitlines():
        role, sep, words = line.partition(":")
        if sep and role.strip() and words.strip():
            spoken.setdefault(role.strip(), []).append(words.strip())
    return {role: " ".join(words) for role, words in spoken.items()}


def windows(text: str, length: int) -> tuple[list[str], list[str]]:
    """Every `length`-character line of `text` and the character after it."""
    return [text[i : i + length] for i in range(len(text) - length)], list(text[length:])


def load_tiny(data_dir: Path) -> Arrays:
    """The shipped speeches, each role an owner: its first 80% of lines for training, the rest (after a gap of a
    line, so no test line overlaps a training one) for its own test set. data_dir is not used."""
    xs = {"train": [], "test": []}
    ys = {"train": [], "test": []}
    owners = {"train": [], "test": []}
    for role, words in roles(TINY_TEXT.read_text(encoding="utf-8")).items():
        x, y = windows(words, TINY_LINE)
        cut = int(len(x) * (1 - TEST_FRACTION))
        for split, part in (("train", slice(0, cut)), ("test", slice(cut + TINY_LINE, len(x)))):
            xs[split] += x[part]
            ys[split] += y[part]
            owners[split] += [role] * len(x[part])
    return Arrays(np.array(xs["train"]), np.array(ys["train"]), np.array(xs["test"]), np.array(ys["test"]),
                  client_train=np.array(owners["train"]), client_test=np.array(owners["test"]))


SHAKESPEARE_LSTM = Task(
    name="shakespeare-lstm", model=lstm, load=load_leaf_dir, prepare=encode, prepare_labels=encode,
    num_classes=NUM_CLASSES, builtin=True, local=lambda d: (d / "shakespeare" / "train").is_dir(), inputs=TEXT_INPUTS,
    description="the paper's character LSTM (8-dim embedding, 2 x 256 LSTM) on LEAF's Shakespeare "
                "(--data leaf:DIR, --partition natural: one client per speaking role)",
)
CHAR_LM_TINY = Task(
    name="char-lm-tiny", model=lambda: lstm(layers=1, hidden=64), load=load_tiny, prepare=encode,
    prepare_labels=encode, num_classes=NUM_CLASSES, builtin=True, inputs=TEXT_INPUTS,
    description="a small character LSTM on speeches the package ships (17 roles, one client each with "
                "--partition natural; no download): seconds a round",
)
