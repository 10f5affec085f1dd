"""`fedactors strategies`: the built-in strategies, one line each, and the settings each takes with their defaults;
`fedactors strategies FILE.py:ATTR`: a user's algorithm as --strategy loads it."""

from __future__ import annotations

import click

from fedactors.cli import cli

# What a default of None means, where it is not a number.
NONE_MEANS = {"target_epsilon": "none", "dp_seed": "(a secret from the OS)", "target_quantile": "0.5 (adaptive)",
              "clip_lr": "0.2 (adaptive)", "initial_clip": "0.1 (adaptive)", "clip_count_noise": "qK/20 (adaptive)",
             "concurrency": "m (as a round samples)", "buffer": "min(10, concurrency)", "staleness": "polynomial:0.5",
             "mixing": "0.6", "server_optimizer": "none (eta x the buffer's average change)"}


@cli.command()
@click.argument("spec", required=False, metavar="[NAME | FILE.py:ATTR | MODULE:ATTR]")
def strategies(spec: str | None) -> None:
    """List the built-in strategies (for --strategy) and their settings; your own is module:attr or file.py:attr.

    Given a built-in's NAME, that one. Given your own, load it as --strategy would and show its name, its
    docstring's first line and its settings() (one line, exit 2, if it cannot be loaded)."""
    from fedactors.config import CLIENT_LR, STRATEGIES
    from fedactors.strategy import DESCRIPTIONS

    if spec is not None and spec not in STRATEGIES:
        _describe(spec)
        return
    names = STRATEGIES if spec is None else (spec,)
    width = max(len(name) for name in names)
    for name in names:
        click.echo(f"{name:<{width}}  {DESCRIPTIONS[name]}")
        settings = _settings(name)
        if name in CLIENT_LR:  # a client rate of its own, where the paper's 0.1 fails (issue 28)
            settings = {"lr": f"{CLIENT_LR[name]:g} (client)", **settings}
        if settings:
            click.echo(" " * (width + 2) + "  ".join(f"--{flag} {value}" for flag, value in settings.items()))


def _describe(spec: str) -> None:
    """A user's algorithm as `fedactors run --strategy SPEC` loads it (ConfigError, exit 2, if it cannot be)."""
    import inspect
    import json

    from fedactors.algorithms import load_user_algorithm

    algorithm = load_user_algorithm(spec)
    kind = type(algorithm)
    doc = kind.__dict__.get("__doc__") or ""  # its own, not a base class's (Algorithm's would say it is FedAvg)
    if not doc or doc.startswith(f"{kind.__name__}("):  # none, or a dataclass's generated signature: its module's
        doc = getattr(inspect.getmodule(kind), "__doc__", None) or ""
    doc = inspect.cleandoc(doc)
    name = getattr(algorithm, "name", type(algorithm).__name__)
    click.echo(f"{name}  {doc.splitlines()[0] if doc else '(no docstring)'}")
    settings = algorithm.settings()  # JSON-able: load_user_algorithm checked
    if settings:
        click.echo(" " * (len(name) + 2) + "  ".join(f"{key}={json.dumps(value)}" for key, value in settings.items()))


def _settings(name: str) -> dict[str, str]:
    """The flags strategy `name` takes, with their defaults as text (the server rate is its own: SERVER_LR)."""
    from fedactors.algorithms import builtin
    from fedactors.config import OPTIMIZED_STRATEGIES, STRATEGY_SETTINGS, RunConfig

    defaults = RunConfig(strategy=name)
    spec = builtin(name)
    own = spec.means  # what a default means for this one, where it differs from NONE_MEANS
    shown = {}
    for field, users in STRATEGY_SETTINGS.items():
        if name in users:
            value = defaults.server_lr_value if field == "server_lr" else getattr(defaults, field)
            text = (own[field] if field in own else NONE_MEANS[field] if value is None else ("on" if value else "off")
                    if isinstance(value, bool) else value if isinstance(value, str) else f"{value:g}")
            if field in spec.optimizer_settings and field not in own:  # only with a --server-optimizer reading it
                text += f" ({'|'.join(u for u in users if u not in OPTIMIZED_STRATEGIES)})"
            shown[field.replace("_", "-")] = text
    return shown
