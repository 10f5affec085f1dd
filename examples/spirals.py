"""A task of your own, in one file: three interleaved spirals in the plane, and a small MLP to tell them apart.

    fedactors run --task examples/spirals.py:task --clients 20 --frac 0.5 --partition dirichlet --alpha 0.5 \
        --epochs 2 --batch-size 20 --lr 0.2 --rounds 30 --eval-every 5

    import fedactors
    from examples.spirals import task     # or fedactors.task.load_task("examples/spirals.py:task")
    result = fedactors.run(task, clients=20, frac=0.5, partition="dirichlet", alpha=0.5, epochs=2,
                           batch_size=20, lr=0.2, rounds=30, eval_every=5)

What makes it a task: a model factory (any torch.nn.Module, built in every client host), a
loader returning the arrays (fedactors.task.Arrays: examples and integer labels 0..C-1, for
training and testing), and, if the examples need it, a `prepare` applied once at load. The
data here is made, not downloaded: 3,000 training and 600 test points from a fixed generator.
"""

from pathlib import Path

import numpy as np

from fedactors.task import Arrays, Task

CLASSES = 3


def spirals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points on CLASSES arms of a spiral, with a little noise: (n, 2) float32 and (n,) labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    radius = rng.uniform(0.05, 1.0, n)
    angle = 3.5 * radius + 2 * np.pi * labels / CLASSES + rng.normal(0, 0.12, n)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return points.astype(np.float32), labels


def load(data_dir: Path) -> Arrays:
    x_train, y_train = spirals(3000, seed=1)
    x_test, y_test = spirals(600, seed=2)
    return Arrays(x_train, y_train, x_test, y_test)


def model():
    from torch import nn

    return nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, CLASSES))


task = Task(name="spirals", model=model, load=load, num_classes=CLASSES,
            description="three spirals in the plane, a 2-64-64-3 MLP")
