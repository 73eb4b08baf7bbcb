"""The federated contract: an algorithm is a server program plus client handlers exchanging typed messages.

Runtimes (``fedpeft.runtime.local``, ``fedpeft.runtime.flower``) only deliver messages; they know nothing about
algorithms. An algorithm subclasses :class:`Algorithm` (the round loop, evaluation, checkpoints and update validation
are written once here) and names a :class:`ClientApp` whose handlers run on the clients. Multi-step protocols
(selection then training, split-learning forward/backward exchanges, server work between rounds) are plain code in
the algorithm's :meth:`Algorithm.fit_round`, which may call :meth:`Grid.send_and_receive` as often as it needs.
See docs/architecture.md for how the five techniques map onto it.
"""

from __future__ import annotations

import abc
import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import Tensor

from fedpeft.algorithms.aggregation import AggregationError, State, check_update, state_norm, state_sub
from fedpeft.comm.ledger import ByteLedger
from fedpeft.errors import ConfigError

if TYPE_CHECKING:
    from fedpeft.config import RunConfig

Scalar = int | float | str | bool
#: Flower's rule for message types, kept here so every algorithm is portable to Flower: ``train``, ``evaluate``,
#: ``query``, or one of them followed by ``.<identifier>``.
ACTION_RE = re.compile(r"^(train|evaluate|query)(\.[A-Za-z_][A-Za-z0-9_]*)?$")
KIND_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from ``parts`` (e.g. job seed, round, client): independent streams, no global RNG."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass
class Msg:
    """A runtime-independent message: ``flwr.Message`` cannot be built outside a Flower run, so algorithms use this
    and the Flower runtime converts at its boundary.

    Attributes
    ----------
    action : str
        ``train``, ``evaluate``, ``query`` or ``<one of them>.<name>`` (e.g. ``train.fltac``).
    arrays : dict[str, Tensor]
        Tensors that travel; the runtime encodes (and compresses) them and counts their bytes.
    config : dict[str, Scalar]
        Small settings (round, learning rate, rank, ...).
    metrics : dict[str, float]
        Numbers reported back (``num_examples``, ``loss``, ``accuracy``, ...).
    kinds : dict[str, str]
        The payload kind of arrays that are not adapter tensors, by key (e.g. ``{"ids": "ids"}``). Adapter tensors
        (the default kind) are compressed with ``comm.up`` / ``comm.down``; every other kind travels losslessly
        unless ``comm.payloads`` names a compressor for it; integer and bool tensors are always lossless. The
        ledger counts bytes per kind.
    """

    action: str
    arrays: dict[str, Tensor] = field(default_factory=dict)
    config: dict[str, Scalar] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not ACTION_RE.match(self.action):
            raise ValueError(f"message action {self.action!r} is invalid; expected train|evaluate|query[.<identifier>]")
        for key, kind in self.kinds.items():
            if key not in self.arrays:
                raise ValueError(f"message kinds name {key!r}, which is not one of its arrays")
            if not KIND_RE.match(kind):
                raise ValueError(f"payload kind {kind!r} of {key!r} must be an identifier")
        # Flower's ConfigRecord holds only these; checking here makes every runtime reject the same messages.
        for key, value in self.config.items():
            if not isinstance(value, (int, float, str, bool)):
                raise ValueError(f"message config {key!r}={value!r} must be an int, float, str or bool")


@dataclass
class Reply:
    """What came back from one client: its message, or the error that replaced it (exception, timeout)."""

    client_id: int
    msg: Msg | None
    error: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    cost: dict[str, float] = field(default_factory=dict)  # the device's cost of serving it (see runtime.transport)

    @property
    def ok(self) -> bool:
        return self.error is None and self.msg is not None


class Grid(Protocol):
    """What a runtime offers the server program."""

    ledger: ByteLedger  # every transfer, filled from the codec's byte counts

    def client_ids(self) -> list[int]:
        """Ids of the clients that can be addressed (``0 .. num_clients-1``)."""
        ...

    def send_and_receive(
        self, messages: Sequence[tuple[int, Msg]], *, round: int, timeout: float | None = None
    ) -> list[Reply]:
        """Deliver ``(client_id, msg)`` pairs, wait for the replies; one :class:`Reply` per message, sorted by
        client id (a client that failed or timed out gets a Reply with ``error`` set). Bytes go to the ledger."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Client states the runtime holds (if any) and the ledger, for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class ClientData:
    """One client's encoded examples: ``train`` (its partition minus the local test split) and ``test``."""

    train: Sequence[Mapping[str, Any]]
    test: Sequence[Mapping[str, Any]]
    word_ids: Tensor | None
    collate: Callable[[Sequence[Mapping[str, Any]]], dict[str, Tensor]]
    eval_mode: str


