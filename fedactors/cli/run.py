"""`fedactors run`: flags become a RunConfig for fedactors.api, which runs (or --resumes) it."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import click
from click.core import ParameterSource

from fedactors.cli import cli, exit_on_interrupt
from fedactors.config import (ACCOUNTANTS, AGGREGATORS, ATTACKS, CLIENT_LR, DEFAULT_LR, PARTITIONS, PRECISIONS,
                              SECURE_AGGREGATIONS, SERVER_LR, RunConfig,
                              natural_clients, parse_batch_size, parse_clip, read_toml, refuse_idle_settings)
from fedactors.errors import ConfigError
from fedactors.algorithms.local import OPTIMIZERS

D = RunConfig()  # defaults, shown in --help
CONFIG_KEYS = {f.name for f in dataclasses.fields(RunConfig)}

REDIS_URL_VARIABLE = "FEDACTORS_REDIS_URL"  # keeps a password off the command line and out of shell history


def forget_redis_variable() -> None:
    """Once read, $FEDACTORS_REDIS_URL leaves the environment: Ray's processes (a local cluster's are
    this process's children) would otherwise inherit the password with it."""
    os.environ.pop(REDIS_URL_VARIABLE, None)


def redis_option(default_help: str):
    """--redis URL, also read from $FEDACTORS_REDIS_URL; `default_help` says what happens without either."""
    return click.option(
        "--redis", "redis_url", default=None, metavar="URL", envvar=REDIS_URL_VARIABLE, show_envvar=True,
        help="Checkpoint store: redis://[:PASSWORD@]HOST:PORT/DB, rediss://... or unix://PATH; put a URL with a "
        f"password in ${REDIS_URL_VARIABLE} rather than on the command line. Default: {default_help}",
    )


def load_config_file(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    """--config FILE: run settings used as defaults that flags given on the command line override.

    FILE is TOML (a sweep file's [run] table works too) whose keys are the flags' names without the dashes, as
    `batch-size` or `batch_size`; or a run's run.json, whose stored "config" replays that run. Unknown keys, values of
    the wrong type, an unreadable file: ConfigError naming the file and the key. A setting at its default is left out
    of the defaults it makes, so that it is not "given": a stored configuration lists every setting, idle ones too."""
    if path is None:
        return None
    what = f"--config {path}"
    replay = path.endswith(".json")
    table = _read_run_json(path, what) if replay else read_toml(path, what)
    if not replay:
        table = table.get("run", table)
    params = {p.name: p for p in ctx.command.params}
    settings: dict = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in CONFIG_KEYS:
            flag = params[name].opts[0] if name in params else None
            raise ConfigError(f"{what}: {key!r} is not a run setting (give {flag} on the command line)" if flag else
                              f"{what}: unknown setting {key!r} (settings are the run flags' names: clients, frac, batch-size, ...)")
        if name in settings:
            raise ConfigError(f"{what}: {name.replace('_', '-')} is given twice (as {name.replace('_', '-')!r} and {name!r})")
        settings[name] = _checked(params[name], key, value, what)
    if replay and settings.get("partition") == "natural":
        settings.pop("clients", None)  # the count the data gave: a natural partition's clients are its owners again
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    # "rounds" stays even at its default: a cosine --lr-schedule needs it said (fedactors.algorithms.local.refuse_idle).
    settings = {k: v for k, v in settings.items() if k == "rounds" or not _same(k, v, defaults[k])}
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return path


def _read_run_json(path: str, what: str) -> dict:
    """run.json's "config": the settings a run stored, to replay it."""
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc}") from None
    if not (isinstance(stored, dict) and isinstance(stored.get("config"), dict)):
        raise ConfigError(f"{what} is not a run's run.json (it has no \"config\" table); settings files are TOML")
    return {k: v for k, v in stored["config"].items() if v is not None}  # null: not set, the default


