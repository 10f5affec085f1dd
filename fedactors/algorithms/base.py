"""The algorithm protocol: a client half and a server half in one object.

A round, as an algorithm sees it (fedactors.runtime's loops do the rest: sampling, retries,
refusals, the exact sum, evaluation, checkpoints):

    server   configure(client_id, round_idx, weights) -> {name: float32 array}     what that client is sent
                                                         besides the global weights (its own state, say)
    host     local_update(client: LocalClient) -> Reply | float                    trains; the model's weights
                                                         afterwards are the client's result; client.state
                                                         is what its last Reply.keep kept
    server   aggregate(weights, combined, results, round_idx) -> new global weights  `combined` is the
                                                         aggregator's (--aggregator) model of the round,
                                                         `results` the accepted clients' Updates, each with
                                                         the arrays and metrics its Reply sent
    both     state() / load_state(buffers, scalars) / settings()                 as for a Strategy

`Algorithm` below is a base class whose methods are FedAvg's: subclass it and override what your
method changes (a client optimizer: `local_update`; a server optimizer: `aggregate`). A server-only
object with `step(weights, aggregate, updates, num_examples, round_idx)` (fedactors.strategy.Strategy,
the protocol before this one) is an algorithm whose client half is the default one.

Per-client state: a Reply's `keep` (named float32 arrays) is the client's `state` the next time it trains,
whichever host trains it. It lives in the run's store, not in the coordinator, and a checkpoint writes only
the clients whose state changed (fedactors.runtime.states), so it may be as large as a model per client.

What the client half gets, `LocalClient`, trains with `client.train(grad_hook)`: the run's default
local update (E epochs of minibatches reshuffled by the run's seeded generator, --client-optimizer,
--lr-schedule), so an algorithm that only adjusts each step's gradient (FedProx, SCAFFOLD) is a hook,
and one that trains otherwise uses `client.model`, `client.images`, `client.labels` itself. Whatever
it does, it must be a function of what it is given: the same seeds, the same bytes (a retried client
is retrained on another host).

A built-in is also described by a `Spec` (its settings, what it composes with), which the
configuration reads instead of checking the name: no built-in's name is tested outside the module
that defines it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedactors.algorithms.local import LocalSettings, local_steps, local_update
from fedactors.seeding import Purpose, client_torch_seed, generator

if TYPE_CHECKING:
    import torch

    from fedactors.messages import Update
    from fedactors.model import FlatModel


@dataclass
class Reply:
    """What a client's local update returns besides its weights (which are the model's after training)."""

    loss: float  # the last epoch's mean minibatch loss (reported as the round's train_loss)
    send: dict[str, np.ndarray] = field(default_factory=dict)  # float32 arrays for the server half (Update.sent)
    metrics: dict[str, float] = field(default_factory=dict)  # numbers for the server half (Update.metrics)
    # The client's state from now on (float32 arrays it finds in LocalClient.state next time it trains); None keeps
    # what it had. Kept only if the server accepts the update: a client whose update was not used keeps the old.
    keep: dict[str, np.ndarray] | None = None


@dataclass
class LocalClient:
    """One client's local update, on the host that trains it: the model (holding the global weights), the client's
    examples, what the server half sent it, and the run's default training loop (`train`)."""

    model: FlatModel
    images: torch.Tensor
    labels: torch.Tensor
    client_id: int
    round_idx: int
    global_weights: np.ndarray  # read-only: the weights the model started from
    received: dict[str, np.ndarray]  # configure()'s arrays for this client (read-only)
    local: LocalSettings
    epochs: int
    batch_size: int | None
    seed: int  # the run's --seed
    state: dict[str, np.ndarray] = field(default_factory=dict)  # what this client's last accepted Reply kept ({} at first)

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def steps(self) -> int:
        """The local update's steps: E * ceil(n / B)."""
        return local_steps(self.num_examples, self.epochs, self.batch_size)

    def lr_sum(self) -> float:
        """The learning rates of the update's steps, summed (K lr when constant)."""
        return self.local.lr_sum(self.round_idx, self.steps)

    def train(self, grad_hook: Callable[[], None] | None = None) -> float:
        """The run's default local update from the model's weights, each step's gradient adjusted by `grad_hook`
        (which may read model.params and add to model.grads); returns the last epoch's mean loss."""
        import torch

        seed = client_torch_seed(self.seed, self.round_idx, self.client_id)
        if self.model.state.device.type == "cpu":  # the generator a CPU model draws from; torch.manual_seed would also
            torch.default_generator.manual_seed(seed)  # queue a lazy seeding of every other device (0.4 ms)
        else:
            torch.manual_seed(seed)
        return local_update(self.model, self.images, self.labels, epochs=self.epochs, batch_size=self.batch_size,
                            lr=self.local.rates(self.round_idx),
                            rng=generator(Purpose.SHUFFLE, self.seed, self.round_idx, self.client_id),
                            grad_hook=grad_hook,
                            optimizer=self.local.make_optimizer(self.model))  # fresh each update: no state kept

    def weights(self) -> np.ndarray:
        """A copy of the model's flat weights (trained parameters, then float buffers)."""
        return self.model.get_weights()

    def finetune(self, steps: int, lr: float | None = None, grad_hook: Callable[[], None] | None = None) -> float:
        """`steps` plain SGD steps (at `lr`, else the run's --lr; --batch-size minibatches, reshuffled each pass) on
        the client's own examples from the model's weights, its draws keyed apart from training's (Purpose.FINETUNE):
        --finetune-steps, or a personalize() of your own. Returns the steps' mean loss (0.0 for no step)."""
        import torch

        if steps <= 0:
            return 0.0
        rng = generator(Purpose.FINETUNE, self.seed, self.round_idx, self.client_id)
        torch.default_generator.manual_seed(int(rng.integers(2**63)))
        n = self.num_examples
        size = n if self.batch_size is None else min(self.batch_size, n)
        rate = self.local.round_lr(self.round_idx) if lr is None else lr  # the round's rate (no warm-up)
        losses, order, at = [], rng.permutation(n), 0
        for _ in range(steps):
            if at + size > n:
                order, at = rng.permutation(n), 0
            pick = torch.from_numpy(order[at:at + size])
            at += size
            losses.append(self.model.sgd_step(self.images[pick], self.labels[pick], rate, grad_hook))
        return float(np.mean(losses))


