"""The per-node fedpeft worker of a deployment: one long-lived process next to each SuperNode.

Flower 1.41 starts a new ClientApp process for every message, which would import torch and fedpeft and rebuild the
model each time. This process imports them once, builds the model and the node's data at the first message of a run
(the ``hello`` query), keeps them across messages, and serves each message with the same ClientApp as the simulation
(:data:`fedpeft.runtime.flower.client_app.app`). It holds only its own partition's data and refuses messages for
another partition. Two ways to reach it:

- ``--executor HOST:PORT`` (the default of ``fedpeft deploy``): the SuperNode runs with ``--isolation process`` and
  this worker is its task executor: it acquires each ClientApp task from the SuperNode's Runtime API and runs it in
  process, so no process is started per message.
- ``--socket PATH``: a stock SuperNode starts ``flwr-clientapp`` per message as usual, and the deployment's ClientApp
  (:mod:`fedpeft.runtime.deploy.shim_client`, which imports neither torch nor fedpeft) forwards ``(message,
  context)`` here over a Unix socket (mode 600). The socket appears once the imports are done.

Run: ``python -m fedpeft.runtime.deploy.worker --executor 127.0.0.1:9094 --partition-id 0 [--threads 1]``.
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
    """SHA-256 of every array and config record in a RecordDict (keys, dtypes, shapes and bytes of arrays; keys
    and values of config entries), by record name."""
    out: dict[str, str] = {}
    for name, record in content.array_records.items():
        h = hashlib.sha256()
        for key, array in record.items():
            h.update(key.encode())
            h.update(str(array.dtype).encode())
            h.update(str(tuple(array.shape)).encode())
            h.update(array.data)
        out[name] = h.hexdigest()
    for name, record in content.config_records.items():
        h = hashlib.sha256()
        for key, value in sorted(record.items()):
            h.update(key.encode())
            h.update(value if isinstance(value, bytes) else repr(value).encode())
        out[name] = h.hexdigest()
    return out


def handle_message(app: Any, msg: Any, context: Any, message_log: Path | None) -> Any:
    """Serve one Flower message with ``app`` (logging it first); a raising handler becomes an error reply."""
    from flwr.app import Error, Message

    from fedpeft.runtime.flower.client_app import HELLO

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
    if msg.metadata.message_type == HELLO and not reply.has_error():
        from fedpeft.runtime.flower.client_app import _CACHE

        for worker in _CACHE.values():  # what this node holds: only its own partition's examples
            held = {cid: len(data.train) for cid, data in worker.clients.items()}
            print(f"fedpeft worker: holds the training data of clients {held}", flush=True)
    return reply


def _serve_one(conn: socket.socket, app: Any, message_log: Path | None) -> None:
    """One forwarded exchange on the socket (stock Flower node): ``(message, context)`` in, ``(reply, state)`` out."""
    msg, context = recv_frame(conn)
    reply = handle_message(app, msg, context, message_log)
    send_frame(conn, (reply, context.state))


def _serve_socket(path: Path, app: Any, message_log: Path | None) -> None:
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is created 600: only this user can talk to the worker
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(8)
    print(f"fedpeft worker listening on {path}", flush=True)
    try:
        while True:
            conn, _ = server.accept()
            with conn:
                try:
                    _serve_one(conn, app, message_log)
                except (ConnectionError, EOFError, OSError) as exc:  # the shim died mid-exchange: serve the next one
                    print(f"fedpeft worker: dropped a connection: {exc}", file=sys.stderr, flush=True)
    finally:
        server.close()
        path.unlink(missing_ok=True)


def _wait_port(address: str, timeout: float = 300.0) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _serve_executor(address: str, app: Any, message_log: Path | None, poll: float) -> None:
    """Be the SuperNode's task executor (``flower-supernode --isolation process``): acquire each ClientApp task from
    the SuperNode's Runtime API and run it in this process, instead of Flower starting a ``flwr-clientapp`` process
    per message. Uses the same Flower calls as ``flwr-clientapp`` (pull the task input, push the reply and the
    task output, heartbeat while running)."""
    from flwr.common.constant import SubStatus
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    def client(*interceptors: Any) -> Any:
        return RuntimeHttpClient.from_server_address(
            server_address=address, insecure=True, root_certificates=None, interceptors=list(interceptors),
            retry_invoker=make_simple_http_retry_invoker(),
        )  # fmt: skip

    import flwr.supercore.inflatable.inflatable_utils as inflatable

    from fedpeft.runtime.deploy.supernode import fast_object_pulls

    # The task is announced before its payload has reached the SuperNode; Flower's download would back off 1-7 s.
    fast_object_pulls(inflatable)
    _wait_port(address)
    print(f"fedpeft worker executing the ClientApp tasks of the SuperNode at {address}", flush=True)
    acquirer = client(RuntimeVersionHttpInterceptor(component_name="SuperExec"))
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value], agentapp_fab_hashes=[])
    while True:
        res = acquirer.AcquireTask(request)
        if not (res.HasField("task") and res.token):
            time.sleep(poll)
            continue
        task = client(RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(res.token))  # fmt: skip
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(task))
        heartbeat.start()
        context, status, details = None, SubStatus.FAILED, "the fedpeft worker failed to run the task"
        try:
            t0 = time.time()
            message, context, _, _ = pull_task_input(task)
            t1 = time.time()
            reply = handle_message(app, message, context, message_log)
            t2 = time.time()
            push_message(task, reply, context)
            status, details = SubStatus.COMPLETED, ""
            # where a message's time goes on this node (docs/results.md, deployment overhead)
            print(f"fedpeft worker: {message.metadata.message_type} created->acquired "
                  f"{t0 - message.metadata.created_at:.3f}s pull {t1 - t0:.3f}s handle {t2 - t1:.3f}s "
                  f"push {time.time() - t2:.3f}s", flush=True)  # fmt: skip
        except Exception:
            print(f"fedpeft worker: task failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        finally:
            # The heartbeat stops before the task output is pushed: pushing it ends the task and revokes its token,
            # and a heartbeat sent after that gets a 401, on which Flower's HTTP client signals its own process.
            heartbeat.stop()
            push_task_output(task, context, status, details)
            task.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedpeft.runtime.deploy.worker", description=__doc__)
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--socket", type=Path, help="serve forwarded messages on this Unix socket (absolute path)")
    how.add_argument("--executor", metavar="HOST:PORT", help="run the tasks of the SuperNode whose Runtime API is here")
    parser.add_argument("--partition-id", required=True, type=int, help="the one partition this node serves")
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1), help="torch threads")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between task polls (--executor)")
    parser.add_argument("--message-log", type=Path, default=None, help="append one JSON line per message here")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the supervisor's stop unwinds the serve loop
    # Flower's HTTP client sends SIGINT to its own process on any 401 (meant to end a task process whose token
    # expired); in this long-lived worker that must fail the one request, not the node. Stops use SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from fedpeft.runtime.flower import client_app

    client_app.ROLE.partition, client_app.ROLE.threads = args.partition_id, args.threads
    if args.socket is not None:
        _serve_socket(args.socket, client_app.app, args.message_log)
    else:
        _serve_executor(args.executor, client_app.app, args.message_log, args.poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