def _checked(param: click.Parameter, key: str, value: object, what: str) -> object:
    """A file's value for `param` as its flag would give it, or ConfigError naming the file and key: click would
    otherwise truncate clients = 1.5 to 1, and name only the flag for a value it cannot convert."""
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{what}: {key} must be {expected}, got {value!r}")

    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if param.name == "batch_size":
        parse_batch_size(value, f"{what}: {key}")
        return str(value)
    if param.name == "clip":
        if isinstance(value, str):
            try:
                parse_clip(value)
            except ConfigError:
                raise wrong("a positive number or 'adaptive'") from None
        elif not number:
            raise wrong("a positive number or 'adaptive'")
        return value
    if isinstance(param.type, click.types.BoolParamType):
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif isinstance(param.type, click.types.IntParamType):
        if not (number and isinstance(value, int)):
            raise wrong("an integer")
    elif isinstance(param.type, click.types.FloatParamType):
        if not number:
            raise wrong("a number")
    elif isinstance(param.type, click.Choice):
        if value not in param.type.choices:
            raise wrong(f"one of {', '.join(map(str, param.type.choices))}")
    elif not isinstance(value, str):
        raise wrong("a string")
    return value


def _same(name: str, value: object, default: object) -> bool:
    """Whether a file's (checked) value is the setting's default, batch_size and clip as their flags parse them."""
    if name == "batch_size":
        return parse_batch_size(value) == default
    if name == "clip":
        return parse_clip(value) == default
    return value == default


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, is_eager=True, expose_value=False,
              callback=load_config_file, metavar="FILE.toml|RUN_DIR/run.json",
              help="Settings from a TOML file whose keys are the flags' names (clients = 100, batch-size = 10; "
                   "batch_size also works), or from a run's run.json, which replays that run; flags given on the "
                   "command line override the file. Unknown keys and wrong types are refused.")
@click.option("--task", default=D.task, show_default=True,
              help="What to train: a built-in task (fedactors tasks lists them), package.module:attr or path/to/file.py:attr.")
@click.option("--data", default=None, metavar="npz:PATH|leaf:DIR|hf:DIR",
              help="Arrays in place of the task's data: an .npz with x_train, y_train, x_test, y_test (integer labels 0..C-1) "
                   "and optionally client_train, client_test (owner ids, for --partition natural); a LEAF data set's "
                   "directory (train/ and test/ of JSON files); or a Hugging Face dataset on disk (save_to_disk's "
                   "DatasetDict, or train*.parquet and test*.parquet files) with train and test splits.")
@click.option("--partition-by", "partition_by", default=None, metavar="COLUMN",
              help="--data hf: one client per value of this column (with --partition natural): its test split's "
                   "rows of that column evaluate each client on its own data.")
@click.option("--input-column", "input_column", default=None, metavar="COLUMN",
              help="--data hf: the column holding the examples. Default: image, else the one column left.")
@click.option("--label-column", "label_column", default=None, metavar="COLUMN",
              help="--data hf: the column holding the labels. Default: label.")
@click.option("--clients", type=int, default=D.clients, show_default=True, help="Number of clients K (not with --partition natural).")
@click.option("--frac", type=float, default=D.frac, show_default=True, help="Fraction C of clients sampled each round, in (0, 1].")
@click.option("--rounds", type=int, default=D.rounds, show_default=True, help="Communication rounds to run (on --resume: the new total).")
@click.option("--epochs", type=int, default=D.epochs, show_default=True, help="Local epochs E per round.")
@click.option("--batch-size", "batch_size", default=str(D.batch_size), show_default=True, help="Local minibatch size B, or 'inf' for full batch.")
@click.option("--lr", type=float, default=None,
              help=f"Client learning rate (round 1's under --lr-schedule). Default: {DEFAULT_LR:g} (the paper's), "
                   + ", ".join(f"{k} {v:g}" for k, v in CLIENT_LR.items()) + ".")
@click.option("--client-optimizer", "client_optimizer", type=click.Choice(OPTIMIZERS), default=D.client_optimizer,
              show_default=True,
              help="The clients' local optimizer: sgd (plain, the paper's), momentum (--client-momentum) or adam (torch's "
                   "defaults, betas 0.9, 0.999); its state starts fresh each local update.")
@click.option("--client-momentum", "client_momentum", type=float, default=D.client_momentum, show_default=True,
              help="--client-optimizer momentum: the momentum, in [0, 1).")
