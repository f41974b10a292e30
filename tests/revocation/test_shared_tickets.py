"""Session tickets resume on every worker and across a reload, never across
client-auth classes, and never skip revocation (issue #15, "tickets across
workers").

Before, each worker's contexts had OpenSSL's random ticket keys, so with
``workers: 2`` a ticket resumed only when the kernel handed the reconnection
to the worker that issued it (about half the time), and a reload threw every
ticket away. 24 resumptions all landing on one worker by chance has a
probability of 2 * 2**-24.
"""

from __future__ import annotations

import signal
import ssl
from pathlib import Path

import pytest

from .conftest import LocalCA, attempt, ca_cli
from support.clients import Connection
from support.process import free_port, wait_until

VERSIONS = ["1.2", "1.3"]
TRIES = 24

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:{port}"]
workers: 2
tls: {{session_tickets: true{certificates}}}
client_auth: {{trusted_cas: [builtin]}}
routes:
  - {{host: localhost, upstream: whoami, client_auth: require}}
  - {{host: open.test, upstream: whoami, client_auth: "off"}}
"""


def _config(local_ca: LocalCA, certificates: str = "") -> str:
    return CONFIG.format(state=local_ca.state, port=free_port(), certificates=certificates)


def _ticket(port: int, ctx: ssl.SSLContext, sni: str = "localhost") -> ssl.SSLSession:
    """A session from a full handshake (a TLS 1.3 ticket arrives after it)."""
    with Connection(port, ctx, sni=sni, timeout=5) as conn:
        assert conn.request("GET", "/", host=sni).status == 200
        session = conn.sock.session
    assert session is not None
    return session


def _resumed(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession, tries: int,
             sni: str = "localhost") -> int:
    count = 0
    for _ in range(tries):
        status, _, reused = attempt(port, ctx, "/", session=session, sni=sni)
        assert status == 200, status
        count += reused
    return count


@pytest.mark.parametrize("version", VERSIONS)
def test_a_ticket_resumes_on_every_worker(start_certgate, local_ca: LocalCA,
                                          version: str) -> None:
    proxy = start_certgate(_config(local_ca))
    ctx = local_ca.context("carol", version)
    session = _ticket(proxy.port, ctx)
    assert _resumed(proxy.port, ctx, session, TRIES) == TRIES


def test_a_ticket_survives_a_reload(start_certgate, local_ca: LocalCA) -> None:
    proxy = start_certgate(_config(local_ca))
    ctx = local_ca.context("carol", "1.3")
    session = _ticket(proxy.port, ctx)
    before = proxy.log_text().count("reloaded")
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: proxy.log_text().count("reloaded") > before, 15, "the reload")
    assert _resumed(proxy.port, ctx, session, 8) == 8


@pytest.mark.parametrize("version", VERSIONS)
def test_revocation_is_rechecked_on_a_resumed_session(start_certgate, local_ca: LocalCA,
                                                      version: str) -> None:
    proxy = start_certgate(_config(local_ca))
    ctx = local_ca.context("carol", version)
    session = _ticket(proxy.port, ctx)
    ca_cli(local_ca.state, "revoke", "carol")

    def refused_on_resumption() -> bool:
        status, body, reused = attempt(proxy.port, ctx, "/", session=session)
        return reused and status == 403 and b"revoked" in body

    # Every worker must refuse it (each picks the CRL up on its own, within
    # seconds): eight resumed tries in a row, all refused.
    wait_until(lambda: all(refused_on_resumption() for _ in range(8)), 5,
               "resumed sessions to be refused on every worker")


@pytest.mark.parametrize("version", VERSIONS)
def test_one_certificate_two_classes_never_share_a_ticket(start_certgate, local_ca: LocalCA,
                                                          tmp_path: Path, version: str) -> None:
    """The two names share one server certificate, so only the class in the
    key derivation tells their ticket keys apart."""
    issued = local_ca.ca.issue_server(["localhost", "open.test"], name="both")
    chain, key = tmp_path / "both.pem", tmp_path / "both.key"
    chain.write_bytes(issued.chain_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    proxy = start_certgate(_config(
        local_ca, f', certificates: [{{cert: "{chain}", key: "{key}"}}]'))
    ctx = local_ca.context("carol", version)
    session = _ticket(proxy.port, ctx, "open.test")
    # The open.test session carries no client certificate: resumed on
    # localhost it would be a certificate-less session on a require name.
    for _ in range(6):
        with Connection(proxy.port, ctx, sni="localhost", timeout=5, session=session) as conn:
            assert not conn.sock.session_reused
            assert conn.request("GET", "/").status == 200  # a full handshake, carol's
    # Guard: the ticket does resume where it was issued, on either worker.
    assert _resumed(proxy.port, ctx, session, 6, "open.test") == 6
