"""``DeployGrid``: :class:`~fedpeft.runtime.flower.grid.FlowerGrid` for a deployment, where nodes die and come back.

Before each exchange the online nodes are listed. A client whose node is offline fails at once (logged like any
failure) instead of waiting for the round's timeout. A node that is new, or was re-activated since it was last
seen (a restarted SuperNode), is greeted again (its partition id learnt, its worker warmed up) and given back its
client state from the last checkpoint. A checkpoint taken while a node is down keeps that node's last saved state,
which is also what it gets back when it rejoins. Simulation nodes never leave, so the base class does none of this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedpeft.runtime.flower.grid import FlowerGrid

__all__ = ["DeployGrid"]


class DeployGrid(FlowerGrid):
    """A :class:`FlowerGrid` whose nodes may leave and rejoin (same parameters)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before the base constructor: it connects, which calls _on_connect.
        self._activated: dict[int, str] = {}  # node id -> last activation time, to notice a restarted node
        self._online: set[int] = set()
        super().__init__(*args, **kwargs)

    def _activations(self) -> dict[int, str]:
        return {n.node_id: str(n.last_activated_at) for n in self.grid.get_nodes()}

    def _on_connect(self, node_ids: Sequence[int]) -> None:
        self._online = set(node_ids)
        self._activated = self._activations()

    def _before_exchange(self) -> None:
        """Learn which nodes are online, greet the new or restarted ones and restore their state."""
        infos = self._activations()
        self._online = set(infos)
        fresh = [node for node, at in infos.items() if self._activated.get(node) != at]
        if not fresh:
            return
        mapping, _ = self._hello(fresh, self.control_timeout)  # a node that fails now is greeted again next time
        for cid, node in mapping.items():
            if not 0 <= cid < self.num_clients:
                continue
            self.nodes[cid] = node
            saved = self._saved_states.get(cid)
            if saved:  # the node lost its context.state with its process: give back the last checkpointed one
                try:
                    self._set_states({cid: saved})
                except RuntimeError:  # not ready after all: treat it as offline and greet it again next time
                    self._online.discard(node)
                    continue
            self._activated[node] = infos[node]

    def _offline(self, cid: int) -> str | None:
        node = self.nodes[cid]
        return None if node in self._online else f"client {cid}: its node {node} is offline"

    def _state_when_unreachable(self, cid: int, why: str) -> dict[str, Any]:
        # The node is gone (it failed this round, or died since): its state is what it was at the last checkpoint.
        return dict(self._saved_states.get(cid, {}))