@click.option("--weight-decay", "weight_decay", type=float, default=D.weight_decay, show_default=True, metavar="W",
              help="L2 weight decay of the local optimizer (W w added to each step's gradient), any --client-optimizer.")
@click.option("--lr-schedule", "lr_schedule", default=D.lr_schedule, show_default=True, metavar="SCHEDULE",
              help="Round t's client learning rate: constant (--lr), exp:GAMMA (--lr x GAMMA^(t-1)), step:EVERY:GAMMA "
                   "(x GAMMA every EVERY rounds), cosine[:MIN_FRACTION] (from --lr down towards MIN_FRACTION x --lr "
                   "over --rounds, which must be given); GAMMA in (0, 1].")
@click.option("--lr-warmup-steps", "lr_warmup_steps", type=int, default=D.lr_warmup_steps, show_default=True, metavar="N",
              help="Within each local update, ramp the round's learning rate linearly over the first N steps "
                   "((k + 1) / N of it at step k); 0: none.")
@click.option("--partition", type=click.Choice(PARTITIONS), default=D.partition, show_default=True,
              help="iid: n/K shuffled examples each; noniid: the paper's 2 label-sorted shards each; shards: --shards-per-client of them; "
              "dirichlet: label skew by Dirichlet(--alpha); unbalanced: IID labels, log-normal(--sigma) client sizes; "
              "natural: one client per owner the data names (client_train, LEAF users; K is theirs, --clients is refused).")
@click.option("--shards-per-client", "shards_per_client", type=int, default=D.shards_per_client, show_default=True,
              help="shards: label-sorted shards per client (noniid is 2).")
@click.option("--alpha", type=float, default=D.alpha, show_default=True, help="dirichlet: the concentration; smaller is more skewed.")
@click.option("--sigma", type=float, default=D.sigma, show_default=True, help="unbalanced: the log-normal spread of client sizes; 0 is equal.")
@click.option("--seed", type=int, default=D.seed, show_default=True, help="Seeds partition, initial model, sampling and shuffling.")
@click.option("--hosts", type=int, default=None, help="Client host actors. Default: as many as the cluster's CPUs (and GPUs) allow.")
@click.option("--cpus-per-host", "cpus_per_host", type=float, default=D.cpus_per_host, show_default=True, help="Ray CPUs per client host; a CPU host runs that many torch threads (at least 1).")
@click.option("--gpus-per-host", "gpus_per_host", type=float, default=D.gpus_per_host, show_default=True, help="Ray GPUs per client host; fractions share a GPU (0.1: up to 10 hosts per GPU). Hosts with a GPU train on it.")
@click.option("--min-fit-fraction", "min_fit_fraction", type=float, default=D.min_fit_fraction, show_default=True, help="Accept a round once this fraction of the sampled clients returned, instead of retraining failed ones.")
@click.option("--round-timeout", "round_timeout", type=float, default=None, help="Seconds a round's training may take; clients still training then count as failed (their host is restarted).")
@click.option("--aggregator", type=click.Choice(AGGREGATORS), default=D.aggregator, show_default=True,
              help="How updates are combined: FedAvg's example-weighted mean, or the coordinate-wise median or trimmed mean.")
@click.option("--host-sums/--no-host-sums", "host_sums", default=D.host_sums, show_default=True,
              help="FedAvg's sum made on the hosts: one exact partial sum per host a round instead of one weights buffer per "
              "client (fedavg aggregator with fedavg, fedprox or a server optimizer; others send each update). Same bytes either way.")
@click.option("--krum-f", "krum_f", type=int, default=D.krum_f, show_default=True,
              help="krum, multi-krum: the faulty clients assumed among a round's m (m must exceed 2F + 2); multi-krum "
              "averages the m - F updates of best score.")
@click.option("--strategy", default=D.strategy, show_default=True,
              help="What happens around the aggregate: fedavg; server optimizers fedavgm, fedadagrad, fedadam, fedyogi; "
              "client-side fedprox (--mu) or scaffold; dp-fedavg (--clip, --noise-multiplier, optionally "
              "--server-optimizer); personalized fedper, fedrep (--head-epochs), fedbn, ditto (--ditto-lambda: "
              "docs/personalization.md); or module:attr / "
              "file.py:attr (see docs/algorithms.md).")
