"""The SuperLink's Control and Runtime APIs answer loopback peers only (Flower 1.41 serves them on the Fleet API's
port without authentication): the middleware on tiny ASGI calls, the operator's exposure statement, the config
refusing a remote ``deploy.superlink``, and end to end an intruder on another address refused while registering a
key and submitting a run, the operator on loopback served, and a SuperNode on that address still served."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from pathlib import Path

import pytest

from fedpeft.config import DeployConfig
from fedpeft.errors import ConfigError
from fedpeft.runtime.deploy.superlink import LoopbackControl, is_loopback, public_path


def _call(client: str | None, path: str) -> int:
    """Status a request from ``client`` for ``path`` gets through the middleware (200 = it reached the app)."""
    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request"}

    scope = {"type": "http", "path": path, "client": None if client is None else (client, 5555)}
    asyncio.run(LoopbackControl(app)(scope, receive, send))
    return int(sent[0]["status"])


@pytest.mark.parametrize(
    ("client", "path", "status"),
    [
        ("127.0.0.1", "/v1/control/start-run", 200),
        ("::1", "/v1/control/list-runs", 200),
        ("::ffff:127.0.0.1", "/v1/control/stop-run", 200),
        ("127.5.6.7", "/v1/runtime/pull-messages", 200),
        ("192.0.2.9", "/v1/control/start-run", 403),
        ("192.0.2.9", "/v1/control/register-supernode", 403),
        ("10.0.0.3", "/v1/runtime/pull-messages", 403),
        ("fd00::2", "/docs", 403),
        ("192.0.2.9", "/v1/fleetX", 403),
        (None, "/v1/control/start-run", 403),  # no peer address (e.g. a unix socket): not trusted
        ("localhost", "/v1/control/start-run", 403),  # ASGI gives addresses, never names
        ("192.0.2.9", "/v1/fleet/pull-messages", 200),
        ("192.0.2.9", "/health", 200),
        ("192.0.2.9", "/healthz", 403),
    ],
)
def test_only_the_fleet_api_is_public(client, path, status):
    assert _call(client, path) == status


def test_loopback_and_public_paths():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.0.2.2", "fd00::2", "", None, "not-an-ip"))
    assert public_path("/v1/fleet/create-node") and public_path("/health")
    assert not any(public_path(p) for p in ("/v1/control/start-run", "/v1/fleetX", "/healthz", "/", "/docs"))


def test_exposure_statement():
    from fedpeft.runtime.deploy.commands import exposure

    assert "only" in exposure("127.0.0.1", False) and "nothing is reachable" in exposure("127.0.0.1", False)
    public = exposure("0.0.0.0", False)
    assert "Fleet API only" in public and "answer only on this machine" in public
    assert "WITHOUT TLS" in exposure("0.0.0.0", True)


def test_a_run_is_submitted_on_the_superlinks_machine_only():
    assert DeployConfig(superlink="127.0.0.1:8000", insecure=True).superlink == "127.0.0.1:8000"
    assert DeployConfig(superlink="localhost:8000", insecure=True).superlink == "localhost:8000"
    for remote in ("192.0.2.2:8000", "superlink.example.org:8000", "[fd00::2]:8000"):
        with pytest.raises(ConfigError, match="deploy.superlink"):
            DeployConfig(superlink=remote, insecure=True)


def _public_address() -> str | None:
    """This machine's address on its default route (not loopback), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.7", 9))  # TEST-NET-2; no packet is sent: only the route is looked up
            host = str(s.getsockname()[0])
        except OSError:
            return None
    return None if is_loopback(host) or host == "0.0.0.0" else host


@pytest.mark.slow
def test_an_intruder_from_another_address_can_neither_register_a_key_nor_submit_a_run(tmp_path: Path):
    pytest.importorskip("flwr", reason="needs fedpeft[flower]")
    from fedpeft.runtime.deploy import certs as certs_mod
    from fedpeft.runtime.deploy.cluster import (
        DeploymentError,
        _Proc,
        flower_env,
        flwr_cli,
        free_port,
        register_node,
        superlink_command,
        wait_healthy,
        write_app,
        write_flwr_home,
    )

    public = _public_address()
    if public is None:
        pytest.skip("this machine has no non-loopback address to play the other machine from")
    certs = certs_mod.generate(tmp_path / "certs", nodes=1, hosts=[public])
    port = free_port()
    link = _Proc("superlink", superlink_command(port, certs, "0.0.0.0"), tmp_path / "superlink.log")
    operator, intruder = flower_env(tmp_path / "op"), flower_env(tmp_path / "in")
    write_flwr_home(tmp_path / "op", f"127.0.0.1:{port}", certs.ca)
    write_flwr_home(tmp_path / "in", f"{public}:{port}", certs.ca)  # the same TLS trust: only the address differs
    link.start(operator)
    try:
        assert link.popen is not None
        wait_healthy(port, certs.ca, 120.0, link.popen, link.log)
        key, pub = tmp_path / "intruder", tmp_path / "intruder.pub"
        certs_mod.node_key_pair(key, pub)
        with pytest.raises(DeploymentError, match="403|Forbidden|only the Fleet API"):
            flwr_cli(["supernode", "register", str(pub), "fedpeft"], intruder)
        with pytest.raises(DeploymentError, match="403|Forbidden|only the Fleet API"):
            flwr_cli(["run", str(write_app(tmp_path / "app")), "fedpeft"], intruder)
        with pytest.raises(DeploymentError, match="403|Forbidden|only the Fleet API"):
            flwr_cli(["ls", "fedpeft"], intruder)
        # the operator, on the SuperLink's machine, is served: the legitimate key registers, the intruder's never did
        register_node(certs.node_pub(0), 0, operator)
        nodes = flwr_cli(["supernode", "list", "fedpeft"], operator)["nodes"]
        assert [n.get("name") for n in nodes] == ["partition-0"] or len(nodes) == 1
        # and the Fleet API stays public: the health probe over the public address answers
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(certs.ca))
        with urllib.request.urlopen(f"https://{public}:{port}/health", timeout=10, context=ctx) as r:
            assert r.status == 200
    finally:
        link.signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            assert link.popen is not None
            link.popen.wait(timeout=15)
        link.signal(signal.SIGKILL)
