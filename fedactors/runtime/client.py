"""Local training: `local_update` for one client, and `ClientHost`, which serves many clients.

A ClientHost holds read-only views of the prepared training and test sets (on a Ray node
these map the object store's one shared copy) and the partition, so it can train any client
it is given; its model is the run's task's (fedactors.task), which it resolves itself from the
configuration's spec unless it is handed the Task. It has no Ray dependency and runs and is
tested as a plain object.

torch is imported where it is used, not at module level: a process that only unpickles a
ClientHost actor handle imports this module (Ray loads the actor's class module), and the
coordinator, which holds those handles, would otherwise pay ~2.5 s and ~420 MiB for a torch
it never calls (bench/round.py's start-up probe).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedactors.attacks import byzantine_clients, corrupt
from fedactors.compress import parse as parse_compressor, send
from fedactors.config import RunConfig
from fedactors.data.registry import load_task
from fedactors.algorithms import (OBJECT_PREFIX, Algorithm, LocalClient, Reply, as_reply, bind, make_algorithm,
                                  send_problem)
from fedactors.algorithms.fedprox import prox_hook  # noqa: F401 - importable from here, where they were
from fedactors.algorithms.scaffold import scaffold_hook  # noqa: F401
from fedactors.algorithms.local import LocalSettings, local_steps, local_update  # noqa: F401 - local_update: as above
from fedactors.messages import EvalPart, HostSum, Update
from fedactors.data.partition import Parts
from fedactors.seeding import torch_seed
from fedactors.runtime.states import ALGORITHM, RESIDUAL
from fedactors.task import Task

if TYPE_CHECKING:
    import torch



def choose_device(gpus: float, cuda_available: bool) -> tuple[str, str | None]:
    """("cuda" or "cpu", why a requested GPU is not used, or None).

    A host given a GPU share whose torch cannot use CUDA (a CPU-only build, no driver, or a
    cluster declaring logical GPUs it does not have) trains on the CPU instead of failing: the
    arithmetic is the same and the run completes, and the reason is reported with the run.
    """
    if gpus <= 0:
        return "cpu", None
    if cuda_available:
        return "cuda", None  # Ray sets CUDA_VISIBLE_DEVICES, so the assigned GPU is cuda:0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "cpu", f"assigned GPU {visible or '?'} but torch cannot use CUDA here; training on the CPU"


def precision_warning(precision: str, device: str, native_bf16: bool) -> str | None:
    """Why `precision` will be slow on this host, or None.

    bf16 autocast on a CPU without bf16 instructions (AVX512-BF16 or AMX) is emulated: measured
    on an AVX2 EPYC (Zen 3), one epoch of a client update took 8x as long as in fp32 and
    evaluation 12x. The arithmetic is still bf16, so the run is not refused, but the user is told.
    """
    if precision != "bf16" or device != "cpu" or native_bf16:
        return None
    return ("--precision bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): torch emulates it, "
            "several times slower than fp32 (8x measured on an AVX2 CPU); --precision fp32 is faster here")


def cpu_has_bf16() -> bool:
    """Whether torch's CPU kernels (oneDNN) run bf16 natively here; True when torch cannot say."""
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else True
    except RuntimeError:  # an op this torch build does not register
        return True