@click.option("--server-lr", "server_lr", type=float, default=None,
              help="Server optimizers' learning rate. Default: " + ", ".join(f"{k} {v:g}" for k, v in SERVER_LR.items()) + ".")
@click.option("--server-momentum", "server_momentum", type=float, default=D.server_momentum, show_default=True,
              help="fedavgm: the server momentum.")
@click.option("--beta1", type=float, default=D.beta1, show_default=True, help="fedadagrad, fedadam, fedyogi: first-moment decay.")
@click.option("--beta2", type=float, default=D.beta2, show_default=True, help="fedadam, fedyogi: second-moment decay.")
@click.option("--tau", type=float, default=D.tau, show_default=True, help="fedadagrad, fedadam, fedyogi: the adaptivity (epsilon).")
@click.option("--mu", type=float, default=D.mu, show_default=True, help="fedprox: the weight of the proximal term (mu/2)||w - w_global||^2.")
@click.option("--ditto-lambda", "ditto_lambda", type=float, default=D.ditto_lambda, show_default=True,
              help="ditto: the pull (lambda/2)||v - w||^2 of each client's personal model v toward the global w; 0 is "
                   "local training alone.")
@click.option("--head-epochs", "head_epochs", type=int, default=D.head_epochs, show_default=True,
              help="fedrep: epochs a client trains its own head, the body frozen, before --epochs of the body (head "
                   "frozen); 10 is the paper's.")
@click.option("--concurrency", type=int, default=None,
              help="fedbuff, fedasync: clients training at once. Default: m, the clients a synchronous round samples.")
@click.option("--buffer", type=int, default=None,
              help="fedbuff: arrivals per server update (K). Default: min(10, --concurrency).")
@click.option("--staleness", default=None, metavar="constant|polynomial:A|hinge:A,B",
              help="fedbuff, fedasync: an update tau versions stale counts s(tau): 1, (1 + tau)^-A, or 1 up to B and "
                   "then 1 / (A (tau - B) + 1). Default: polynomial:0.5.")
@click.option("--server-optimizer", "server_optimizer", type=click.Choice(["fedavg", *SERVER_LR]), default=None,
              help="fedbuff: this server optimizer's step on the buffer's pseudo-gradient (with --server-lr, --beta1, "
                   "... as for the synchronous strategy) in place of w + eta (average - w); dp-fedavg: its step on the "
                   "noised average's (DP-FedAvgM, DP-FedAdam: post-processing, the same epsilon). fedavg: none, the "
                   "default.")
@click.option("--mixing", type=float, default=None,
              help="fedasync: the weight a (fresh) arrival gets against the model, w <- (1 - a s) w + a s y. Default: 0.6.")
@click.option("--client-speed", "client_speed", default=None, metavar="lognormal:SIGMA",
              help="Put clients on a virtual clock with uneven speeds: each client's seconds per example is 0.01 x "
                   "exp(SIGMA z), z drawn from the seed (network 10 Mbit/s up, 50 down). metrics.jsonl gains "
                   "virtual_seconds.")
@click.option("--client-trace", "client_trace", default=None, metavar="FILE.csv",
              help="Clients' profiles and availability on the virtual clock: rows client,speed,up_mbps,down_mbps "
                   "(seconds per example, megabits/s) and client,online_from,online_until (virtual seconds); a client "
                   "with windows is online only inside them.")
@click.option("--deadline", type=float, default=None,
              help="Virtual seconds a round waits: clients finishing later are dropped (reported as late).")
@click.option("--over-select", "over_select", type=float, default=None,
              help="Sample ceil(m x (1 + F)) online clients and keep the first m to finish (inside --deadline).")
@click.option("--dp", "dp", type=click.Choice(["gaussian"]), default=None,
              help="The DP stage around --strategy (fedavg, a server optimizer or fedprox): DP-FedAvg's Poisson "
                   "sampling, clipping (--clip), Gaussian noise (--noise-multiplier) and accountant on that method's "
                   "clients and server step; --strategy fedadam --dp gaussian is DP-FedAdam, --strategy fedavg --dp "
                   "gaussian is --strategy dp-fedavg to the byte. The dp-fedavg settings below apply.")
