"""The round benchmark's workload on Flower's Ray simulation: same CNN, partition, sampling and seeds.

Run with bench/peers/.venv-flower/bin/python (see setup_flower.sh); bench/round.py --peer flower
does that and compares. Flower 1.42's Message API: a ServerApp whose FedAvg samples the same
clients fedactors samples (fedactors.seeding.sample_clients, mapped to the simulation's nodes),
trains them on a ClientApp with one CPU and one torch thread per Ray actor, and evaluates the
global model centrally on the 10,000 test images after each round (two torch threads: the
clients are idle then, as our two hosts' halves run in parallel). The data is read from the
IDX files once per actor process and cached, the most favourable setup for Flower.

Prints the same per-round breakdown as bench/round.py (training time per client is measured
inside the client; overhead = round - slowest actor's training - evaluation), start-up
(command -> round 1 start), the first round, peak PSS/RSS of the process tree, then one JSON
object as the last stdout line.

    .venv-flower/bin/python flower_round.py [--rounds 3] [--t0 EPOCH_SECONDS_AT_COMMAND_START]
    .venv-flower/bin/python flower_round.py --selftest   # 4 clients, 1 round, synthetic data
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

T_IMPORT = time.time()
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# fedactors.seeding and fedactors.data need only NumPy; bench/_util only psutil. Flower copies
# sys.path into its actors' PYTHONPATH, so they import this module (and its cache) by name.
for p in (str(HERE), str(HERE.parent), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from fedactors.seeding import Purpose, generator, sample_clients, torch_seed  # noqa: E402

T_TORCH = time.time()
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

T_FLWR = time.time()


class CNN(nn.Module):
    """fedactors.model.CNN, copied: conv5x5x32-pool-conv5x5x64-pool-fc512-fc10, 'same' padding, 1,663,370 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def initial_model(seed: int) -> CNN:
    """The same initial weights as fedactors: torch's default init under torch_seed(seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed(seed))
        return CNN()


# --- data, once per process -----------------------------------------------------------------------

_DATA: dict = {}


def load_data(cfg: ConfigRecord) -> tuple[dict, float]:
    """(arrays and partition, seconds spent loading here: 0 once cached in this actor process)."""
    key = (cfg["data-dir"], cfg["num-clients"], cfg["partition"], cfg["seed"])
    if key in _DATA:
        return _DATA[key], 0.0
    t0 = time.perf_counter()
    if cfg["data-dir"]:
        from fedactors.data import load_mnist  # NumPy only: IDX parse and normalisation
        from fedactors.data.partition import partition

        mnist = load_mnist(Path(cfg["data-dir"]), download=False)
        # canonical strides, as arrays come out of Ray's object store to fedactors' hosts (the
        # loader's stride-0 channel axis makes torch's convolution take other bits)
        train_images = np.empty(mnist.train_images.shape, np.float32)
        train_images[...] = mnist.train_images
        d = {"train_images": train_images, "train_labels": mnist.train_labels,
             "test_images": mnist.test_images, "test_labels": mnist.test_labels}
        d["indices"] = partition(d["train_labels"], cfg["num-clients"], cfg["partition"], cfg["seed"])
    else:  # --selftest: synthetic, so the setup check needs no data set
        rng = np.random.default_rng(0)
        d = {"train_images": rng.standard_normal((400, 1, 28, 28), dtype=np.float32),
             "train_labels": rng.integers(0, 10, 400), "test_images": rng.standard_normal((100, 1, 28, 28), dtype=np.float32),
             "test_labels": rng.integers(0, 10, 100)}
        d["indices"] = np.array_split(np.arange(400), cfg["num-clients"])
    _DATA.clear()
    _DATA[key] = d
    return d, time.perf_counter() - t0


# --- ClientApp ------------------------------------------------------------------------------------

client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """E epochs of plain SGD on this node's partition from the global weights; timings in the metrics."""
    t_call = time.time()
    torch.set_num_threads(1)
    cfg = msg.content["config"]
    data, load_seconds = load_data(cfg)
    cid = int(context.node_config["partition-id"])
    round_idx = int(cfg["server-round"])
    t0 = time.perf_counter()
    idx = data["indices"][cid]
    images, labels = torch.from_numpy(data["train_images"][idx]), torch.from_numpy(data["train_labels"][idx])
    model = CNN()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=float(cfg["lr"]))
    rng = generator(Purpose.SHUFFLE, int(cfg["seed"]), round_idx, cid)
    n, step = len(idx), int(cfg["batch-size"]) or len(idx)
    losses: list[float] = []
    for _ in range(int(cfg["epochs"])):
        order = torch.from_numpy(rng.permutation(n))
        x_epoch, y_epoch = images[order], labels[order]
        losses = []
        for start in range(0, n, step):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x_epoch[start:start + step]), y_epoch[start:start + step])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    arrays = ArrayRecord(model.state_dict())
    train_seconds = time.perf_counter() - t0
    metrics = MetricRecord({
        "num-examples": n, "train_loss": float(np.mean(losses)), "train_seconds": train_seconds,
        "load_seconds": load_seconds, "pid": os.getpid(), "partition": cid, "t_call": t_call, "t_end": time.time(),
    })
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


