"""bench/clients.py's workload on Flower's Ray simulation: clients per second, many tiny clients a round.

Run with bench/peers/.venv-flower/bin/python (see setup_flower.sh); bench/clients.py --peer flower
does that and compares. It reuses bench/peers/flower_round.py: its data cache (load_data: the
IDX files read once per actor process, the most favourable setup for Flower) and its
SameClientsFedAvg (the clients fedactors.seeding samples, mapped to the simulation's nodes;
it stamps each round's dispatch and the replies' arrival). The workload: K clients of an IID
partition (fedactors.data.partition), m = round(C K) of them a round, E=1, B=10, lr 0.1, no
evaluation (fraction_evaluate 0, no evaluate_fn), one torch thread per Ray actor and one actor
per CPU (--actors).

The client does what the floor in bench/clients.py does, no more: the model is built once per
actor process (fedactors.model.FlatModel, the same CNN) and each call loads the global weights
into it, trains with fedactors.runtime.client.local_update and replies with the flat weights as a
one-array ArrayRecord. flower_round.py's client builds a new CNN every call, a few
milliseconds that a 1-example client would be charged for; that is the benchmark's code, not
Flower's, so it is not used here.

What is timed, per round (Flower allows no closer look without patching it):
  wait_seconds         SameClientsFedAvg.configure_train entered (the round's dispatch: messages
                       built, then pushed) -> aggregate_train entered (Grid.send_and_receive has
                       every reply). clients/s = m / this. The in-memory Grid polls for replies
                       every 0.1 s (InMemoryGrid.pull_interval), so this is late by up to 0.1 s.
  last_result_seconds  the same start -> the last client's return from its train function, in
                       its actor (before its reply is serialised and travels back): an upper
                       bound on Flower's clients/s, free of the polling.
  train_seconds        the busiest actor's sum of its clients' time inside the train function
                       from loading the weights to the reply's ArrayRecord.
Round 1 is warm-up (actors import torch and load the data); bench/clients.py takes the median
of rounds 2+. Peak memory: PSS/RSS of the whole process tree (this process, Ray's head
processes and actors), sampled by bench/clients.py's ProcessMemory, and this process's own
peak (it runs the ServerApp: Flower's counterpart of fedactors' coordinator).

    .venv-flower/bin/python flower_clients.py --clients 6000 --frac 0.01 [--rounds 4] [--actors 2]

Prints a line per round, then one JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
for p in (str(HERE), str(HERE.parent), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import flower_round  # noqa: E402  data cache, SameClientsFedAvg and its TIMES
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fedactors.seeding import Purpose, generator, torch_seed  # noqa: E402

TIMES = flower_round.TIMES  # filled by SameClientsFedAvg: rounds' start and aggregate times, clients' metrics

# --- ClientApp ------------------------------------------------------------------------------------

client_app = ClientApp()
_MODEL: dict = {}  # this actor process's model, built on its first call


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """The floor's per-client work: global weights into the model, E epochs of SGD, the weights back."""
    from fedactors.runtime.client import local_update
    from fedactors.model import FlatModel

    t_call = time.time()
    cfg = msg.content["config"]
    data, load_seconds = flower_round.load_data(cfg)
    if "model" not in _MODEL:
        torch.set_num_threads(1)
        _MODEL["model"] = FlatModel()
    model = _MODEL["model"]
    cid = int(context.node_config["partition-id"])
    round_idx = int(cfg["server-round"])
    t0 = time.perf_counter()
    idx = data["indices"][cid]
    images, labels = torch.from_numpy(data["train_images"][idx]), torch.from_numpy(data["train_labels"][idx])
    model.set_weights(msg.content["arrays"].to_numpy_ndarrays()[0])
    loss = local_update(model, images, labels, epochs=int(cfg["epochs"]), batch_size=int(cfg["batch-size"]),
                        lr=float(cfg["lr"]), rng=generator(Purpose.SHUFFLE, int(cfg["seed"]), round_idx, cid))
    arrays = ArrayRecord([model.state.numpy()])  # np.save into the record's own bytes: a copy
    train_seconds = time.perf_counter() - t0
    metrics = MetricRecord({
        "num-examples": len(idx), "train_loss": loss, "train_seconds": train_seconds, "load_seconds": load_seconds,
        "pid": os.getpid(), "partition": cid, "t_call": t_call, "t_end": time.time(),
    })
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


