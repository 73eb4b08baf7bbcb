"""Generate a CA, a server cert (SAN localhost/127.0.0.1/::1) and SuperNode EC keys; verify with Flower's loaders."""
import datetime as dt, ipaddress, ssl, sys
from pathlib import Path
from cryptography import x509
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
now = dt.datetime.now(dt.timezone.utc)

def write(p, b, mode=0o600):
    p.write_bytes(b); p.chmod(mode)

# --- CA
ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedpeft-deploy-ca")])
ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
    .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
    .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
    .sign(ca_key, hashes.SHA256()))
# --- server
srv_key = ec.generate_private_key(ec.SECP256R1())
srv_cert = (x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])).issuer_name(ca_name)
    .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
    .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
    .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
        content_commitment=False, data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    .add_extension(x509.SubjectKeyIdentifier.from_public_key(srv_key.public_key()), critical=False)
    .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    .sign(ca_key, hashes.SHA256()))
pem = serialization.Encoding.PEM
write(out/"ca.crt", ca_cert.public_bytes(pem), 0o644)
write(out/"ca.key", ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
write(out/"server.pem", srv_cert.public_bytes(pem), 0o644)
write(out/"server.key", srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
# --- SuperNode auth key (OpenSSH format, NIST P-384 like flwr's generate_key_pairs)
nk = ec.generate_private_key(ec.SECP384R1())
write(out/"node0", nk.private_bytes(pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
write(out/"node0.pub", nk.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n", 0o644)

# ---- verify with Flower's own loaders
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve, public_key_to_bytes, sign_message, verify_signature, bytes_to_public_key
k = load_ssh_private_key((out/"node0").read_bytes(), None); assert isinstance(k, ec.EllipticCurvePrivateKey)
p = load_ssh_public_key((out/"node0.pub").read_bytes()); assert uses_nist_ec_curve(p)
assert public_key_to_bytes(k.public_key()) == public_key_to_bytes(p)
sig = sign_message(k, b"2026-01-01T00:00:00"); assert verify_signature(bytes_to_public_key(public_key_to_bytes(p)), b"2026-01-01T00:00:00", sig)
print("node key ok:", (out/"node0.pub").read_text().split()[0])

# ---- in-memory TLS handshake (server ctx like uvicorn, client ctx like flwr ProtobufClient)
def handshake(hostname):
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(out/"server.pem", out/"server.key")
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.load_verify_locations(cadata=(out/"ca.crt").read_text())
    cctx2 = ssl.create_default_context(cafile=str(out/"ca.crt"))  # httpx verify=<path> path
    if hasattr(ssl, "VERIFY_X509_STRICT"): cctx2.verify_flags |= ssl.VERIFY_X509_STRICT
    res = []
    for c in (cctx, cctx2):
        a, b, c2, d = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        cl = c.wrap_bio(a, b, server_hostname=hostname); sv = sctx.wrap_bio(c2, d, server_side=True)
        for _ in range(20):
            for s in (cl, sv):
                try: s.do_handshake()
                except ssl.SSLWantReadError: pass
            c2.write(b.read()); a.write(d.read())
            if cl.version() and sv.version(): break
        res.append(cl.version())
    return res
for h in ("127.0.0.1", "localhost", "::1"):
    print(h, handshake(h))
try:
    print("10.0.0.1", handshake("10.0.0.1"))
except ssl.SSLCertVerificationError as e:
    print("10.0.0.1 rejected as expected:", e.verify_message)
