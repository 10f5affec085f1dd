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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedactors.attacks import byzantine_clients, corrupt
from fedactors.compress import parse as parse_compressor, send
from fedactors.config import RunConfig
from fedactors.data.registry import load_task
from fedactors.local import LocalSettings, optimizer_step
from fedactors.messages import EvalPart, HostSum, Update
from fedactors.partition import Parts
from fedactors.seeding import Purpose, client_torch_seed, generator, torch_seed
from fedactors.task import Task

if TYPE_CHECKING:
    import torch

    from fedactors.model import FlatModel


def local_update(
    model: FlatModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int | None,
    lr: float | Callable[[int], float],
    rng: np.random.Generator,
    grad_hook: Callable[[], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> float:
    """E epochs of minibatch steps, reshuffled each epoch by `rng`; returns the last epoch's mean loss.

    `lr`: the learning rate, or step -> learning rate (steps counted from 0 over the whole update; see
    fedactors.local). `optimizer`: a torch optimizer over the model's parameters (fedactors.local); None is
    plain SGD, the model's own step. `grad_hook` adjusts the gradient of every step (FedProx, SCAFFOLD: see
    `prox_hook`, `scaffold_hook`)."""
    import torch

    n = len(images)
    step = n if batch_size is None else batch_size
    rate = lr if callable(lr) else (lambda _: lr)
    k = 0  # steps taken
    last_epoch_loss = 0.0
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        x_epoch, y_epoch = images[order], labels[order]
        losses = []
        for start in range(0, n, step):
            x, y = x_epoch[start : start + step], y_epoch[start : start + step]
            if optimizer is None:
                losses.append(model.sgd_step(x, y, rate(k), grad_hook))
            else:
                losses.append(optimizer_step(model, x, y, optimizer, rate(k), grad_hook))
            k += 1
        last_epoch_loss = float(np.mean(losses))
    return last_epoch_loss


def local_steps(num_examples: int, epochs: int, batch_size: int | None) -> int:
    """SGD steps a client takes: E * ceil(n / B)."""
    return epochs * (1 if batch_size is None else -(-num_examples // batch_size))


def prox_hook(model: FlatModel, global_weights: np.ndarray, mu: float) -> Callable[[], None]:
    """FedProx (Li et al. 2020): the gradient of (mu/2)||w - w_global||^2, mu (w - w_global), added to every step's."""
    import torch

    anchor = torch.from_numpy(np.array(global_weights[: model.params.numel()])).to(model.params.device)
    scratch = torch.empty_like(anchor)

    def hook() -> None:
        torch.sub(model.params, anchor, out=scratch)
        model.grads.add_(scratch, alpha=mu)

    return hook


def scaffold_hook(model: FlatModel, c: np.ndarray, c_i: np.ndarray) -> Callable[[], None]:
    """SCAFFOLD (Karimireddy et al. 2020): every step's gradient corrected by c - c_i."""
    import torch

    p = model.params.numel()
    correction = torch.from_numpy(np.subtract(c[:p], c_i[:p])).to(model.params.device)

    def hook() -> None:
        model.grads.add_(correction)

    return hook


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
    ) -> None:
        """The data may come here or later through `load` (a Ray actor gets it by `load`, so that a
        restarted actor is re-sent the data by whoever restarts it instead of relying on Ray to
        keep its constructor arguments). `task`: the Task itself, when it is not config.task's spec."""
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

    def _fit(self, global_weights: np.ndarray, client_id: int, round_idx: int, c: np.ndarray | None = None,
             c_i: np.ndarray | None = None) -> float:
        """Train client `client_id` from `global_weights`, leaving its weights in the model; returns its loss."""
        import torch

        idx = self.client_indices[client_id]
        # Fancy indexing copies: the tensors are private and writable, the shared arrays untouched.
        images = torch.from_numpy(self.train_images[idx]).to(self.device)
        labels = torch.from_numpy(self.train_labels[idx]).to(self.device)
        self.model.set_weights(global_weights)
        cfg = self.config
        hook = None
        if cfg.strategy == "fedprox" and cfg.mu > 0:
            hook = prox_hook(self.model, global_weights, cfg.mu)
        elif cfg.strategy == "scaffold":
            hook = scaffold_hook(self.model, c, c_i)
        seed = client_torch_seed(cfg.seed, round_idx, client_id)
        if self.device.type == "cpu":  # the generator a CPU model draws from; torch.manual_seed would also queue
            torch.default_generator.manual_seed(seed)  # a lazy seeding of every other device (0.4 ms, with a stack trace)
        else:
            torch.manual_seed(seed)
        return local_update(
            self.model,
            images,
            labels,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=self.local.rates(round_idx),
            rng=generator(Purpose.SHUFFLE, cfg.seed, round_idx, client_id),
            grad_hook=hook,
            optimizer=self.local.make_optimizer(self.model),  # fresh each update: no state is kept between them
        )

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

    def train(self, global_weights: np.ndarray, client_id: int, round_idx: int, c: np.ndarray | None = None,
              c_i: np.ndarray | None = None, residual: np.ndarray | None = None) -> Update:
        """Client `client_id`'s update in round `round_idx`, starting from `global_weights`.

        With --strategy fedprox every step adds FedProx's proximal gradient; with scaffold, `c`
        and `c_i` (the server's and this client's control variates) correct every step, and the
        update carries the client's new control variate. With --compress topk or sign, `residual`
        is the client's error-feedback residual and the update carries its new one."""
        start = time.perf_counter()
        loss = self._fit(global_weights, client_id, round_idx, c, c_i)
        weights = self.model.get_weights()  # a copy: the model's buffer is reused next call
        control = None
        if self.config.strategy == "scaffold":
            # c_i+ = c_i - c + (x - y) / (K lr), over the parameters; a float buffer has no gradient. K lr is
            # the sum of the steps' learning rates under a schedule (the round's lr_t, a warm-up's ramp).
            cfg = self.config
            p = self.model.params.numel()
            control = np.zeros_like(weights)
            steps = local_steps(len(self.client_indices[client_id]), cfg.epochs, cfg.batch_size)
            scale = np.float32(1.0 / self.local.lr_sum(round_idx, steps))
            control[:p] = (c_i[:p] - c[:p]) + (global_weights[:p] - weights[:p]) * scale
        sent, new_residual = self._result(weights, global_weights, client_id, round_idx, residual)
        return Update(
            client_id=client_id,
            round=round_idx,
            weights=sent,
            num_examples=len(self.client_indices[client_id]),
            train_loss=loss,
            train_seconds=time.perf_counter() - start,
            host=self.host_id,
            control=control,
            residual=new_residual,
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
                loss = self._fit(global_weights, cid, round_idx)
            except Exception as exc:  # noqa: BLE001 - a failure is data: the coordinator retries it elsewhere
                failures.append((cid, f"{type(exc).__name__}: {exc}"))
                continue
            weights = self._result(self.model.state.detach().cpu().numpy(), global_weights, cid, round_idx)[0]
            n = len(self.client_indices[cid])
            if not total.add(weights, n):  # refuses NaN and infinity too: tell them apart only then
                (out_of_range if all_finite(weights) else rejected).append(cid)
            else:
                for key, value in zip(done, (cid, n, loss, time.perf_counter() - start)):
                    done[key].append(value)
        return HostSum(host=self.host_id, round=round_idx, acc=total.acc, rejected=rejected,
                       out_of_range=out_of_range, failures=failures, **done)

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