class ClientHost:
    """Trains whichever clients it is handed, from data it holds for the whole run."""

    def __init__(
        self,
        config: RunConfig,
        train_images: np.ndarray | None = None,
        train_labels: np.ndarray | None = None,
        client_indices: Sequence[np.ndarray] | None = None,
        test_images: np.ndarray | None = None,
        test_labels: np.ndarray | None = None,
        *,
        threads: int = 1,
        gpus: float = 0.0,
        host_id: int = 0,
        task: Task | None = None,
        algorithm: object | None = None,
    ) -> None:
        """The data may come here or later through `load` (a Ray actor gets it by `load`, so that a
        restarted actor is re-sent the data by whoever restarts it instead of relying on Ray to
        keep its constructor arguments). `task`: the Task itself, when it is not config.task's spec;
        `algorithm` likewise (a user's object whose client half trains here), else config.strategy's."""
        import torch

        from fedactors.model import FlatModel

        torch.set_num_threads(threads)
        self.config = config
        self.task = task if task is not None else load_task(config.task)
        self.host_id = host_id
        self.threads = threads
        device, self.fallback = choose_device(gpus, torch.cuda.is_available())
        self.device = torch.device(device)
        # Built with the run's init seed, as initial_weights() builds round 0's: a frozen parameter never travels,
        # so every host must make the same one itself. (For the rest this changes no byte: set_weights overwrites
        # them, and build() forks the RNG, leaving the global one as it was.)
        self.model = FlatModel(self.task.model, init_seed=torch_seed(config.seed), device=self.device,
                               precision=config.precision, loss=self.task.loss,
                               labels=self.task.labels)
        slow = precision_warning(config.precision, self.device.type, self.device.type != "cpu" or cpu_has_bf16())
        self.warnings = [w for w in (self.fallback, slow) if w]  # what the user should hear about this host
        self.byzantine = byzantine_clients(config.seed, config.clients, config.byzantine)
        self.compressor = parse_compressor(config.compress)
        self.local = LocalSettings.of(config)
        self._algorithm = algorithm
        self._bound = False
        self.loaded = False
        if train_images is not None:
            self.load(train_images, train_labels, client_indices, test_images, test_labels)

    def load(
        self,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        client_indices: Sequence[np.ndarray],
        test_images: np.ndarray,
        test_labels: np.ndarray,
        held_out: np.ndarray | None = None,
    ) -> bool:
        """Hold the (read-only) data for the run; returns True so a caller can wait on it. `held_out`: the training
        examples (indices) that --eval-clients keeps out of training, in client order, for per-client evaluation."""
        self.train_images = train_images
        self.train_labels = train_labels
        self.client_indices = client_indices if isinstance(client_indices, Parts) else Parts.of(client_indices)
        self.test_images = test_images
        self.test_labels = test_labels
        self.held_out = held_out
        self._test_slices: dict[tuple[int, int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        self.loaded = True
        return True

    def describe(self) -> dict:
        """Who and where this host is: for placement reports and fault injection in tests.

        `parameters` are the shapes of the trained parameters and `weights` the floats that travel;
        a model with frozen parameters adds `frozen`: their names, how many floats they hold, and a
        digest of their values (every host must have built the same ones)."""
        info = {
            "host": self.host_id, "pid": os.getpid(), "device": str(self.device), "threads": self.threads,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "fallback": self.fallback,
            "warnings": self.warnings, "parameters": self.model.shapes, "weights": self.model.size,
        }
        if self.model.frozen:  # only then: what every other run's hosts report stays as it was
            info["frozen"] = {"names": self.model.frozen, "floats": self.model.frozen_floats(),
                              "sha256": self.model.frozen_digest()}
        if "ray" in sys.modules:  # running as a Ray actor: say which node and accelerators
            import ray

            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                info["node_id"] = ctx.get_node_id()
                info["gpu_ids"] = ctx.get_accelerator_ids().get("GPU", [])
        return info

    def initial_weights(self) -> np.ndarray:
        """The run's round-0 global weights: torch's default init, seeded from the run seed."""
        from fedactors.model import FlatModel

        return FlatModel(self.task.model, init_seed=torch_seed(self.config.seed)).get_weights()

    def num_examples(self) -> list[int]:
        return self.client_indices.sizes.tolist()

    @property
    def algorithm(self) -> object:
        """The run's algorithm, whose client half trains here: the object given, else made from the configuration
        (a run given a server-only object from Python has the default client half)."""
        if self._algorithm is None:
            spec = self.config.strategy
            self._algorithm = Algorithm() if spec.startswith(OBJECT_PREFIX) else make_algorithm(self.config)
        if not self._bound:  # the run's settings, once, as the coordinator's copy gets them
            bind(self._algorithm, self.config)
            self._bound = True
        return self._algorithm

    def _fit(self, global_weights: np.ndarray, client_id: int, round_idx: int,
             received: dict[str, np.ndarray] | None = None, state: dict[str, np.ndarray] | None = None) -> Reply:
        """Train client `client_id` from `global_weights` by the algorithm's client half, leaving its weights in the
        model; returns its Reply. `received`: what the server half's configure() sent this client; `state`: what
        the algorithm kept for it (by the names it kept them under)."""
        import torch

        idx = self.client_indices[client_id]
        # Fancy indexing copies: the tensors are private and writable, the shared arrays untouched.
        images = torch.from_numpy(self.train_images[idx]).to(self.device)
        labels = torch.from_numpy(self.train_labels[idx]).to(self.device)
        self.model.set_weights(global_weights)
        cfg = self.config
        client = LocalClient(self.model, images, labels, client_id, round_idx, global_weights, received or {},
                             self.local, cfg.epochs, cfg.batch_size, cfg.seed, state or {})
        algorithm = self.algorithm
        update = getattr(algorithm, "local_update", None)  # a server-only strategy: the default local update
        name = getattr(algorithm, "name", type(algorithm).__name__)
        reply = as_reply(update(client) if update is not None else client.train(), name)
        problem = send_problem(reply.send) or (send_problem(reply.keep, "keeps") if reply.keep is not None else None)
        if problem:
            raise TypeError(f"{name}.local_update's Reply {problem}")
        return reply

    def _result(self, weights: np.ndarray, global_weights: np.ndarray, client_id: int, round_idx: int,
                residual: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(what the server gets of the client, its new error-feedback residual or None): its weights (as --compress
        encodes them, decoded on the server's behalf), or a Byzantine client's corruption of them. An update holding
        NaN or infinity is not encoded (compress.send): the weights hold them, so the server rejects the client."""
        new_residual = None
        if self.compressor is not None:
            weights, new_residual = send(self.compressor, weights, global_weights, self.config.seed, round_idx,
                                         client_id, residual, threads=self.threads)
        if client_id not in self.byzantine:
            return weights, new_residual
        cfg = self.config
        return corrupt(cfg.attack, weights, global_weights, scale=cfg.attack_scale, seed=cfg.seed,
                       round_idx=round_idx, client_id=client_id), new_residual

    def train(self, global_weights: np.ndarray, client_id: int, round_idx: int,
              names: Sequence[tuple[str, str]] = (), *arrays: np.ndarray) -> Update:
        """Client `client_id`'s update in round `round_idx`, starting from `global_weights`.

        `names` and `arrays`: ("sent", name) for what the algorithm's configure() sent this client (SCAFFOLD's c),
        ("state", name) for the client's own state (fedactors.runtime.states: "algorithm/<name>", and with
        --compress topk or sign its error-feedback residual), as separate arguments so that Ray resolves each (an
        array many clients share travels once). The update carries what its local update sent back (`sent`), its
        metrics, and the state to keep (`kept`, the stages it replaces in `kept_stages`). Under secure aggregation
        ("secagg", "job": a fedactors.secagg.stage.MaskJob) its weights are the masked update (uint64) instead."""
        start = time.perf_counter()
        given = {"sent": {}, "state": {}, "secagg": {}}
        for (kind, name), array in zip(names, arrays, strict=True):
            given[kind][name] = array
        state = given["state"]
        mine = {n[len(ALGORITHM):]: a for n, a in state.items() if n.startswith(ALGORITHM)}
        reply = self._fit(global_weights, client_id, round_idx, given["sent"], mine)
        weights = self.model.get_weights()  # a copy: the model's buffer is reused next call
        residual = state.get(RESIDUAL)
        if residual is None and self.compressor is not None and self.compressor.feedback:
            residual = np.zeros(len(global_weights), np.float32)  # a client's first: zeros, added as ever
        sent, new_residual = self._result(weights, global_weights, client_id, round_idx, residual)
        job = given["secagg"].get("job")
        if job is not None:  # only the masked update leaves the client: the server can read nothing but the sum
            sent = job.mask(client_id, sent, len(self.client_indices[client_id]), self.config.seed)
        kept, stages = {}, []
        if reply.keep is not None:
            kept.update({ALGORITHM + n: a for n, a in reply.keep.items()})
            stages.append(ALGORITHM)
        if new_residual is not None:
            kept[RESIDUAL] = new_residual
            stages.append(RESIDUAL)
        return Update(
            client_id=client_id,
            round=round_idx,
            weights=sent,
            num_examples=len(self.client_indices[client_id]),
            train_loss=reply.loss,
            train_seconds=time.perf_counter() - start,
            host=self.host_id,
            kept=kept,
            kept_stages=tuple(stages),
            sent=reply.send,
            metrics=reply.metrics,
        )

    def train_sum(self, global_weights: np.ndarray, client_ids: list[int], round_idx: int,
                  total_examples: int) -> HostSum:
        """Train `client_ids` in turn and return one exact partial sum of their weights (host-side sums).

        Each client's weights are added, with its share of the round's `total_examples`, straight
        from the model's buffer into an aggregate.ExactSum: no copy per client. A client whose
        training raises is reported as a failure and the others go on; weights holding NaN or
        infinity are rejected, never summed."""
        from fedactors.aggregate import ExactSum, all_finite

        total = ExactSum(self.model.size, total_examples, threads=self.threads)
        done: dict[str, list] = {"clients": [], "num_examples": [], "train_losses": [], "train_seconds": []}
        rejected, out_of_range, failures = [], [], []
        for cid in client_ids:
            start = time.perf_counter()
            try:
                reply = self._fit(global_weights, cid, round_idx)
                if reply.send:  # host sums are for algorithms that send nothing but their weights (Spec.host_sums)
                    raise TypeError(f"{self.algorithm.name} sends {sorted(reply.send)}: it cannot be summed on hosts")
            except Exception as exc:  # noqa: BLE001 - a failure is data: the coordinator retries it elsewhere
                failures.append((cid, f"{type(exc).__name__}: {exc}"))
                continue
            weights = self._result(self.model.state.detach().cpu().numpy(), global_weights, cid, round_idx)[0]
            n = len(self.client_indices[cid])
            if not total.add(weights, n):  # refuses NaN and infinity too: tell them apart only then
                (out_of_range if all_finite(weights) else rejected).append(cid)
            else:
                for key, value in zip(done, (cid, n, reply.loss, time.perf_counter() - start)):
                    done[key].append(value)
        return HostSum(host=self.host_id, round=round_idx, acc=total.acc, rejected=rejected,
                       out_of_range=out_of_range, failures=failures, **done)

    def evaluate_personal(self, global_weights: np.ndarray, round_idx: int, clients: Sequence[int],
                          positions: Sequence[np.ndarray], held_out: bool, names: Sequence[tuple[int, str]] = (),
                          *arrays: np.ndarray) -> list[tuple[int, int, int, float]]:
        """Each of `clients`' personalized model judged on its own split: [(client, correct, count, loss sum)].

        A client's split is `positions` (its examples' positions among the held-out training examples with
        `held_out`, else among the test examples: its owner's). Its personalized model starts from `global_weights`:
        the algorithm's personalize(client), given the client's state (`names`: (client, name) of `arrays`), then
        --finetune-steps plain SGD steps on its training examples."""
        import torch

        states: dict[int, dict[str, np.ndarray]] = {}
        for (cid, name), array in zip(names, arrays, strict=True):
            if name.startswith(ALGORITHM):
                states.setdefault(cid, {})[name[len(ALGORITHM):]] = array
        algorithm = self.algorithm
        personalize = getattr(algorithm, "personalize", None)
        cfg = self.config
        out = []
        for cid, pos in zip(clients, positions, strict=True):
            idx = self.client_indices[cid]
            images = torch.from_numpy(self.train_images[idx]).to(self.device)
            labels = torch.from_numpy(self.train_labels[idx]).to(self.device)
            self.model.set_weights(global_weights)
            client = LocalClient(self.model, images, labels, cid, round_idx, global_weights, {}, self.local,
                                 cfg.epochs, cfg.batch_size, cfg.seed, states.get(cid, {}))
            if personalize is not None:
                personalize(client)
            client.finetune(cfg.finetune_steps)
            rows = self.held_out[pos] if held_out else pos
            x = torch.from_numpy(self.train_images[rows] if held_out else np.array(self.test_images[rows]))
            y = torch.from_numpy(self.train_labels[rows] if held_out else np.array(self.test_labels[rows]))
            result = self.model.evaluate_all(x.to(self.device), y.to(self.device))
            out.append((int(cid), int(result.correct), len(rows), float(result.loss_sum)))
        return out

    def evaluate(self, weights: np.ndarray, start: int, stop: int, *, hits: bool = False,
                 held_out: bool = False) -> EvalPart:
        """Loss sum, correct count and the task's metrics of `weights` on test examples [start, stop); with `hits`
        each example's correctness too; with `held_out`, on those held-out training examples instead."""
        import torch

        t0 = time.perf_counter()
        self.model.set_weights(weights)
        key = (start, stop, held_out)
        if key not in self._test_slices:  # a host evaluates the same slice every round
            if held_out:
                idx = self.held_out[start:stop]
                x, y = self.train_images[idx], self.train_labels[idx]  # fancy indexing copies
            else:
                x, y = np.array(self.test_images[start:stop]), np.array(self.test_labels[start:stop])
            self._test_slices[key] = (torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device))
        result = self.model.evaluate_all(*self._test_slices[key], metrics=self.task.metrics, hits=hits)
        return EvalPart(loss_sum=result.loss_sum, correct=result.correct, count=stop - start,
                        seconds=time.perf_counter() - t0, sums=result.sums, hits=result.hits)
