"""Fixtures shared by the whole suite: a PKI made by certgate's own CA, a real
upstream on 127.0.0.1, and certgate itself as a real subprocess."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgate.ca import CertificateAuthority

from support.clients import client_context
from support.process import CertgateProcess
from support.upstream import Upstream

# Subprocesses (`python -m certgate ...`) must run this checkout's code, not
# whatever copy an earlier `pip install -e` elsewhere left on the path.
_SRC = str(Path(__file__).resolve().parents[1] / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p)


@dataclass(frozen=True)
class ClientCert:
    name: str
    cert: Path  # leaf + chain
    key: Path
    serial: int
    fingerprint: str


@dataclass
class PKI:
    state: Path
    root: Path
    ca: CertificateAuthority
    certs: dict[str, ClientCert]
    other_ca_root: Path

    def __getitem__(self, name: str) -> ClientCert:
        return self.certs[name]

    def context(self, name: str | None = None, version: str | None = None):  # type: ignore[no-untyped-def]
        if name is None:
            return client_context(self.root, version=version)
        cert = self.certs[name]
        return client_context(self.root, cert.cert, cert.key, version=version)


def _write_client(directory: Path, name: str, cert_pem: bytes, key_pem: bytes,
                  chain_pem: bytes) -> ClientCert:
    cert_path = directory / f"{name}.chain.pem"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(chain_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    leaf = x509.load_pem_x509_certificate(cert_pem)
    return ClientCert(name, cert_path, key_path, leaf.serial_number,
                      leaf.fingerprint(hashes.SHA256()).hex())


def _issuing_key(ca: CertificateAuthority) -> ec.EllipticCurvePrivateKey:
    """The issuing CA's private key, found by matching it to issuing.crt."""
    issuing = x509.load_pem_x509_certificate(ca.issuing_cert_path.read_bytes())
    wanted = issuing.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    for path in (ca.state_dir / "ca" / "keys").iterdir():
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        have = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        if have == wanted:
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return key
    raise AssertionError("issuing key not found")


def _craft(ca: CertificateAuthority, directory: Path, name: str, *, eku: x509.ObjectIdentifier,
           ca_flag: bool = False, days_ago: int = 0) -> ClientCert:
    """A leaf signed by the real issuing CA, with a profile `ca issue` never makes."""
    issuing = x509.load_pem_x509_certificate(ca.issuing_cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(days=days_ago + 2)
    end = now - dt.timedelta(days=days_ago) if days_ago else now + dt.timedelta(days=30)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuing.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .sign(_issuing_key(ca), hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return _write_client(directory, name, cert_pem, key_pem,
                         cert_pem + ca.issuing_cert_path.read_bytes())


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    base = tmp_path_factory.mktemp("pki")
    state = base / "state"
    ca = CertificateAuthority.init(state, name="certgate test CA")
    certs: dict[str, ClientCert] = {}
    for name, roles in (("alice", ("ops",)), ("bob", ())):
        issued = ca.issue_client(name, roles=roles, days=30, email=f"{name}@example.test")
        certs[name] = _write_client(base, name, issued.cert_pem, issued.key_pem,
                                    issued.chain_pem)
    certs["expired"] = _craft(ca, base, "expired", eku=ExtendedKeyUsageOID.CLIENT_AUTH,
                              days_ago=1)
    certs["server-only"] = _craft(ca, base, "server-only", eku=ExtendedKeyUsageOID.SERVER_AUTH)
    certs["ca-leaf"] = _craft(ca, base, "ca-leaf", eku=ExtendedKeyUsageOID.CLIENT_AUTH,
                              ca_flag=True)
    other = CertificateAuthority.init(base / "other-state", name="someone else's CA")
    issued = other.issue_client("mallory", days=30)
    certs["untrusted"] = _write_client(base, "untrusted", issued.cert_pem, issued.key_pem,
                                       issued.chain_pem)
    return PKI(state, ca.root_cert_path, ca, certs, other.root_cert_path)


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


StartCertgate = Callable[..., CertgateProcess]


@pytest.fixture
def start_certgate(tmp_path: Path, pki: PKI) -> Iterator[StartCertgate]:
    """Start certgate with a config; ``{state}`` in the text is the PKI's state dir."""
    started: list[CertgateProcess] = []

    def start(config: str, **kwargs: object) -> CertgateProcess:
        text = config.replace("{state}", str(pki.state))
        if "metrics:" not in text:
            # Many certgates run side by side in tests; only the metrics
            # tests ask for the listener (on a port of their own).
            text += '\nmetrics: {listen: "off"}\n'
        process = CertgateProcess(text, tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
