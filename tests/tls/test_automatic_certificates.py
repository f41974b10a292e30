"""Automatic server certificates are one per route host (issue #12, point 3):
a client that asks for a.test is shown a certificate naming a.test and
nothing else, and a client that sends no SNI (an address, a scanner) is
shown one that names no route at all. Real certgate, real TLS 1.2 and 1.3.
"""

from __future__ import annotations

import re
import socket
import ssl
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from certgate.ca import CertificateAuthority

from support.clients import TLS_VERSIONS, Connection, client_context
from support.process import CertgateProcess, wait_until
from support.upstream import Upstream

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
metrics: {{listen: "127.0.0.1:0"}}
client_auth: {{trusted_cas: [builtin]}}
routes:
  - {{host: a.test, upstream: "{upstream}"}}
  - {{host: b.test, upstream: "{upstream}"}}
"""


def _sans(der: bytes) -> set[str]:
    leaf = x509.load_der_x509_certificate(der)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | \
        {str(v) for v in san.get_values_for_type(x509.IPAddress)}


def _presented(port: int, workdir: Path, root: Path, sni: str | None,
               version: str) -> set[str]:
    """SANs of the certificate certgate shows for ``sni``. (With a client
    certificate: under TLS 1.2 a refused one would end the handshake before
    Python returns the server's certificate.)"""
    ctx = client_context(root, workdir / "alice.pem", workdir / "alice.key", version=version)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we only look at what is presented
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return _sans(der)


@pytest.fixture
def certgate(tmp_path: Path, upstream: Upstream):  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    ca = CertificateAuthority.init(state, name="per-host test CA")
    # What earlier versions issued and an upgraded install still has: one
    # certificate naming every uncovered route host.
    combined, _ = ca.ensure_server_certificate(["a.test", "b.test"])
    issued = ca.issue_client("alice", days=30)
    (tmp_path / "alice.pem").write_bytes(issued.chain_pem)
    (tmp_path / "alice.key").write_bytes(issued.key_pem)
    config = CONFIG.format(state=state, upstream=f"http://127.0.0.1:{upstream.port}")
    process = CertgateProcess(config, tmp_path)
    process.start()
    yield process, ca, combined
    process.stop()


@pytest.mark.parametrize("version", sorted(TLS_VERSIONS))
def test_each_name_is_shown_only_its_own_certificate(certgate, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                     version: str) -> None:
    process, ca, combined = certgate

    def shown(sni: str | None) -> set[str]:
        return _presented(process.port, tmp_path, ca.root_cert_path, sni, version)

    assert shown("a.test") == {"a.test"}
    assert shown("b.test") == {"b.test"}
    # No SNI (a connection by address) and a guessed name learn no route.
    assert shown(None) == {"localhost"}
    assert shown("guess.test") == {"localhost"}
    # The old combined certificate is still on disk, just no longer served.
    assert combined.exists()
    # A real client verifies each certificate for its name and is served.
    ctx = client_context(ca.root_cert_path, tmp_path / "alice.pem", tmp_path / "alice.key",
                         version=version)
    for host in ("a.test", "b.test"):
        with Connection(process.port, ctx, sni=host) as conn:
            assert conn.request("GET", "/", host=host).status == 200


def _scrape(process: CertgateProcess) -> str:
    found: list[str] = []

    def listening() -> bool:
        found[:] = re.findall(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", process.log_text())
        return bool(found)

    wait_until(listening, 10, "the metrics listener to start")
    with urllib.request.urlopen(found[0], timeout=5) as response:
        return str(response.read().decode())


def test_the_expiry_gauge_lists_each_served_certificate(certgate) -> None:  # type: ignore[no-untyped-def]
    process, _ca, combined = certgate
    text = _scrape(process)
    served = re.findall(r'^certgate_certificate_expiry_timestamp_seconds\{kind="server",'
                        r'name="([^"]*)",serial="([0-9a-f]+)"\} (\S+)$', text, re.MULTILINE)
    assert sorted(name for name, _serial, _value in served) == ["a.test", "b.test", "localhost"]
    old = x509.load_pem_x509_certificates(combined.read_bytes())[0]
    assert format(old.serial_number, "x") not in {serial for _name, serial, _value in served}
