"""Fixtures for the revocation and hot-reload acceptance tests (issue #4).

Every test here that revokes, rewrites CRLs or swaps certificates gets a CA
of its own (``local_ca``), so nothing it does leaks into the session-wide
``pki`` that the rest of the suite shares. CRLs for ``client_auth.crls`` are
built with ``cryptography`` and signed by the CA's real issuing key, read
from ``STATE/ca/keys/`` the same way ``tests/conftest.py`` does.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

from certgate.ca import CertificateAuthority

from support.clients import Connection, client_context

CA_TIMEOUT = 60.0  # a `certgate ca ...` subprocess on a loaded 2-core box
CLIENTS = ("carol", "dave", "erin")


def ca_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m certgate ca ARGS --state STATE``; fails the test on a non-zero exit."""
    result = subprocess.run(
        [sys.executable, "-m", "certgate", "ca", *args, "--state", str(state)],
        capture_output=True, text=True, check=False, cwd=state.parent, timeout=CA_TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result


@dataclass(frozen=True)
class Client:
    name: str
    cert: Path  # leaf + chain
    key: Path
    serial: int


@dataclass
class LocalCA:
    """A built-in CA in a state directory of its own, with a few clients."""

    state: Path
    ca: CertificateAuthority
    clients: dict[str, Client] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.ca.root_cert_path

    def __getitem__(self, name: str) -> Client:
        return self.clients[name]

    def context(self, name: str, version: str | None = None) -> ssl.SSLContext:
        client = self.clients[name]
        return client_context(self.root, client.cert, client.key, version=version)

    def issuing_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca.issuing_cert_path.read_bytes())

    def issuing_key(self) -> ec.EllipticCurvePrivateKey:
        """The issuing CA's private key, found by matching it to issuing.crt."""
        wanted = _spki(self.issuing_cert().public_key())
        for path in (self.state / "ca" / "keys").iterdir():
            key = serialization.load_pem_private_key(path.read_bytes(), None)
            if _spki(key.public_key()) == wanted:
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                return key
        raise AssertionError("issuing key not found")

    def crl(self, revoked: Iterable[int], *, key: ec.EllipticCurvePrivateKey | None = None,
            last_update: dt.datetime | None = None,
            next_update: dt.datetime | None = None, number: int = 1) -> bytes:
        """A PEM CRL in the issuing CA's name, signed by ``key`` (default: the real one).

        Defaults: issued a minute ago, next update in a day.
        """
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuing_cert().subject)
            .last_update(last_update or now - dt.timedelta(minutes=1))
            .next_update(next_update or now + dt.timedelta(days=1))
            .add_extension(x509.CRLNumber(number), critical=False)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(now - dt.timedelta(minutes=2)).build())
        crl = builder.sign(key or self.issuing_key(), hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_local_ca(base: Path, names: Iterable[str] = CLIENTS, *,
                  ca_name: str = "revocation test CA") -> LocalCA:
    state = base / "state"
    ca = CertificateAuthority.init(state, name=ca_name)
    local = LocalCA(state, ca)
    for name in names:
        issued = ca.issue_client(name, days=30)
        cert = base / f"{name}.chain.pem"
        key = base / f"{name}.key"
        cert.write_bytes(issued.chain_pem)
        key.write_bytes(issued.key_pem)
        key.chmod(0o600)
        serial = x509.load_pem_x509_certificate(issued.cert_pem).serial_number
        local.clients[name] = Client(name, cert, key, serial)
    return local


@pytest.fixture
def local_ca(tmp_path: Path) -> LocalCA:
    """A fresh CA for one test, with clients carol, dave and erin."""
    return make_local_ca(tmp_path / "pki")


# -- talking to certgate ----------------------------------------------------

# An HTTP status; "certificate_revoked" when the handshake was refused with
# that TLS alert; "closed" when there was no answer for any other reason.
Outcome = int | str
REVOKED_ALERT = "certificate_revoked"


def attempt(port: int, ctx: ssl.SSLContext, target: str = "/echo", *, sni: str = "localhost",
            session: ssl.SSLSession | None = None) -> tuple[Outcome, bytes, bool]:
    """One request on a new connection: (status or "closed", body, session reused)."""
    reused = False
    try:
        with Connection(port, ctx, sni=sni, timeout=5, session=session) as conn:
            reused = conn.sock.session_reused
            response = conn.request("GET", target, host=sni)
            return response.status, response.body, reused
    except ssl.SSLError as exc:
        # TLS 1.3 clients read the alert after their side of the handshake.
        if exc.reason == "SSLV3_ALERT_CERTIFICATE_REVOKED":
            return REVOKED_ALERT, b"", reused
        return "closed", b"", reused
    except (ConnectionError, OSError):
        return "closed", b"", reused


def outcome(port: int, ctx: ssl.SSLContext, target: str = "/echo") -> Outcome:
    return attempt(port, ctx, target)[0]


def refused_as(port: int, ctx: ssl.SSLContext, reason: str) -> bool:
    """A new connection is refused for ``reason``: "revoked" inside the TLS
    handshake with the certificate_revoked alert (issue #12), anything else
    (a stale CRL...) with a 403 whose body names it."""
    status, body, _ = attempt(port, ctx)
    if reason == "revoked":
        return status == REVOKED_ALERT
    return status == 403 and reason.encode() in body


def replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it over ``path`` (atomic)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- server certificates --------------------------------------------------------

def issue_server(local_ca: LocalCA, out: Path, host: str) -> tuple[bytes, bytes, int]:
    """(fullchain PEM, key PEM, serial) of a new server certificate from `ca issue-server`."""
    out.mkdir(parents=True)
    ca_cli(local_ca.state, "issue-server", host, "--out", str(out))
    chain = (out / f"{host}.fullchain.pem").read_bytes()
    key = (out / f"{host}.key").read_bytes()
    return chain, key, x509.load_pem_x509_certificate(chain).serial_number


def peer_serial(conn: Connection) -> int:
    der = conn.sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def served_serial(port: int, ctx: ssl.SSLContext, host: str) -> int | None:
    """The server certificate serial a new connection sees, once it is served 200."""
    try:
        with Connection(port, ctx, sni=host, timeout=5) as conn:
            if conn.request("GET", "/echo", host=host).status != 200:
                return None
            return peer_serial(conn)
    except (ssl.SSLError, ConnectionError, OSError):
        return None


# -- a WebSocket upstream -----------------------------------------------------

def _echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


@pytest.fixture
def ws_upstream() -> Iterator[int]:
    """A real ``websockets`` echo server on 127.0.0.1, in its own thread."""
    with ws_serve(_echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            sock: socket.socket = server.socket
            yield sock.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(10)
    assert not thread.is_alive()
