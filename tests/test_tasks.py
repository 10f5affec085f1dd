"""Tasks: the built-ins, a user's own (module:attr, file.py:attr, --data npz:PATH), and that the default's bytes never change."""

import hashlib
import json

import pytest

from conftest import ROUNDS, accuracies

# sha256 of weights.npy and the accuracy after round 5 of the `reference` run (conftest.ARGS: the
# default task, mnist-cnn), recorded before tasks existed (commit 66084ff, and again at 2651404),
# keyed by the torch build and the CPU capability torch dispatches to: both decide the bytes.
# A change that moves them is a change to every run of the paper's setup.
RECORDED = {
    ("2.14.1+cu130", "AVX512"): ("10628f0dd7c97faf630ff0d0d3222116e4195ee58305d22de10f11b82728dc4b", [0.9366]),
}


@pytest.mark.slow
def test_the_default_task_runs_to_the_recorded_bytes(reference):
    import torch

    key = (torch.__version__, torch.backends.cpu.get_cpu_capability())
    if key not in RECORDED:
        pytest.skip(f"no digest recorded for torch {key[0]} on a CPU torch runs as {key[1]}: record one from a run of "
                    "the commit before the change you want to check (see RECORDED)")
    digest, accs = RECORDED[key]
    assert hashlib.sha256((reference / "weights.npy").read_bytes()).hexdigest() == digest
    assert accuracies(reference) == accs
    assert json.loads((reference / "run.json").read_text())["rounds_completed"] == ROUNDS