# --- ServerApp ------------------------------------------------------------------------------------

TIMES: dict = {"rounds": {}, "clients": {}}


class SameClientsFedAvg(FedAvg):
    """FedAvg that trains the clients fedactors.seeding samples for the round, and times each phase."""

    def __init__(self, *, num_clients: int, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_clients, self.seed = num_clients, seed
        self.mapping_used = "partition-id"

    def _partition_nodes(self, grid: Grid) -> list[int] | None:
        """Node ids by partition id: the simulation creates node i for partition i, in order.

        The Grid API only offers a set of node ids, so this reads the in-memory link state's
        node table (insertion ordered). If that is not there, Flower's own random sampling is used.
        """
        state = getattr(grid, "state", None)
        if state is None or not hasattr(state, "get_node_info"):
            return None
        while len(nodes := list(state.get_node_info())) < self.num_clients:
            time.sleep(0.05)
        return [n.node_id for n in nodes]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        TIMES["rounds"][server_round] = {"start": time.time()}
        nodes = self._partition_nodes(grid)
        if nodes is None:
            self.mapping_used = "flower-random"
            return super().configure_train(server_round, arrays, config, grid)
        m = max(int(len(nodes) * self.fraction_train), self.min_train_nodes)
        chosen = [nodes[c] for c in sample_clients(self.seed, server_round, self.num_clients, m)]
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, chosen, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        t = TIMES["rounds"][server_round]
        t["aggregate_start"] = time.time()
        TIMES["clients"][server_round] = [
            {k: msg.content["metrics"][k] for k in ("train_seconds", "load_seconds", "pid", "partition", "t_call", "t_end")}
            for msg in replies if not msg.has_error()
        ]
        t["errors"] = [msg.error.reason for msg in replies if msg.has_error()]
        out = super().aggregate_train(server_round, replies)
        t["aggregate_end"] = time.time()
        return out


def central_evaluate(round_idx: int, arrays: ArrayRecord, test: dict) -> MetricRecord | None:
    """The global model on the 10,000 test images (skipped for the initial model: fedactors does not evaluate it)."""
    if round_idx == 0:
        return None
    t0 = time.time()
    model = CNN()
    model.load_state_dict(arrays.to_torch_state_dict())
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(test["labels"]), 1000):
            x, y = test["images"][s:s + 1000], test["labels"][s:s + 1000]
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    n = len(test["labels"])
    TIMES["rounds"][round_idx].update(eval_start=t0, eval_end=time.time())
    return MetricRecord({"accuracy": correct / n, "loss": loss_sum / n})


def make_server_app(args: argparse.Namespace) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        TIMES["server_main"] = time.time()
        torch.set_num_threads(2 if args.eval_threads is None else args.eval_threads)
        cfg = ConfigRecord({
            "data-dir": args.data_dir, "num-clients": args.clients, "partition": args.partition, "seed": args.seed,
            "epochs": args.epochs, "batch-size": 0 if args.batch_size.lower() == "inf" else int(args.batch_size),
            "lr": args.lr,
        })
        data, load_seconds = load_data(cfg)
        TIMES["server_load_seconds"] = load_seconds
        test = {"images": torch.from_numpy(data["test_images"]), "labels": torch.from_numpy(data["test_labels"])}
        m = max(int(np.floor(args.frac * args.clients + 0.5)), 1)
        strategy = SameClientsFedAvg(
            num_clients=args.clients, seed=args.seed, fraction_train=args.frac, fraction_evaluate=0.0,
            min_train_nodes=m, min_available_nodes=args.clients,
        )
        TIMES["strategy_start"] = time.time()
        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(initial_model(args.seed).state_dict()), num_rounds=args.rounds,
            train_config=cfg, evaluate_fn=lambda r, a: central_evaluate(r, a, test),
        )
        TIMES["accuracy"] = {r: float(rec["accuracy"]) for r, rec in result.evaluate_metrics_serverapp.items()}
        TIMES["mapping"] = strategy.mapping_used

    return server_app


