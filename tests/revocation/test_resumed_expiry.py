"""The leaf's validity is re-checked on resumed sessions (revocation issue,
"What to build"): OpenSSL verifies the chain, expiry included, only on a
full handshake, so a ticket from while the certificate was valid would
otherwise outlive the certificate. A client certificate that expires a few
seconds after certgate starts: its full handshakes start failing in OpenSSL,
and a resumption of the ticket it got while valid (really resumed) gets 403.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .conftest import LocalCA, attempt
from support.clients import Connection, client_context
from support.process import wait_until

LIFETIME = dt.timedelta(seconds=8)  # enough to start certgate and get a ticket


def _short_lived(local_ca: LocalCA, directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mayfly")]))
        .issuer_name(local_ca.issuing_cert().subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(local_ca.issuing_key(), hashes.SHA256())
    )
    cert_path, key_path = directory / "mayfly.chain.pem", directory / "mayfly.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                          + local_ca.ca.issuing_cert_path.read_bytes())
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_ticket_does_not_outlive_the_certificate(start_certgate, local_ca: LocalCA, upstream,
                                                 tmp_path: Path, version: str) -> None:
    cert, key = _short_lived(local_ca, tmp_path)
    proxy = start_certgate(f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
tls: {{session_tickets: true}}
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream.port}"}}
""")
    ctx = client_context(local_ca.root, cert, key, version=version)
    with Connection(proxy.port, ctx, timeout=5) as conn:
        assert conn.request("GET", "/echo").status == 200, "started too late to test"
        session = conn.sock.session
    assert session is not None
    status, _, reused = attempt(proxy.port, ctx, session=session)
    assert (status, reused) == (200, True)

    # Expired: a full handshake is refused by OpenSSL itself.
    wait_until(lambda: attempt(proxy.port, ctx)[0] == "closed", 30,
               "the certificate to expire")
    status, body, reused = attempt(proxy.port, ctx, session=session)
    assert reused, "the ticket was not resumed; the check proves nothing"
    assert status == 403, (status, body)
    assert b"expired" in body