# --- ServerApp ------------------------------------------------------------------------------------


def make_server_app(args: argparse.Namespace) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedactors.model import FlatModel

        TIMES["server_main"] = time.time()
        cfg = ConfigRecord({
            "data-dir": args.data_dir, "num-clients": args.clients, "partition": "iid", "seed": args.seed,
            "epochs": args.epochs, "batch-size": args.batch_size, "lr": args.lr,
        })
        initial = FlatModel(init_seed=torch_seed(args.seed)).get_weights()  # fedactors' round-0 weights
        m = clients_per_round(args.frac, args.clients)
        strategy = flower_round.SameClientsFedAvg(
            num_clients=args.clients, seed=args.seed, fraction_train=args.frac, fraction_evaluate=0.0,
            min_train_nodes=m, min_available_nodes=args.clients,
        )
        strategy.start(grid=grid, initial_arrays=ArrayRecord([initial]), num_rounds=args.rounds, train_config=cfg)
        TIMES["mapping"] = strategy.mapping_used

    return server_app


def clients_per_round(frac: float, clients: int) -> int:
    """m = max(round(C K), 1), halves up: fedactors' RunConfig.clients_per_round."""
    return max(int(np.floor(frac * clients + 0.5)), 1)


def round_figures(r: int) -> dict:
    t = TIMES["rounds"][r]
    clients = TIMES["clients"].get(r, [])
    per_actor: dict[int, float] = {}
    for c in clients:
        per_actor[c["pid"]] = per_actor.get(c["pid"], 0.0) + c["train_seconds"]
    return {
        "round": r,
        "num_updates": len(clients),
        "wait_seconds": t["aggregate_start"] - t["start"],
        "last_result_seconds": max(c["t_end"] for c in clients) - t["start"] if clients else None,
        "dispatch_seconds": min(c["t_call"] for c in clients) - t["start"] if clients else None,
        "train_seconds": max(per_actor.values(), default=None),
        "aggregate_seconds": t["aggregate_end"] - t["aggregate_start"],
        "actors": len(per_actor),
        "errors": t.get("errors", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=6000, help="K")
    parser.add_argument("--frac", type=float, default=0.01, help="C: m = round(C K) clients a round")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=4, help="round 1 is warm-up")
    parser.add_argument("--actors", type=int, default=None, help="Ray CPUs, one actor per CPU (default: all CPUs)")
    parser.add_argument("--data-dir", default=os.environ.get("FEDACTORS_DATA", ""))
    parser.add_argument("--no-memory", action="store_true", help="do not sample the process tree's memory")
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("--data-dir (or $FEDACTORS_DATA) is required: a directory holding MNIST/raw/*-ubyte")

    import flwr
    from clients import ProcessMemory
    from flwr.simulation import run_simulation

    t0 = time.time()
    with ProcessMemory(enabled=not args.no_memory) as mem:
        init_args = {"num_cpus": args.actors} if args.actors else {}
        run_simulation(
            server_app=make_server_app(args), client_app=client_app, num_supernodes=args.clients,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args},
        )
    rounds = [round_figures(r) for r in sorted(TIMES["rounds"]) if "aggregate_end" in TIMES["rounds"][r]]
    if len(rounds) < args.rounds:
        raise SystemExit(f"the Flower simulation finished {len(rounds)} of {args.rounds} rounds (see the log above)")
    out = {
        "flwr_version": flwr.__version__, "torch_version": torch.__version__, "rounds": rounds,
        "processes": max(r["actors"] for r in rounds), "sampling": TIMES.get("mapping"),
        "startup_seconds": TIMES["rounds"][1]["start"] - t0, "command_seconds": time.time() - t0,
        **mem.figures(), "coordinator": mem.process(pid=os.getpid()),
    }
    for r in rounds:
        print(f"round {r['round']}: {r['num_updates']} clients, wait {r['wait_seconds']:.3f} s "
              f"(last result {r['last_result_seconds']:.3f}, first call {r['dispatch_seconds']:.3f}), "
              f"train {r['train_seconds']:.3f} s on {r['actors']} actors{'; errors ' + str(r['errors']) if r['errors'] else ''}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    # Run as a script, this file is __main__; hand Flower the ClientApp from the module imported
    # by name, so actors unpickle it by reference and keep their model and data between calls.
    import flower_clients

    flower_clients.main()
