"""``FlowerGrid``: the fedpeft :class:`~fedpeft.algorithms.base.Grid` protocol over a Flower ``Grid``.

It does on the server what :class:`~fedpeft.runtime.local.LocalGrid` does, with the delivery replaced by Flower
messages: each distinct arrays object is encoded once with the downlink compressor, every message is counted in
the byte ledger (down = encoded payload bytes, up = the reply's encoded payload bytes), replies come back as
:class:`~fedpeft.algorithms.base.Reply` sorted by client id. The clients run
:mod:`fedpeft.runtime.flower.client_app`. Deployment, where nodes die and come back, subclasses it
(:class:`fedpeft.runtime.deploy.grid.DeployGrid`) through four hooks: ``_on_connect``, ``_before_exchange``,
``_offline`` and ``_state_when_unreachable``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid as FlowerGridAPI

from fedpeft.algorithms import get_algorithm
from fedpeft.algorithms.base import Msg, Reply
from fedpeft.comm.codec import WireState
from fedpeft.comm.ledger import ByteLedger
from fedpeft.comm.transport import Channel, Packet
from fedpeft.config import RunConfig
from fedpeft.runtime.flower.client_app import (
    CONFIG_KEY,
    DIGEST_KEY,
    HELLO,
    PARTITION_KEY,
    SECONDS_KEY,
    STATE_GET,
    STATE_KEYS,
    STATE_SCALARS,
    STATE_SET,
    STATE_TENSORS,
    config_digest,
)
from fedpeft.runtime.flower.records import (
    HEADER,
    packet_to_records,
    read_header,
    records_to_packet,
    records_to_state,
    state_to_records,
    wire_to_records,
)
from fedpeft.runtime.transport import unpack

__all__ = ["FlowerGrid"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _error_text(reply: Message) -> str:
    code, reason = reply.error.code, _ANSI.sub("", reply.error.reason or "").rstrip()
    # code 2 = the client handler raised: fedpeft's handler puts "<traceback> ... <Type>: <message>" in the reason
    return reason if code == 2 else f"flower error {code}: {reason}"


class FlowerGrid:
    """Delivers fedpeft messages to Flower nodes; fedpeft client id = the node's ``partition-id``.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The grid given to the ServerApp's ``main``.
    cfg : RunConfig
        The run's config (number of clients, compression).
    config_text : str
        ``cfg`` as TOML; sent to each node once, with the hello (later messages carry its digest), so that the
        workers build the same model and data.
    connect_timeout : float
        Seconds to wait for the nodes to register and for every node to answer the hello query (which also
        builds each worker's model and data).
    control_timeout : float
        Seconds to wait for the client-state queries of checkpoints and resume.
    poll_interval : float
        Seconds between two pulls for replies (Flower's own ``send_and_receive`` sleeps 3 s between pulls).

    Raises
    ------
    RuntimeError
        Fewer nodes than ``cfg.federation.num_clients`` registered in time, a node failed its hello, or the
        partition ids are not ``0 .. num_clients-1``.
    """

    def __init__(
        self,
        grid: FlowerGridAPI,
        cfg: RunConfig,
        config_text: str,
        *,
        connect_timeout: float = 600.0,
        control_timeout: float = 600.0,
        poll_interval: float = 0.1,
    ) -> None:
        self.grid, self.cfg, self.config_text = grid, cfg, config_text
        self.config_digest = config_digest(config_text)
        self.control_timeout, self.poll_interval = control_timeout, poll_interval
        self._saved_states: dict[int, dict[str, Any]] = {}  # client states of the last checkpoint
        #: monotonic deadline of the exchange in progress (None: no timeout); read by bounded object pulls
        self.deadline: float | None = None
        self.ledger = ByteLedger()
        self.num_clients = cfg.federation.num_clients
        self.client_app = get_algorithm(cfg.federation.algorithm).client_app
        # clients whose node may hold client state; the others are known empty, so checkpoints need not ask them
        self._stateful: set[int] = set()
        self.nodes: dict[int, int] = self._connect(connect_timeout)

    # ------------------------------------------------------------------ set-up
    def _connect(self, timeout: float) -> dict[int, int]:
        """Wait for the nodes, then learn each node's partition id (only visible on the client side)."""
        deadline = time.monotonic() + timeout
        # The ServerApp thread starts before the engine registers the nodes: get_node_ids() is empty at first.
        while len(node_ids := sorted(self.grid.get_node_ids())) < self.num_clients:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(node_ids)} of {self.num_clients} Flower nodes registered in {timeout}s")
            time.sleep(0.05)
        self._on_connect(node_ids)
        mapping, failed = self._hello(node_ids, max(1.0, deadline - time.monotonic()))
        if failed:
            node, why = next(iter(failed.items()))
            raise RuntimeError(f"Flower node {node} failed to start: {why}")
        if sorted(mapping) != list(range(self.num_clients)):
            raise RuntimeError(f"Flower partition ids {sorted(mapping)} are not 0..{self.num_clients - 1}")
        return mapping

    def _hello(self, node_ids: Sequence[int], timeout: float) -> tuple[dict[int, int], dict[int, str]]:
        """Greet nodes: ({partition id: node id} of those that answered, {node id: why} of those that did not)."""
        header = RecordDict({HEADER: ConfigRecord({CONFIG_KEY: self.config_text})})
        replies = self._exchange([self._message(node, HELLO, header, 0, timeout) for node in node_ids], timeout)
        mapping: dict[int, int] = {}
        failed: dict[int, str] = {}
        for node in node_ids:
            reply = replies.get(node)
            if reply is None:
                failed[node] = f"no answer to the hello query within {timeout:.0f}s"
            elif reply.has_error():
                failed[node] = _error_text(reply)
            else:
                mapping[int(read_header(reply.content, PARTITION_KEY))] = node
        return mapping, failed

    def _message(self, node: int, action: str, content: RecordDict, rnd: int, ttl: float | None = None) -> Message:
        # A ttl makes an undeliverable message (its node died) end with an error instead of waiting in the SuperLink.
        life = None if ttl is None else max(1.0, float(ttl))
        return Message(content, dst_node_id=node, message_type=action, group_id=str(rnd), ttl=life)

    def _exchange(self, messages: list[Message], timeout: float | None) -> dict[int, Message]:
        """Send messages (at most one per node) and return the replies that came in time, by destination node id.

        Pushes once, then pulls every ``poll_interval`` seconds until every message has a reply (or an error reply
        from Flower, e.g. the node went offline) or ``timeout`` has passed.
        """
        if not messages:
            return {}
        nodes = [m.metadata.dst_node_id for m in messages]
        ids = list(self.grid.push_messages(messages))
        pending = {mid: node for mid, node in zip(ids, nodes, strict=True) if mid}
        deadline = self.deadline = None if timeout is None else time.monotonic() + timeout
        got: dict[int, Message] = {}
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is not None:
                    got[node] = reply
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll_interval)
        return got

    # ------------------------------------------------------------------ hooks (DeployGrid overrides them)
    def _on_connect(self, node_ids: Sequence[int]) -> None:
        """Called once the nodes have registered, before the hello. Simulation nodes never leave: nothing to do."""

    def _before_exchange(self) -> None:
        """Called before each exchange of :meth:`send_and_receive` and each checkpoint's state queries."""

    def _offline(self, cid: int) -> str | None:
        """Why client ``cid`` cannot be reached now (it fails at once with that text), or None."""
        return None

    def _state_when_unreachable(self, cid: int, why: str) -> dict[str, Any]:
        """Client ``cid``'s state for a checkpoint when its node did not answer; here an error."""
        raise RuntimeError(f"could not read the state of client {cid} for the checkpoint: {why}")

    def _check_ids(self, ids: Iterable[int]) -> None:
        for cid in ids:
            if cid not in self.nodes:
                raise ValueError(f"client id {cid} does not exist; clients are 0..{self.num_clients - 1}")

    # ------------------------------------------------------------------ the Grid protocol
    def client_ids(self) -> list[int]:
        """Ids of the addressable clients, ``0 .. num_clients-1``."""
        return list(range(self.num_clients))

    def send_and_receive(
        self, messages: Sequence[tuple[int, Msg]], *, round: int, timeout: float | None = None
    ) -> list[Reply]:
        """Deliver ``(client_id, msg)`` pairs and wait for the replies (see the Grid protocol).

        Several messages to one client go out in successive waves, in the given order: Flower could otherwise run
        them at the same time on two workers, and the later reply would overwrite the other's client state.
        ``timeout`` bounds the whole call; a client whose reply is missing then gets a Reply with error
        ``"timeout"``. Bytes go to :attr:`ledger` exactly as in the local runtime.
        """
        ordered = sorted(messages, key=lambda m: m[0])
        self._check_ids(cid for cid, _ in ordered)
        down = Channel(self.cfg.comm, "down")
        encoded: dict[tuple[int, str], tuple[WireState, ConfigRecord]] = {}  # one encoding + record per arrays
        waves: list[list[tuple[int, int]]] = []  # (position in ordered, client id)
        seen: dict[int, int] = {}

        def key(msg: Msg) -> tuple[int, str]:
            return id(msg.arrays), repr(sorted(msg.kinds.items()))

        for pos, (cid, msg) in enumerate(ordered):
            if key(msg) not in encoded:
                wire = down.encode(dict(msg.arrays), msg.kinds)
                encoded[key(msg)] = (wire, wire_to_records(wire))
            wave = seen[cid] = seen.get(cid, -1) + 1
            if wave == len(waves):
                waves.append([])
            waves[wave].append((pos, cid))

        deadline = None if timeout is None else time.monotonic() + timeout
        results: dict[int, Message | str | None] = {}
        self._before_exchange()
        for wave_items in waves:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                results.update({pos: None for pos, _ in wave_items})
                continue
            out: list[Message] = []
            for pos, cid in wave_items:
                msg = ordered[pos][1]
                if msg.action not in self.client_app.actions:
                    # Fail like the local runtime (same text), and without a Flower message that no worker handles
                    # (Flower would log its ~50-line traceback twice).
                    results[pos] = (
                        f"ValueError: client app {self.client_app.name!r} has no handler for {msg.action!r}; "
                        f"it handles {self.client_app.actions}"
                    )
                    continue
                offline = self._offline(cid)
                if offline is not None:
                    results[pos] = offline
                    continue
                wire, record = encoded[key(msg)]
                content = packet_to_records(
                    Packet(msg.action, wire, dict(msg.config)), extra={DIGEST_KEY: self.config_digest}, payload=record
                )
                out.append(self._message(self.nodes[cid], msg.action, content, round, left))
            got = self._exchange(out, left)
            for pos, cid in wave_items:
                if pos not in results:
                    results[pos] = got.get(self.nodes[cid])

        replies: list[Reply] = []
        for pos, (cid, msg) in enumerate(ordered):
            wire = encoded[key(msg)][0]
            self.ledger.record_kinds(round, cid, "down", wire.nbytes_by_kind())
            replies.append(self._to_reply(round, cid, results[pos], wire.nbytes))
        return replies

    def _to_reply(self, rnd: int, cid: int, reply: Message | str | None, nbytes_down: int) -> Reply:
        if isinstance(reply, str):
            return Reply(cid, None, reply, 0, nbytes_down)
        if reply is None:
            # The late reply is never delivered, but the client still finishes and may write its state.
            self._stateful.add(cid)
            return Reply(cid, None, "timeout", 0, nbytes_down)
        if reply.has_error():
            return Reply(cid, None, _error_text(reply), 0, nbytes_down)
        try:
            packet = records_to_packet(reply.content)
            seconds = float(read_header(reply.content, SECONDS_KEY))
            stateful = int(read_header(reply.content, STATE_KEYS)) > 0
            msg = unpack(packet, Channel(self.cfg.comm, "up"))  # sizes checked before anything is allocated
        except (KeyError, ValueError, TypeError) as exc:
            return Reply(cid, None, f"malformed reply: {type(exc).__name__}: {exc}", 0, nbytes_down)
        (self._stateful.add if stateful else self._stateful.discard)(cid)
        self.ledger.record_kinds(rnd, cid, "up", packet.wire.nbytes_by_kind())
        return Reply(cid, msg, None, packet.nbytes, nbytes_down, seconds, dict(packet.cost))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Client states and ledger, in the local runtime's checkpoint layout (so either runtime can resume).

        Client states live on the nodes; only the clients whose state may be non-empty are asked for it.

        Raises
        ------
        RuntimeError
            A node failed to return its state.
        """
        states: dict[int, dict[str, Any]] = {cid: {} for cid in self.client_ids()}
        self._before_exchange()
        asked = []
        for cid in sorted(self._stateful):
            offline = self._offline(cid)
            if offline is None:
                asked.append(cid)
            else:
                states[cid] = self._state_when_unreachable(cid, offline)
        empty = RecordDict()
        ttl = self.control_timeout
        got = self._exchange([self._message(self.nodes[c], STATE_GET, empty, 0, ttl) for c in asked], ttl)
        for cid in asked:
            reply = got.get(self.nodes[cid])
            if reply is None or reply.has_error():
                states[cid] = self._state_when_unreachable(cid, "no reply" if reply is None else _error_text(reply))
                continue
            states[cid] = records_to_state(
                reply.content.array_records[STATE_TENSORS], reply.content.config_records[STATE_SCALARS]
            )
        self._saved_states = {cid: dict(s) for cid, s in states.items() if s}
        return {"states": states, "ledger": self.ledger.to_records()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the ledger and push each client's saved state to its node (inverse of :meth:`state_dict`).

        Raises
        ------
        RuntimeError
            A node failed to take its state.
        """
        self.ledger.load_records(state["ledger"])
        saved = {int(k): dict(v) for k, v in state["states"].items()}
        self._check_ids(saved)
        todo = {cid: s for cid, s in saved.items() if s}
        self._saved_states = todo
        self._set_states(todo)
        self._stateful = set(todo)

    def _set_states(self, states: dict[int, dict[str, Any]]) -> None:
        """Replace the client state on each named client's node (STATE_SET); raise if a node does not take it."""
        out = []
        for cid, client_state in sorted(states.items()):
            tensors, scalars = state_to_records(client_state)
            content = RecordDict({STATE_TENSORS: tensors, STATE_SCALARS: scalars})
            out.append(self._message(self.nodes[cid], STATE_SET, content, 0, self.control_timeout))
        got = self._exchange(out, self.control_timeout)
        for cid in states:
            reply = got.get(self.nodes[cid])
            if reply is None or reply.has_error():
                why = "no reply" if reply is None else _error_text(reply)
                raise RuntimeError(f"could not restore the state of client {cid}: {why}")