@click.option("--clip", default=str(D.clip), show_default=True, metavar="S|adaptive",
              help="dp-fedavg: each client update's L2 norm is clipped to this (S); adaptive: the clip follows "
              "--target-quantile of the update norms (Andrew et al. 2021), from --initial-clip.")
@click.option("--noise-multiplier", "noise_multiplier", type=float, default=D.noise_multiplier, show_default=True,
              help="dp-fedavg: Gaussian noise of standard deviation this times --clip is added to the clipped sum (z).")
@click.option("--delta", type=float, default=D.delta, show_default=True, help="dp-fedavg: epsilon is reported at this delta.")
@click.option("--target-epsilon", "target_epsilon", type=float, default=None,
              help="dp-fedavg: stop cleanly before the round that would spend more than this epsilon.")
@click.option("--dp-seed", "dp_seed", type=int, default=None,
              help="dp-fedavg: take who is sampled and the noise from this seed instead of a secret from the OS, so "
              "that a run can be repeated; its result is then NOT private (the seed gives the noise away).")
@click.option("--target-quantile", "target_quantile", type=float, default=None,
              help="dp-fedavg --clip adaptive: the quantile of the clients' update norms the clip follows (gamma). "
              "Default: 0.5.")
@click.option("--clip-lr", "clip_lr", type=float, default=None,
              help="dp-fedavg --clip adaptive: the clip's geometric learning rate (eta): C <- C exp(-eta (b - gamma)). "
              "Default: 0.2.")
@click.option("--initial-clip", "initial_clip", type=float, default=None,
              help="dp-fedavg --clip adaptive: the clip of round 1. Default: 0.1.")
@click.option("--clip-count-noise", "clip_count_noise", type=float, default=None,
              help="dp-fedavg --clip adaptive: the std (sigma_b) of the noise on the count of unclipped updates; must "
              "exceed z/2, and the update's noise becomes (z^-2 - (2 sigma_b)^-2)^-1/2 so epsilon stays z's. "
              "Default: the expected clients a round / 20.")
@click.option("--accountant", type=click.Choice(ACCOUNTANTS), default=D.accountant, show_default=True,
              help="dp-fedavg: how epsilon is counted: pld (privacy loss distributions, tighter) or rdp (Renyi DP). "
              "A resumed run keeps its own (rdp for runs from before this flag).")
@click.option("--strict-dp-check", "strict_dp_check", is_flag=True, default=False,
              help="dp-fedavg: refuse to start (exit 2) when the noise on the average would have a larger norm than the "
              "clip, instead of warning.")
@click.option("--trim-fraction", "trim_fraction", type=float, default=D.trim_fraction, show_default=True,
              help="trimmed-mean: drop floor(F * m) of the m values at each end of every coordinate; in [0, 0.5).")
@click.option("--byzantine", type=int, default=D.byzantine, show_default=True,
              help="Faulty clients, chosen by the seed for the whole run, that send an --attack instead of their update.")
@click.option("--attack", type=click.Choice(ATTACKS), default=D.attack, show_default=True,
              help="What faulty clients send: sign-flip (update reversed, times --attack-scale), gaussian (noise of std --attack-scale) or nan.")
@click.option("--attack-scale", "attack_scale", type=float, default=D.attack_scale, show_default=True,
              help="sign-flip: factor on the reversed update; gaussian: standard deviation of the noise.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=D.precision, show_default=True,
              help="bf16: bfloat16 convolutions and matrix products with float32 master weights (faster on CPUs with bf16 instructions).")
@click.option("--address", default=None, envvar="RAY_ADDRESS", show_envvar=True,
              help="Attach to an existing Ray cluster ('auto', HOST:PORT or ray://HOST:PORT) instead of starting a local one "
                   "(without it, a local Ray is started even when another runs on this machine).")
@click.option("--data-dir", "data_dir", default=None, help="The directory the task's loader reads (the MNIST tasks: torchvision's layout, downloaded there when "
              "absent). Default: $FEDACTORS_DATA, else the per-user cache.")