@dataclass
class ClientContext:
    """Everything a client handler may use. ``state`` persists across rounds for this client (tensors and scalars
    only, so that it maps onto Flower's ``context.state``); ``model`` is the shared base with the adapter attached."""

    client_id: int
    model: torch.nn.Module
    data: ClientData
    state: dict[str, Any]
    cfg: RunConfig
    #: device-cost overrides a handler may set (``params_held``, ``trainable_params``), reported with the reply
    cost: dict[str, float] = field(default_factory=dict)

    def generator(self, round: int, *salt: int | str) -> torch.Generator:
        """A generator seeded by (job seed, round, client, salt): the same on every runtime and after resume."""
        return torch.Generator().manual_seed(derive_seed(self.cfg.seed, round, self.client_id, *salt))


Handler = Callable[[ClientContext, Msg], Msg]


class ClientApp:
    """The client side of an algorithm: handlers registered by action name (no if/elif on strings).

    Define it at module level (``app = ClientApp("fedavg")`` + ``@app.on("train")``) so that Flower workers import
    it by reference and keep their cached model between messages.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._handlers: dict[str, Handler] = {}

    def on(self, action: str) -> Callable[[Handler], Handler]:
        """Decorator registering a handler for ``action`` (validated like :class:`Msg` actions)."""
        if not ACTION_RE.match(action):
            raise ValueError(f"action {action!r} is invalid; expected train|evaluate|query[.<identifier>]")

        def wrap(fn: Handler) -> Handler:
            if action in self._handlers:
                raise ValueError(f"client app {self.name!r} already handles {action!r}")
            self._handlers[action] = fn
            return fn

        return wrap

    def include(self, other: ClientApp) -> None:
        """Add ``other``'s handlers (an algorithm extending another reuses its client handlers)."""
        for action, fn in other._handlers.items():
            self.on(action)(fn)

    @property
    def actions(self) -> list[str]:
        return sorted(self._handlers)

    def handle(self, ctx: ClientContext, msg: Msg) -> Msg:
        try:
            handler = self._handlers[msg.action]
        except KeyError:
            raise ValueError(
                f"client app {self.name!r} has no handler for {msg.action!r}; it handles {self.actions}"
            ) from None
        return handler(ctx, msg)


class EvalSet(Protocol):
    """The server's evaluation examples, for algorithms that score several adapters per example (FL-TAC).

    ``tasks[i]`` is example i's task name; ``metric`` the per-example score's name (``accuracy``, ``rouge_l``).
    """

    tasks: list[str]
    metric: str

    def scores(self, state: State) -> list[float]:
        """One score per eval example with ``state`` loaded."""
        ...

    def evaluate_model(self, model: torch.nn.Module) -> dict[str, float]:
        """The run's evaluation (eval split, mode, batch size, generation length) of any causal LM over the
        clients' vocabulary, e.g. FedPT's proxy-tuned large model: the same metrics as the global adapter gets."""
        ...

    def features(self, state: State, featurize: Callable[..., Tensor], data: ServerData | None = None) -> Tensor:
        """``featurize(model, eval_examples, collate)`` with ``state`` loaded: one row per eval example (e.g.
        FL-TAC's router features); with ``data``, one row per example of the server's own data instead (e.g.
        FedHDS's anchors)."""
        ...


@dataclass
class ServerData:
    """Examples the server holds itself (``[server.data]``), encoded with the clients' tokenizer: prompts only
    (``labels`` all -100, ``label`` -1) unless the recipe asks for labels. Never the evaluation split."""

    examples: Sequence[Mapping[str, Any]]
    collate: Callable[[Sequence[Mapping[str, Any]]], dict[str, Tensor]]
    labeled: bool


