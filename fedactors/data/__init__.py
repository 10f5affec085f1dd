"""Data: arrays (the loaders' common type), the task registry, and the MNIST files.

    fedactors.data.arrays     Arrays, as_float32, as_int64 (also importable from fedactors.task)
    fedactors.data.registry   builtin_tasks, load_task: a --task spec to its Task
    fedactors.data.mnist      the MNIST files, read as they are; re-exported here, as fedactors.data had them

Importing this package imports NumPy and nothing of fedactors above fedactors.errors: the
registry (which imports the built-in tasks) is imported only by name.
"""

from fedactors.data.arrays import Arrays
from fedactors.data.mnist import (ENV_VAR, FILES, MEAN, STD, Mnist, load_mnist, load_mnist_raw, missing_files, normalise,
                                  read_idx, resolve_data_dir)

__all__ = ["ENV_VAR", "FILES", "MEAN", "STD", "Arrays", "Mnist", "load_mnist", "load_mnist_raw", "missing_files",
           "normalise", "read_idx", "resolve_data_dir"]