@click.option("--eval-every", "eval_every", type=int, default=D.eval_every, show_default=True, help="Evaluate the global model on the whole test set every N rounds (and after the last).")
@click.option("--compress", default=None, metavar="q8|q4|q2[:rotate]|topk:F|sign",
              help="Send each client's update (weights - global) quantized stochastically to 8, 4 or 2 bits a value, "
                   "in blocks of 512 with their min and step (:rotate: a random Hadamard rotation first); or its "
                   "largest fraction F of coordinates, or its signs, both with error feedback.")
@click.option("--compress-down", "compress_down", default=None, metavar="q8|q4|q2[:rotate]",
              help="Send each client the global model as a quantized delta from the model it last received (the "
                   "round-0 model if none): 8, 4 or 2 bits a value in blocks of 512, :rotate first; it trains from what "
                   "it decodes. bytes_down counts the encoding.")
@click.option("--secure-aggregation", "secure_aggregation", type=click.Choice(SECURE_AGGREGATIONS), default=None,
              help="Mask each client's update so that the server learns only the round's sum, which is plain FedAvg's "
                   "to the byte (docs/secure-aggregation.md): secagg masks each client with all the round's others "
                   "(Bonawitz et al. 2017), secagg+ with k neighbours on a random graph (Bell et al. 2020). With "
                   "fedavg, fedprox or a server optimizer and --aggregator fedavg; not with --dp or --compress.")
@click.option("--secagg-neighbours", "secagg_neighbours", type=int, default=None, metavar="K",
              help="--secure-aggregation secagg+: each client's neighbours k, even and below the round's clients. "
                   "Default: the smallest k Google's fcp would choose for the round's clients, up to 5% of them "
                   "colluding with the server and a third dropping out (every other client where none is smaller).")
@click.option("--secagg-threshold", "secagg_threshold", type=int, default=None, metavar="T",
              help="--secure-aggregation: the neighbours' shares (t <= k) that recover a client's secrets when it "
                   "drops out; t - 1 colluding clients learn nothing. Default: fcp's t for k (secagg+), n/2 + 1 of the "
                   "round's n clients (secagg).")
@click.option("--eval-clients", "eval_clients", type=float, default=None,
              help="Evaluate clients one by one as well: this seeded fraction of them keeps 20% of its examples out of "
                   "training and is evaluated on them (mean, 10th percentile, worst, share at --target); data with "
                   "owners' test sets (client_test, LEAF) evaluates every client on its own without it.")
@click.option("--client-test-fraction", "client_test_fraction", type=float, default=None,
              help="Every client keeps this seeded fraction of its examples out of training as its own test split; "
                   "each evaluation judges the global model and each client's personalized one on every client's "
                   "split (weighted and unweighted mean, p10, p50, worst, share of clients personalization hurt) and "
                   "writes each client's accuracy to clients.jsonl.")
@click.option("--finetune-steps", "finetune_steps", type=int, default=D.finetune_steps, show_default=True,
              help="Personalize by fine-tuning: before a client's model is judged on its own split, this many SGD "
                   "steps (--lr, --batch-size) on its training examples from the global model (FedAvg-FT), after the "
                   "algorithm's own personalization if it has one.")
@click.option("--holdout-clients", "holdout_clients", type=float, default=None,
              help="A seeded fraction of the clients never trains: each evaluation judges them on their own splits "
                   "(--client-test-fraction) after --finetune-steps from the global model, beside the clients that "
                   "trained (the participation gap). The paper's uniform sampling only.")
@click.option("--target", type=float, default=D.target, show_default=True, help="Test accuracy (or --target-metric's value) whose first crossing is reported as rounds-to-target.")
@click.option("--target-metric", "target_metric", default=D.target_metric, show_default=True,
              help="What --target is a value of: accuracy, loss (reached at or below it), or a metric of the task's own "
                   "(reached at or above it, or below for those the task lists in minimize).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Output directory for metrics.jsonl, run.json, weights.npy. Default: runs/RUN_ID.")