@dataclass
class ServerContext:
    """What the runtime gives the server program: config, the initial adapter, the server-side evaluator, the run
    directory's writers, and the server's own resources (a runtime-independent view, so the same algorithm runs
    everywhere).

    ``models`` (by role, from ``[server.models]``) are loaded once, frozen, on ``device``, in the server process only:
    clients never load them. An algorithm may attach adapters to them and run backward (their state is the
    algorithm's to checkpoint, in :meth:`Algorithm.state_dict`). ``tokenizers`` are theirs; ``server_data`` is
    ``[server.data]``.
    """

    cfg: RunConfig
    initial_state: State
    evaluate: Callable[[State], dict[str, float]]
    log: Callable[..., None]
    save_adapter: Callable[[State, str], None]
    checkpoint: Callable[[int, dict[str, Any]], None]
    on_round: Callable[[int, dict[str, Any]], None] = lambda rnd, info: None
    eval_set: EvalSet | None = None
    models: Mapping[str, torch.nn.Module] = field(default_factory=dict)
    tokenizers: Mapping[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    server_data: ServerData | None = None


@dataclass
class Accepted:
    """A validated client reply: its arrays (usually an update), weight and metrics."""

    client_id: int
    arrays: State
    num_examples: int
    metrics: dict[str, float]


PRIMARY_METRICS = (("accuracy", max), ("rouge_l", max), ("perplexity", min), ("loss", min))


def primary_metric(metrics: Mapping[str, float]) -> tuple[str, Callable[..., Any]] | None:
    """The metric that ranks rounds (accuracy, else Rouge-L, else perplexity or loss) and whether max or min wins."""
    for name, better in PRIMARY_METRICS:
        if name in metrics:
            return name, better
    return None


class Algorithm(abc.ABC):
    """The server program. The round loop is written once in :meth:`run`; algorithms implement
    :meth:`fit_round` and :meth:`global_state`, and may override :meth:`evaluate_clients`, :meth:`state_dict` /
    :meth:`load_state_dict` (what a checkpoint must hold) and :meth:`check_config` (cross-field checks).
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = dict
    client_app: ClassVar[ClientApp]
    #: whether ``privacy.secure_aggregation`` can compute this algorithm's aggregate (a sum of updates)
    supports_secure_aggregation: ClassVar[bool] = False
    #: whether its clients act out ``[attack]`` (simulated Byzantine clients)
    simulates_attacks: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, server: ServerContext) -> None:
        self.cfg = cfg
        self.opts = cfg.algorithm
        self.server = server
        self.history: list[dict[str, Any]] = []  # global eval per evaluated round (round 0 = before training)
        self.replied: list[int] = []  # clients whose last collect() reply came back without error
        self.failures: list[int] = []  # clients that failed (error, timeout, offline) in the current round
        self.phases: dict[str, dict[str, Any]] = {}  # prepare / finish: seconds, bytes (when the phase ran)

    # ------------------------------------------------------------------ hooks
    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Cross-field checks of a whole run config (raise ConfigError); called while the config is built."""
        return None  # nothing to check by default

    @abc.abstractmethod
    def fit_round(self, rnd: int, grid: Grid) -> dict[str, Any]:
        """Run one round (any number of exchanges); return fields for the ``round`` event."""

    @abc.abstractmethod
    def global_state(self) -> State:
        """The server's adapter state: evaluated, saved per round and exported (see :meth:`adapters`)."""

    def adapters(self) -> dict[str, State]:
        """The adapters saved per round and at the end, by folder name (``""`` = the run's adapter folder itself).
        One global adapter by default; FL-TAC returns one per task cluster."""
        return {"": self.global_state()}

    def global_metrics(self, rnd: int) -> dict[str, float]:
        """The server-side evaluation of round ``rnd`` (0 = before training): the global adapter on the eval set."""
        return self.server.evaluate(self.global_state())

    def save_extras(self, folder: Path) -> None:
        """Write files that belong with the final adapters into ``folder`` (e.g. FL-TAC's router)."""
        return None

    def prepare(self, grid: Grid) -> dict[str, Any] | None:
        """Work before round 1, as its own phase (e.g. FedHDS's data selection, a first-contact query): any number
        of exchanges (their bytes are tagged ``prepare`` in the ledger). Return fields for the ``phase`` event, or
        None when there is no such phase (the default): then nothing is logged or checkpointed for it."""
        return None

    def finish(self, grid: Grid) -> dict[str, Any] | None:
        """Work after the last round, as its own phase (e.g. a last distillation or export exchange); like
        :meth:`prepare`."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint must hold to continue after this round (tensors and plain data)."""
        return {"history": self.history, "phases": self.phases}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = list(state["history"])
        self.phases = {k: dict(v) for k, v in state.get("phases", {}).items()}

    # ------------------------------------------------------------------ shared steps
    def client_lr(self, rnd: int) -> float:
        """The clients' learning rate in round ``rnd``: ``train.lr`` annealed across rounds by
        ``federation.lr_decay`` (each client's ``train.schedule`` still shapes it within its local steps)."""
        from fedpeft.training.loop import lr_factor

        fed = self.cfg.federation
        return self.cfg.train.lr * lr_factor(rnd - 1, fed.rounds, 0, fed.lr_decay)

    def sample_clients(self, rnd: int, ids: Sequence[int]) -> list[int]:
        """``clients_per_round`` distinct ids, drawn with a generator seeded by (seed, round): resumable."""
        k = min(self.cfg.federation.clients_per_round, len(ids))
        if k >= len(ids):
            return sorted(ids)
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, rnd, "sample"))
        chosen = torch.randperm(len(ids), generator=gen)[:k].tolist()
        return sorted(ids[i] for i in chosen)

    def collect(
        self,
        rnd: int,
        grid: Grid,
        messages: Sequence[tuple[int, Msg]],
        reference: Callable[[int], Mapping[str, Tensor]] | None = None,
        event: str = "client_train",
    ) -> list[Accepted]:
        """Send, receive, validate. Failed clients are logged (``failure``); updates that fail validation (keys and
        shapes of ``reference(client)``, floating dtype, finite values, ``max_update_norm``) are logged
        (``rejected``) and never returned, so they are never aggregated."""
        replies = grid.send_and_receive(messages, round=rnd, timeout=self.cfg.federation.timeout)
        self.replied = [r.client_id for r in replies if r.ok]  # handlers that ran to the end (even if rejected)
        accepted: list[Accepted] = []
        for r in replies:
            if not r.ok:
                self.log_failure(rnd, r)
                continue
            assert r.msg is not None
            try:
                num = r.msg.metrics.get("num_examples", 1)
                if not (isinstance(num, (int, float)) and num > 0):
                    raise AggregationError(f"num_examples={num!r}; expected a positive number")
                ref = reference(r.client_id) if reference is not None else None
                check_update(
                    r.msg.arrays, ref, max_norm=self.cfg.federation.max_update_norm, name=f"client {r.client_id}"
                )
            except AggregationError as exc:
                self.server.log("rejected", round=rnd, client=r.client_id, reason=str(exc))
                continue
            m = dict(r.msg.metrics)
            self.server.log(
                event,
                round=rnd,
                client=r.client_id,
                bytes_up=r.bytes_up,
                bytes_down=r.bytes_down,
                **m,
            )
            accepted.append(Accepted(r.client_id, dict(r.msg.arrays), int(num), m))
        return accepted

    def log_failure(self, rnd: int, reply: Reply) -> None:
        """Log a client's failed reply (``failure`` event) and count it in the round's ``failures``."""
        self.server.log("failure", round=rnd, client=reply.client_id, reason=str(reply.error)[-500:])
        self.failures.append(reply.client_id)

    def client_eval_messages(self, rnd: int, clients: Sequence[int]) -> list[tuple[int, Msg]]:
        """What :meth:`evaluate_clients` sends: the global adapter with the ``evaluate`` action."""
        global_state = self.global_state()
        limit = self.cfg.federation.client_eval_limit
        return [(c, Msg("evaluate", global_state, {"round": rnd, "limit": limit})) for c in clients]

    def evaluate_clients(self, rnd: int, grid: Grid) -> None:
        """Per-client evaluation of the global adapter on each client's local test split; logs ``client_eval``."""
        msgs = self.client_eval_messages(rnd, grid.client_ids())
        replies = grid.send_and_receive(msgs, round=rnd, timeout=self.cfg.federation.timeout)
        self.replied = [r.client_id for r in replies if r.ok]
        for r in replies:
            if r.ok and r.msg is not None:
                self.server.log("client_eval", round=rnd, client=r.client_id, **r.msg.metrics)
            else:
                self.log_failure(rnd, r)

    def _evaluate(self, rnd: int) -> dict[str, float]:
        metrics = self.global_metrics(rnd)
        self.history.append({"round": rnd, **metrics})
        self.server.log("eval", round=rnd, **metrics)
        return metrics

    # ------------------------------------------------------------------ the loop
    def _phase(self, name: str, rnd: int, grid: Grid, work: Callable[[Grid], dict[str, Any] | None]) -> None:
        """Run ``prepare`` or ``finish``: bytes tagged with the phase, a ``phase`` event, a checkpoint after it."""
        if name in self.phases:
            return  # done before the checkpoint this run resumed from
        t0 = time.perf_counter()
        with grid.ledger.phase(name):
            info = work(grid)
        if info is None:
            return
        ledger = grid.ledger
        record = {
            "seconds": round(time.perf_counter() - t0, 3),
            "bytes_up": ledger.total("up", phase=name),
            "bytes_down": ledger.total("down", phase=name),
        }
        self.phases[name] = record
        self.server.log("phase", round=rnd, name=name, **record, **info)
        self.server.checkpoint(rnd, self.state_dict())

    def run(self, grid: Grid, start_round: int = 1) -> dict[str, Any]:
        """Phase ``prepare``, rounds ``start_round .. rounds`` (fit, evaluate, save the adapter, checkpoint), phase
        ``finish``. Returns the summary's ``initial`` / ``final`` / ``best`` metrics and the phases."""
        fed = self.cfg.federation
        if start_round == 1 and not self.history:
            self._evaluate(0)
        self._phase("prepare", 0, grid, self.prepare)
        for rnd in range(start_round, fed.rounds + 1):
            t0 = time.perf_counter()
            self.failures = []
            before = self.global_state()
            info = self.fit_round(rnd, grid)
            after = self.global_state()
            same_shapes = before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
            if "update_norm" not in info and same_shapes:
                info["update_norm"] = state_norm(state_sub(after, before))
            if rnd % fed.eval_every == 0 or rnd == fed.rounds:
                info["eval"] = self._evaluate(rnd)
            if fed.client_eval_every and (rnd % fed.client_eval_every == 0 or rnd == fed.rounds):
                self.evaluate_clients(rnd, grid)
            info["failures"] = len(self.failures)
            info["bytes_up"] = grid.ledger.per_round("up", phase="round").get(rnd, 0)
            info["bytes_down"] = grid.ledger.per_round("down", phase="round").get(rnd, 0)
            info["seconds"] = round(time.perf_counter() - t0, 3)
            self.server.log("round", round=rnd, **{k: v for k, v in info.items() if k != "eval"})
            if fed.save_adapters_every and (rnd % fed.save_adapters_every == 0 or rnd == fed.rounds):
                self.save_adapters(f"adapters/round_{rnd:04d}")
            self.server.checkpoint(rnd, self.state_dict())
            self.server.on_round(rnd, info)
        self._phase("finish", fed.rounds, grid, self.finish)
        return self.results()

    def save_adapters(self, relative: str) -> None:
        """Every adapter of :meth:`adapters` under ``relative`` (named ones in sub-folders)."""
        for name, state in self.adapters().items():
            self.server.save_adapter(state, f"{relative}/{name}" if name else relative)

    def results(self) -> dict[str, Any]:
        """``initial`` / ``final`` / ``best`` global metrics from the evaluation history."""
        if not self.history:
            raise ConfigError("federation.rounds", self.cfg.federation.rounds, "at least one evaluated round")
        strip = lambda h: {k: v for k, v in h.items() if k != "round"}  # noqa: E731
        out: dict[str, Any] = {"initial": strip(self.history[0]), "final": strip(self.history[-1])}
        prim = primary_metric(out["final"])
        if prim is not None:
            key, better = prim
            best = better(self.history[1:] or self.history, key=lambda h: h[key])
            out["best"] = {key: best[key], "round": best["round"]}
        if self.phases:
            out["phases"] = self.phases
        return out
