"""Certificates and keys for a Flower deployment: a CA, the SuperLink's TLS certificate, one key pair per SuperNode.

Layout written by :func:`generate` into one folder::

    ca.pem                  the CA certificate (SuperNodes, the flwr CLI and the ServerApp verify the SuperLink with it)
    ca.key                  the CA's private key (kept so that more nodes or a new server cert can be signed later)
    server.pem, server.key  the SuperLink's certificate (SANs: every --host given, plus localhost/127.0.0.1/::1)
    node-<i>, node-<i>.pub  SuperNode i's authentication key: EC P-384, OpenSSH private / public format, as
                            ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` expect

Private keys are written with mode 600. Every file is written atomically, and an existing folder is never
overwritten partially: a CA that exists is reused, so adding nodes later (``--nodes`` larger) keeps earlier keys.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from fedpeft.errors import ConfigError
from fedpeft.fileio import atomic_write_bytes

__all__ = ["CertPaths", "generate", "node_key_pair"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CertPaths:
    """Where the TLS and node-auth files of one deployment are."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def node_key(self, node: int) -> Path:
        return self.folder / f"node-{node}"

    def node_pub(self, node: int) -> Path:
        return self.folder / f"node-{node}.pub"

    def check(self, nodes: int, server: bool = True) -> None:
        """Raise ConfigError naming the first missing file: the CA, the server's certificate and key (``server``)
        and ``nodes`` SuperNode key pairs."""
        needed = [self.ca, *([self.server_cert, self.server_key] if server else [])]
        needed += [p for i in range(nodes) for p in (self.node_key(i), self.node_pub(i))]
        for path in needed:
            if not path.is_file():
                made_by = f"a folder made by `fedpeft deploy certs` with {path.name}"
                raise ConfigError("deploy.certs", str(self.folder), made_by)


def _write_private(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, mode=0o600)  # 0600 from the first byte: never world-readable, not even briefly


def _san(hosts: list[str]) -> list[object]:
    from cryptography import x509

    names: list[object] = []
    for host in dict.fromkeys(hosts):  # de-duplicated, order kept
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def generate(folder: Path, nodes: int, hosts: list[str] | None = None, days: int = 365) -> CertPaths:
    """Create (or complete) the deployment's CA, SuperLink certificate and ``nodes`` SuperNode key pairs.

    Parameters
    ----------
    folder : Path
        Output folder (created). An existing CA there is reused; existing node keys are kept.
    nodes : int
        Number of SuperNode key pairs ``node-0 .. node-<nodes-1>``.
    hosts : list of str, optional
        Extra names or IP addresses the SuperLink is reached at (added to the certificate's SANs). A client checks
        the address it dials against these, so a SuperLink on another machine needs its name or IP here.
    days : int
        Validity of the certificates.

    Raises
    ------
    ConfigError
        ``nodes`` < 1 or ``days`` < 1.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ConfigError("nodes", nodes, "an integer >= 1")
    if days < 1:
        raise ConfigError("days", days, "an integer >= 1")
    paths = CertPaths(Path(folder))
    paths.folder.mkdir(parents=True, exist_ok=True)
    pem, noenc = serialization.Encoding.PEM, serialization.NoEncryption()
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    usage = dict(
        content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip

    if paths.ca.is_file() and paths.ca_key.is_file():
        ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
        loaded = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConfigError("certs", str(paths.ca_key), "an EC private key written by `fedpeft deploy certs`")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedpeft deployment CA")])
        ca = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        _write_private(paths.ca_key, ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, noenc))
        atomic_write_bytes(paths.ca, ca.public_bytes(pem))

    # The server certificate is re-issued each time (cheap), so that new --host names take effect.
    server_key = ec.generate_private_key(ec.SECP256R1())
    all_hosts = list(hosts or []) + list(DEFAULT_HOSTS)
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, all_hosts[0])]))
        .issuer_name(ca.subject).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(_san(all_hosts)), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    _write_private(paths.server_key, server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, noenc))
    atomic_write_bytes(paths.server_cert, server.public_bytes(pem))

    for i in range(nodes):
        if not (paths.node_key(i).is_file() and paths.node_pub(i).is_file()):
            node_key_pair(paths.node_key(i), paths.node_pub(i))
    return paths


def node_key_pair(private: Path, public: Path) -> None:
    """Write a new SuperNode authentication key: EC P-384 (the curve Flower's own generator uses), the private key
    in OpenSSH format (mode 600) and the public key in OpenSSH format, as Flower's node authentication expects."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    fmt, noenc = serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, fmt, noenc))
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    atomic_write_bytes(public, pub + b"\n")