@redis_option("an embedded Redis server keeping its data in OUT/checkpoints.")
@click.option("--run-id", "run_id", default=None, help="Name of a new run (letters, digits, . _ -). Default: generated from the time.")
@click.option("--resume", "resume", default=None, metavar="RUN_ID", help="Continue RUN_ID from its newest valid checkpoint, with its stored configuration.")
@click.option("--checkpoint-every", "checkpoint_every", type=int, default=D.checkpoint_every, show_default=True, help="Checkpoint after every N rounds (and after the last).")
@click.option("--keep", type=int, default=D.keep, show_default=True, help="Checkpoints kept per run (the newest N rounds).")
@click.option("--store-retry-seconds", "store_retry_seconds", type=float, default=30.0, show_default=True, help="How long to retry an unreachable store mid-run before stopping (exit 3).")
@click.option("--quiet", "-q", is_flag=True, help="Print only warnings and the closing summary.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per event on stdout: header, start, warning, round, summary "
              "(and privacy, interrupted, already_finished or dry_run where they happen).")
@click.option("--dry-run", "dry_run", is_flag=True, help="Print the resolved configuration and the planned resources, and start nothing.")
@click.option("--tensorboard", "tensorboard", default=None, metavar="DIR",
              help="Log to TensorBoard: event files in DIR/RUN_ID (tensorboard --logdir DIR) with the settings, every "
                   "number of each metrics.jsonl line at step = round, and run.json at the end; a --resume continues "
                   "them. Needs the tensorboard package (pip install 'fedactors[trackers]').")
@click.option("--mlflow", "mlflow", is_flag=False, flag_value="", default=None, metavar="[URI]",
              help="Log to MLflow (experiment fedactors, run named RUN_ID): the settings as params, every number of "
                   "each metrics.jsonl line at step = round once checkpointed, run.json and figures as artifacts. URI: "
                   "an http(s):// tracking server or a store; without one, the one a --resume run last logged to, "
                   "else $MLFLOW_TRACKING_URI, else a file store mlruns/ in the current directory. Needs mlflow-skinny "
                   "(pip install 'fedactors[trackers]').")
@click.option("--tracker-optional", "tracker_optional", is_flag=True,
              help="A --tensorboard or --mlflow that cannot be reached or written (exit 2 before round 1 without "
                   "this), or fails later, is left out with one warning; the run goes on.")
def run(out: Path | None, batch_size: str, redis_url: str | None, run_id: str | None, resume: str | None,
        store_retry_seconds: float, quiet: bool, as_json: bool, dry_run: bool, tensorboard: str | None,
        mlflow: str | None, tracker_optional: bool, **flags: object) -> None:
    """Run a federated experiment (FedAvg on MNIST's CNN by default), or --resume one: a live progress bar in a
    terminal, a line per round elsewhere."""
    from fedactors import api
    from fedactors.store.checkpoint import check_run_id

    from fedactors.task import with_absolute_paths

    forget_redis_variable()
    flags.update(with_absolute_paths(flags))
    flags["batch_size"] = parse_batch_size(batch_size)
    flags["clip"] = parse_clip(flags["clip"])
    if resume and run_id:
        raise ConfigError("--resume names the run to continue; drop --run-id")
    if quiet and as_json:
        raise ConfigError("--quiet and --json exclude each other")
    if not store_retry_seconds > 0:
        raise ConfigError(f"--store-retry-seconds must be positive, got {store_retry_seconds}")
    run_id = check_run_id(resume or run_id or api.new_run_id())
    out = out if out is not None else Path("runs") / run_id
    mode = "json" if as_json else "quiet" if quiet else "auto"
    if resume:
        changes = _given(flags, (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT_MAP))
        if dry_run:
            with api.open_store(redis_url, out, store_retry_seconds) as (store, _):
                ckpt, config, _ = api.latest(store, run_id, out, changes)
            show_plan(api.plan(config, run_id, out, redis_url, resume_round=ckpt.round), mode)
            return
        hooks = _trackers(tensorboard, mlflow, tracker_optional, out)
        with exit_on_interrupt():
            api.continue_run(run_id, out, redis_url, store_retry_seconds, changes, mode, hooks=hooks)
        return
    _refuse_idle_flags(flags)
    config = RunConfig(**natural_clients(flags))  # type: ignore[arg-type]
    if dry_run:
        show_plan(api.plan(config, run_id, out, redis_url), mode)
        return
    hooks = _trackers(tensorboard, mlflow, tracker_optional, out)
    with exit_on_interrupt():
        api.start(config, run_id, out, redis_url, store_retry_seconds, mode, hooks=hooks)


