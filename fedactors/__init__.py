"""fedactors: federated learning on Ray, from FedAvg on MNIST (McMahan et al. 2017) to your own task.

    import fedactors
    result = fedactors.run("mnist-cnn", clients=100, frac=0.1, rounds=20)   # see fedactors.api
    fedactors.resume(result.run_id, rounds=40)

Importing fedactors imports neither Ray nor torch; `run` and `resume` do, when called.
"""

__version__ = "0.1.0"

__all__ = ["RunConfig", "RunResult", "Task", "Arrays", "resume", "run"]


def __getattr__(name: str) -> object:
    if name in ("run", "resume", "RunResult"):
        from fedactors import api

        return getattr(api, name)
    if name in ("Task", "Arrays"):
        from fedactors import task

        return getattr(task, name)
    if name == "RunConfig":
        from fedactors.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'fedactors' has no attribute {name!r}")