def breakdown(args: argparse.Namespace, t0: float, t_end: float) -> dict:
    rounds = []
    for r in sorted(TIMES["rounds"]):
        t = TIMES["rounds"][r]
        clients = TIMES["clients"].get(r, [])
        per_actor: dict[int, float] = {}
        for c in clients:
            per_actor[c["pid"]] = per_actor.get(c["pid"], 0.0) + c["train_seconds"]
        train = max(per_actor.values()) if per_actor else None
        round_seconds = t["eval_end"] - t["start"]
        eval_seconds = t["eval_end"] - t["eval_start"]
        rounds.append({
            "round": r,
            "round_seconds": round_seconds,
            "train_seconds": train,
            "gather_seconds": (t["aggregate_start"] - t["start"]) - train if train is not None else None,
            "aggregate_seconds": t["aggregate_end"] - t["aggregate_start"],
            "eval_seconds": eval_seconds,
            "overhead_seconds": round_seconds - (train or 0.0) - eval_seconds,
            # where Flower's gathering goes: until the first client starts, and after the last one returns
            "dispatch_seconds": min(c["t_call"] for c in clients) - t["start"] if clients else None,
            "collect_seconds": t["aggregate_start"] - max(c["t_end"] for c in clients) if clients else None,
            "load_seconds": max((c["load_seconds"] for c in clients), default=None),
            "actors": len(per_actor),
            "clients": sorted(c["partition"] for c in clients),
            "errors": t.get("errors", []),
            "accuracy": TIMES.get("accuracy", {}).get(r),
        })
    first = TIMES["rounds"][1]
    return {
        "rounds": rounds,
        "startup_seconds": first["start"] - t0,
        "first_training_start_seconds": min(c["t_call"] for c in TIMES["clients"][1]) - t0 if TIMES["clients"].get(1) else None,
        "first_round_end_seconds": first["eval_end"] - t0,
        "after_last_round_seconds": t_end - TIMES["rounds"][max(TIMES["rounds"])]["eval_end"],
        "startup_breakdown": {
            "python_and_torch_import": T_TORCH - t0,
            "flwr_import": T_FLWR - T_TORCH,
            "to_server_main": TIMES.get("server_main", t0) - t0,
            "server_data_load": TIMES.get("server_load_seconds"),
            "to_strategy_start": TIMES.get("strategy_start", t0) - t0,
            "to_round1_start": first["start"] - t0,
            "to_first_client_call": min(c["t_call"] for c in TIMES["clients"][1]) - t0 if TIMES["clients"].get(1) else None,
            "actor_data_load_round1": max((c["load_seconds"] for c in TIMES["clients"].get(1, [])), default=None),
        },
        "sampling": TIMES.get("mapping"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--frac", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", default="10")
    parser.add_argument("--partition", default="noniid", choices=["iid", "noniid"])
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--actors", type=int, default=None, help="Ray CPUs, one actor per CPU (default: all CPUs)")
    parser.add_argument("--eval-threads", type=int, default=None, help="torch threads for central evaluation (default 2)")
    parser.add_argument("--data-dir", default=os.environ.get("FEDACTORS_DATA", ""))
    parser.add_argument("--t0", type=float, default=None, help="epoch seconds at command start (default: this process's start)")
    parser.add_argument("--selftest", action="store_true", help="4 clients, 1 round, 1 epoch on synthetic data")
    parser.add_argument("--no-memory", action="store_true",
                        help="do not sample the process tree's memory (timed runs: the sampler costs CPU)")
    args = parser.parse_args()
    if args.selftest:
        args.clients, args.frac, args.rounds, args.epochs, args.data_dir = 4, 0.5, 1, 1, ""
    elif not args.data_dir:
        parser.error("--data-dir (or $FEDACTORS_DATA) is required: a directory holding MNIST/raw/*-ubyte")

    import psutil
    from _util import TreeMemory

    t0 = args.t0 if args.t0 is not None else psutil.Process().create_time()
    import flwr
    from flwr.simulation import run_simulation

    with TreeMemory(enabled=not args.no_memory) as mem:
        init_args = {"num_cpus": args.actors} if args.actors else {}
        run_simulation(
            server_app=make_server_app(args), client_app=client_app, num_supernodes=args.clients,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args},
        )
        t_end = time.time()
    if not TIMES["rounds"] or "eval_end" not in TIMES["rounds"][max(TIMES["rounds"])]:
        raise SystemExit("the Flower simulation finished no round (see the log above)")
    out = {"flwr_version": flwr.__version__, "torch_version": torch.__version__, **breakdown(args, t0, t_end),
           "command_seconds": time.time() - t0, **mem.figures()}
    out["actors"] = max(r["actors"] for r in out["rounds"])
    if args.selftest:
        r = out["rounds"][0]
        ok = not r["errors"] and len(r["clients"]) == 2
        print(f"selftest: flwr {flwr.__version__}, 1 round with {len(r['clients'])} clients on {r['actors']} actors: "
              f"{'ok' if ok else 'FAILED ' + str(r['errors'])}")
        if not ok:
            raise SystemExit(1)
    else:
        for r in out["rounds"]:
            print(f"round {r['round']}: {r['round_seconds']:.3f} s (train {r['train_seconds']:.3f}, "
                  f"eval {r['eval_seconds']:.3f}, overhead {r['overhead_seconds']:.3f}; dispatch {r['dispatch_seconds']:.3f}, "
                  f"collect {r['collect_seconds']:.3f}) acc {r['accuracy']}")
        memory = "" if args.no_memory else f"; peak PSS {out['peak_pss_mib']:.0f} MiB, RSS {out['peak_rss_mib']:.0f} MiB"
        print(f"start-up {out['startup_seconds']:.2f} s{memory}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    # Run as a script, this file is __main__; hand Flower the ClientApp from the module imported
    # by name, so actors unpickle it by reference and keep their data cache between calls.
    import flower_round

    flower_round.T_IMPORT, flower_round.T_TORCH, flower_round.T_FLWR = T_IMPORT, T_TORCH, T_FLWR
    flower_round.main()