def _trackers(tensorboard: str | None, mlflow: str | None, optional: bool, out: Path):
    """The run's hooks: the trackers its flags ask for, each checked before anything of the run is written."""
    from fedactors.callbacks import Hooks
    from fedactors.trackers import from_flags

    return Hooks(from_flags(tensorboard, mlflow, optional, out))


def _given(flags: dict, sources: tuple) -> dict:
    """The flags this command line set (not their defaults)."""
    ctx = click.get_current_context()
    return {k: v for k, v in flags.items() if ctx.get_parameter_source(k) in sources}


def _refuse_idle_flags(flags: dict) -> None:
    """A flag given for a setting that the rest of the command switches off is a mistake: say so."""
    refuse_idle_settings(set(_given(flags, (ParameterSource.COMMANDLINE, ParameterSource.DEFAULT_MAP))), flags)


def with_secure_preview(plan: dict) -> dict:
    """`plan` (api.plan's) with what the run's secure aggregation costs a round, if it has it
    (fedactors.runtime.preview.secure_preview: its model built here for its length)."""
    config = RunConfig.from_dict(plan["config"])
    if config.secure_aggregation is None:
        return plan
    from fedactors.data.registry import load_task
    from fedactors.runtime.experiment import model_weights
    from fedactors.runtime.preview import secure_preview

    return {**plan, "secure_aggregation": secure_preview(config, model_weights(load_task(config.task)))}


def show_plan(plan: dict, mode: str) -> None:
    """--dry-run's output: one JSON object (--json), or the configuration and a few lines of plan."""
    plan = with_secure_preview(plan)
    if mode == "json":
        click.echo(json.dumps({"event": "dry_run", **plan}))
        return
    config = plan["config"]
    click.echo(json.dumps(config, indent=2))
    threads, gpus = plan["threads_per_host"], plan["gpus_per_host"]
    click.echo(
        f"would run {plan['run_id']}: {plan['hosts']} client hosts ({plan['hosts_from']}), each "
        f"{plan['cpus_per_host']:g} CPU{f' and {gpus:g} GPU' if gpus else ''} "
        f"with {threads} torch thread{'s' * (threads > 1)}; {plan['clients_per_round']} clients per round; rounds "
        f"{(plan['resume_after_round'] or 0) + 1}..{plan['rounds']}; checkpoints in {plan['store']}; outputs in {plan['out']}"
    )
    click.echo(f"task {plan['task']}; data: {plan['data']}")
    if plan["privacy"] is not None:
        for line in plan["privacy"]["lines"]:
            click.echo(line)
        if plan["privacy"]["warning"]:
            click.echo(f"warning: {plan['privacy']['warning']}")
    if plan.get("clock") is not None:
        from fedactors.config import ASYNC_STRATEGIES
        from fedactors.runtime.preview import preview_lines

        for line in preview_lines(plan["clock"], config["strategy"] in ASYNC_STRATEGIES):
            click.echo(line)
    if plan.get("secure_aggregation") is not None:
        from fedactors.runtime.preview import secure_lines

        for line in secure_lines(plan["secure_aggregation"]):
            click.echo(line)
    p = plan["partition"]
    if p is None:
        return
    labels = (f"; labels per client min {p['labels']['min']}, median {p['labels']['median']:g}, max {p['labels']['max']}"
              if "labels" in p else "")
    click.echo(f"partition {config['partition']}: {p['clients']} clients; examples per client min {p['examples']['min']}, "
               f"median {p['examples']['median']:g}, max {p['examples']['max']}{labels}")
    if "fewest" in p:
        click.echo("owners with the fewest examples: " + ", ".join(f"{o['owner']} ({o['examples']})" for o in p["fewest"]))
