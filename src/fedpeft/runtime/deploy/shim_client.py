"""The ClientApp that Flower starts for every message in deployment: it forwards the message to the node's worker.

This file is copied into the deployment's Flower app folder (as ``fedpeft_client_shim.py``) and loaded from there by
``flwr-clientapp``; it must import nothing but the standard library and flwr. Flower 1.41 starts a fresh process for
each message, so importing torch and fedpeft and building the model here would cost seconds per message. Instead the
heavy work runs in :mod:`fedpeft.runtime.deploy.worker`, a long-lived process per SuperNode that keeps the model and
the node's data loaded; this shim sends it ``(message, context)`` over the Unix socket named by the node config key
``worker-socket`` and returns the worker's reply, copying back the client state the worker changed.

Frames on the socket: an 8-byte big-endian length, then a pickle. The socket file is created with mode 600 inside a
private folder, so only the node's own user can reach the worker.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

SOCKET_KEY = "worker-socket"
_LEN = struct.Struct(">Q")


def send_frame(sock: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LEN.pack(len(data)) + data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError(f"the peer closed the connection with {left} of {n} bytes missing")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> Any:
    (n,) = _LEN.unpack(recv_exact(sock, _LEN.size))
    return pickle.loads(recv_exact(sock, n))


class ForwardingClientApp(ClientApp):
    """A ClientApp whose every message type is served by the node's fedpeft worker."""

    def __call__(self, message: Message, context: Context) -> Message:
        path = context.node_config.get(SOCKET_KEY)
        if not path:
            raise RuntimeError(f"the SuperNode's node config has no {SOCKET_KEY!r}; start nodes with `fedpeft deploy`")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(str(path))
            except OSError as exc:
                raise RuntimeError(f"the fedpeft worker at {path} is not reachable: {exc}") from exc
            send_frame(sock, (message, context))
            reply, state = recv_frame(sock)
        context.state = state
        return reply


app = ForwardingClientApp()
