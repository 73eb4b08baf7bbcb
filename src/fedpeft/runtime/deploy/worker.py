"""The per-node fedpeft worker of a deployment: one long-lived process next to each SuperNode.

Flower 1.41 starts a new ClientApp process for every message; the deployment's ClientApp
(:mod:`fedpeft.runtime.deploy.shim_client`) only forwards ``(message, context)`` here over a Unix socket. This
process imports torch and fedpeft once, builds the model and the node's data at the first message of a run (the
``hello`` query), keeps them across messages, and serves each message with the same ClientApp as the simulation
(:data:`fedpeft.runtime.flower.client_app.app`). It holds only its own partition's data and refuses messages for
another partition.

Run: ``python -m fedpeft.runtime.deploy.worker --socket /abs/node-0.sock --partition-id 0 [--threads 1]``.
The socket appears only once the imports are done, so a supervisor can wait for it as the readiness signal.
``--message-log FILE`` appends one JSON line per message (type, partition, and a SHA-256 digest of each record it
carried), which the isolation tests read to check that a node only ever receives broadcast state or its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from fedpeft.runtime.deploy.shim_client import recv_frame, send_frame

__all__ = ["main", "record_digests"]


def record_digests(content: Any) -> dict[str, str]:
    """SHA-256 of every array record in a RecordDict (keys, dtypes, shapes and bytes), by record name."""
    out: dict[str, str] = {}
    for name, record in content.array_records.items():
        h = hashlib.sha256()
        for key, array in record.items():
            h.update(key.encode())
            h.update(str(array.dtype).encode())
            h.update(str(tuple(array.shape)).encode())
            h.update(array.data)
        out[name] = h.hexdigest()
    return out


def _serve_one(conn: socket.socket, app: Any, message_log: Path | None) -> None:
    from flwr.app import Error, Message

    from fedpeft.runtime.flower.client_app import HELLO

    msg, context = recv_frame(conn)
    if message_log is not None:
        entry = {
            "time": round(time.time(), 3),
            "type": msg.metadata.message_type,
            "group": msg.metadata.group_id,
            "partition": context.node_config.get("partition-id"),
            "records": record_digests(msg.content),
        }
        with message_log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    try:
        reply = app(msg, context)
    except Exception:  # e.g. a message type no handler is registered for: an error reply, as Flower would make
        reply = Message(Error(code=2, reason=traceback.format_exc().rstrip()), reply_to=msg)
    send_frame(conn, (reply, context.state))
    if msg.metadata.message_type == HELLO and not reply.has_error():
        from fedpeft.runtime.flower.client_app import _CACHE

        for worker in _CACHE.values():  # what this node holds: only its own partition's examples
            held = {cid: len(data.train) for cid, data in worker.clients.items()}
            print(f"fedpeft worker: holds the training data of clients {held}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedpeft.runtime.deploy.worker", description=__doc__)
    parser.add_argument("--socket", required=True, type=Path, help="Unix socket path to listen on (absolute)")
    parser.add_argument("--partition-id", required=True, type=int, help="the one partition this node serves")
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1), help="torch threads")
    parser.add_argument("--message-log", type=Path, default=None, help="append one JSON line per message here")
    args = parser.parse_args(argv)

    # SIGTERM (the supervisor's stop) ends the accept loop through KeyboardInterrupt-like unwinding.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from fedpeft.runtime.flower import client_app

    client_app.ROLE.partition, client_app.ROLE.threads = args.partition_id, args.threads
    path: Path = args.socket
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is created 600: only this user can talk to the worker
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(8)
    print(f"fedpeft worker of partition {args.partition_id} listening on {path}", flush=True)
    try:
        while True:
            conn, _ = server.accept()
            with conn:
                try:
                    _serve_one(conn, client_app.app, args.message_log)
                except (ConnectionError, EOFError, OSError) as exc:  # the shim died mid-exchange: serve the next one
                    print(f"fedpeft worker: dropped a connection: {exc}", file=sys.stderr, flush=True)
    finally:
        server.close()
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