class Algorithm:
    """FedAvg in the protocol's shape: subclass it and override the halves your method changes."""

    name = "algorithm"
    # False for a method that works from the accepted updates alone (`results`): the round skips --aggregator's
    # combination (and FedAvg's exact sum), and aggregate() is handed the current weights as `combined`.
    needs_aggregate = True

    def configure(self, client_id: int, round_idx: int, weights: np.ndarray) -> dict[str, np.ndarray]:
        """What client `client_id` is sent in round `round_idx` besides the global weights: named float32 arrays
        (the same array object for many clients travels once). FedAvg sends nothing more."""
        return {}

    def local_update(self, client: LocalClient) -> Reply | float:
        """Train `client`; the model's weights afterwards are its result. FedAvg: the default update."""
        return Reply(client.train())

    def aggregate(self, weights: np.ndarray, combined: np.ndarray, results: Sequence[Update],
                  round_idx: int) -> np.ndarray:
        """The new global weights from the round's `combined` model (the aggregator's) and the accepted `results`
        (clients in sampled order; each Update's `sent` and `metrics` are its Reply's). `weights` is the
        algorithm's own copy of the global model; `combined` and each result's weights may be read-only."""
        return self.step(weights, combined, [u.weights for u in results], [u.num_examples for u in results],
                         round_idx)

    def step(self, weights: np.ndarray, aggregate: np.ndarray, updates: Sequence[np.ndarray],
             num_examples: Sequence[int], round_idx: int) -> np.ndarray:
        """The server step of a server-only method (fedactors.strategy.Strategy): FedAvg takes the aggregate."""
        return aggregate

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(named 1-D float32 buffers, JSON-able scalars): everything the next round depends on."""
        return {}, {}

    def load_state(self, buffers: dict[str, np.ndarray], scalars: dict) -> None:
        """Become what `state` described (on resume)."""

    # personalize(client: LocalClient) -> None, if an algorithm has it: on the host, before client `client`'s own
    # model is judged on its own test split (--client-test-fraction, or its owner's test examples), with
    # client.model holding the global weights and client.state its kept state; it leaves the client's personalized
    # model in client.model (a local head put back, a personal model loaded, a few steps of client.finetune). It must
    # be a function of what it is given. Without it (and without --finetune-steps) the global model is the client's.

    def client_state_from(self, buffers: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                                        dict[int, dict[str, np.ndarray]]]:
        """(its own buffers, {client: the state its Reply would keep}) of a checkpoint's buffers: for a method whose
        per-client buffers an older checkpoint holds among its own (SCAFFOLD's c<k> before issue 36). Called before
        load_state on resume; the default moves nothing."""
        return buffers, {}

    def settings(self) -> dict:
        """The hyper-parameters, JSON-able: part of the run's fingerprint."""
        return {}

    def bind(self, config) -> None:
        """The run's settings (fedactors.config.RunConfig: clients, lr, epochs, seed, ...), handed to the coordinator's
        copy and to each host's before either uses it, possibly more than once (keep it idempotent). What the
        method reads here is in the run's fingerprint already. The default reads nothing."""


def as_reply(value: Any, where: str) -> Reply:
    """A local update's return value as a Reply (a bare loss is one); TypeError naming `where` otherwise."""
    if isinstance(value, Reply):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Reply(float(value))
    raise TypeError(f"{where}.local_update returned {type(value).__name__}, expected a Reply or a loss")


def vector_problem(arrays: dict) -> tuple[object, str | None] | None:
    """(name, what it is) of the first entry of `arrays` that is not a 1-D float32 array named by a string (what is
    None when the name is the problem), or None: what a checkpoint stores and a Reply sends."""
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            return name, None
        if not (isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim == 1):
            return name, f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
    return None


def send_problem(send: dict, verb: str = "sends") -> str | None:
    """What makes a Reply's `send` (or `keep`) unfit to travel (1-D float32 arrays named by strings), or None."""
    if not isinstance(send, dict):
        return f"{verb} a {type(send).__name__}, not a dict of named arrays"
    problem = vector_problem(send)
    if problem is None:
        return None
    name, got = problem
    return f"names an array {name!r}" if got is None else f"{verb} {name!r} as {got}, not a 1-D float32 array"


@dataclass(frozen=True)
class Spec:
    """What the configuration knows of a built-in algorithm, declared in the module that defines it."""

    name: str
    description: str  # one line, for `fedactors strategies`
    make: Callable[[Any], Any]  # RunConfig -> the algorithm object
    settings: tuple[str, ...] = ()  # the RunConfig fields it reads (given to another algorithm, they are refused)
    default_lr: float | None = None  # --lr when not given, if not the paper's 0.1
    default_server_lr: float | None = None  # --server-lr when not given
    host_sums: bool = False  # it needs only FedAvg's average and sends nothing else: hosts may sum their clients
    off_the_clock: str | None = None  # why it does not run on the virtual clock (None: it does)
    needs_fedavg: str | None = None  # why it needs --aggregator fedavg (None: any aggregator)
    plain_sgd_only: str | None = None  # why its client must take plain SGD steps (None: any client optimizer)
    asynchronous: bool = False  # it has no rounds: a server update every buffer of arrivals (fedactors.runtime.asynchronous)
    fixed_buffer: int | None = None  # asynchronous: arrivals per server update when not --buffer's
    takes_server_optimizer: bool = False  # --server-optimizer steps on what it makes of a round
    optimizer_settings: tuple[str, ...] = ()  # of its settings, those that need a --server-optimizer that reads them
    private: bool = False  # it is differentially private: Poisson sampling, an epsilon, --target-epsilon
    refuses_dp: str | None = None  # why the DP stage (--dp gaussian) does not compose with it (None: it does)
    copies_down: int = 0  # float32 copies of the weights sent to a client besides the weights themselves
    copies_up: int = 0  # ... and sent back with its update
    state_per_client: int = 0  # float32 copies of the weights it keeps per client seen
    client_state: str = "a copy of the weights"  # what it keeps per client, in words (the memory check's message)
    label: Callable[[dict], str] | None = None  # a run's label (fedactors report, plots): " name" and its settings,
    #                                             from the run's stored settings; None: " name" (+ a set server_lr)
    banner: Callable[[Any], str] | None = None  # the progress display's word for a run (RunConfig); None: its name
    means: dict[str, str] = field(default_factory=dict)  # `fedactors strategies`: what a setting's default means here
