"""``flower-superlink`` whose Control and Runtime APIs answer loopback peers only:
``python <this file> [flower-superlink flags]``.

Flower 1.41 serves the Fleet API (SuperNodes), the Control API (``flwr run``, ``flwr supernode register``, ``flwr
ls``, ``flwr stop``) and the Runtime API (ServerApp processes) on one HTTP port. In the open-source distribution the
Control API has no authentication (its OIDC plugin ships only with Flower's enterprise edition), so anyone who can
reach that port can register a public key of their own (and then join as an authenticated SuperNode), submit a run
(which executes the submitted app's code on the SuperLink host), or list and stop runs. A SuperLink must be
reachable by the SuperNodes on other machines, so binding it to loopback is not an option there.

This launcher puts :class:`LoopbackControl` in front of Flower's app through Flower's own middleware hook
(``flwr.superlink.extensions.get_middleware``): a peer whose address is not loopback may reach only the Fleet API
(``/v1/fleet/...``, TLS and SuperNode authentication) and ``/health``; every other path answers 403. Node keys are
registered and runs submitted on the SuperLink's own machine (``fedpeft deploy superlink`` / ``deploy submit`` do
exactly that). Anyone with a shell on that machine can still reach the Control API: it is as trusted as the
operator. If the Flower version lacks the hook, the launcher refuses to start instead of running unprotected.

It is run by path, not with ``-m``: importing the ``fedpeft`` package would load torch into the SuperLink. It
imports only the standard library and flwr (starlette comes with flwr's FastAPI).
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: what a peer on another machine may reach: the SuperNodes' API and the health probe (these paths and below)
PUBLIC_PREFIXES = ("/v1/fleet", "/health")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an ASGI client address) is this machine's loopback (IPv4, IPv6, IPv4-mapped IPv6)."""
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def public_path(path: str) -> bool:
    """Whether a non-loopback peer may request ``path``."""
    return any(path == p or path.startswith(p + "/") for p in PUBLIC_PREFIXES)


class LoopbackControl:
    """ASGI middleware: requests from non-loopback peers reach only :data:`PUBLIC_PREFIXES`; others get 403."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") in ("http", "websocket"):
            client = scope.get("client") or (None, None)
            if not is_loopback(client[0]) and not public_path(str(scope.get("path", ""))):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = json.dumps(
                    {"detail": "fedpeft: only the Fleet API is served to other machines; run flwr on the SuperLink"}
                ).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 403, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def install() -> None:
    """Prepend :class:`LoopbackControl` to the middleware Flower's SuperLink app is built with.

    Raises
    ------
    RuntimeError
        This Flower version has no ``flwr.superlink.extensions.get_middleware`` hook.
    """
    from flwr.superlink import extensions
    from starlette.middleware import Middleware

    original = getattr(extensions, "get_middleware", None)
    if original is None:
        raise RuntimeError(
            "this Flower version has no SuperLink middleware hook: fedpeft cannot keep its Control API off other "
            "machines; bind the SuperLink to 127.0.0.1 or use the Flower version fedpeft pins"
        )

    def get_middleware() -> tuple[Middleware, ...]:
        return (Middleware(LoopbackControl), *original())  # outermost: before Flower's own (auth, logging)

    extensions.get_middleware = get_middleware


def main(argv: list[str] | None = None) -> int:
    try:
        install()
    except RuntimeError as exc:
        print(f"fedpeft: {exc}", file=sys.stderr)
        return 2
    from flwr.superlink.cli.flower_superlink import flower_superlink

    sys.argv = ["flower-superlink", *(sys.argv[1:] if argv is None else argv)]
    flower_superlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
