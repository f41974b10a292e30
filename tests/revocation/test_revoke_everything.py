"""Acceptance 1 of the revocation issue: `certgate ca revoke` ends everything.

A client holds three things through certgate when its certificate is
revoked: a keep-alive HTTP connection, an open WebSocket, and a TLS session
ticket from before the revocation. Within 2 seconds of `ca revoke`
returning, the WebSocket is closed, the next request on the keep-alive
connection fails, a new connection is refused, and a connection that
*resumes* the old ticket is refused too (the check runs again on resumed
sessions, whose handshake OpenSSL does not re-verify). A second client of the
same CA keeps working, so the refusals are about the revoked certificate and
not a broken proxy.

The guard test shows the ticket is really accepted and admitted before the
revocation, so the resumed-session refusal cannot pass trivially.
"""

from __future__ import annotations

import ssl
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from .conftest import REVOKED_ALERT, LocalCA, attempt, ca_cli, refused_as
from support.clients import Connection
from support.process import wait_until

VERSIONS = ["1.2", "1.3"]
DEADLINE = 2.0  # the "within 2 seconds"


@pytest.fixture
def proxy(start_certgate, local_ca: LocalCA, upstream, ws_upstream):  # type: ignore[no-untyped-def]
    return start_certgate(f"""
state_dir: {local_ca.state}
listen: ["127.0.0.1:0"]
tls: {{session_tickets: true}}
client_auth: {{trusted_cas: [builtin], crls: [builtin]}}
routes:
  - {{host: localhost, upstream: "http://127.0.0.1:{upstream.port}"}}
  - {{host: localhost, path: /ws, upstream: "http://127.0.0.1:{ws_upstream}"}}
""")


def _ticket(port: int, ctx: ssl.SSLContext) -> ssl.SSLSession:
    """A session from a full handshake; in TLS 1.3 the ticket arrives after it."""
    with Connection(port, ctx, timeout=5) as conn:
        assert conn.request("GET", "/echo").status == 200
        session = conn.sock.session
    assert session is not None
    return session


@pytest.mark.parametrize("version", VERSIONS)
def test_resumed_session_is_admitted_before_revocation(proxy, local_ca: LocalCA,
                                                      version: str) -> None:
    """Guard for the test below: tickets are issued, accepted and admitted."""
    ctx = local_ca.context("carol", version)
    session = _ticket(proxy.port, ctx)
    status, _, reused = attempt(proxy.port, ctx, session=session)
    assert reused, "the session ticket was not accepted"
    assert status == 200


@pytest.mark.parametrize("version", VERSIONS)
def test_revoke_closes_websocket_keepalive_and_refuses_new_and_resumed(
        proxy, local_ca: LocalCA, version: str) -> None:
    ctx = local_ca.context("carol", version)
    session = _ticket(proxy.port, ctx)
    with Connection(proxy.port, ctx, timeout=5) as keepalive, \
            ws_connect(f"wss://localhost:{proxy.port}/ws", ssl=ctx, open_timeout=10,
                       close_timeout=2) as ws:
        assert keepalive.request("GET", "/echo").status == 200
        ws.send("before")
        assert ws.recv(timeout=5) == "before"

        ca_cli(local_ca.state, "revoke", "carol", "--reason", "keyCompromise")
        revoked_at = time.monotonic()

        # The WebSocket is closed by certgate: recv ends with ConnectionClosed
        # (not a timeout) before the deadline.
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=DEADLINE)
        ws_closed = time.monotonic() - revoked_at
        assert ws_closed < DEADLINE, f"WebSocket closed only after {ws_closed:.2f}s"

        # The keep-alive connection: the next request gets no 2xx.
        try:
            status: int | str = keepalive.request("GET", "/echo").status
        except (ConnectionError, OSError):
            status = "closed"
        assert status in (403, "closed"), status

        # A new connection: refused in the handshake with certificate_revoked.
        status, body, _ = attempt(proxy.port, ctx)
        assert status == REVOKED_ALERT, (status, body)

        # A connection resuming the pre-revocation ticket: the ticket is
        # still accepted by TLS (so this really is a resumed session), and
        # certgate refuses it anyway.
        status, body, reused = attempt(proxy.port, ctx, session=session)
        assert reused, "the pre-revocation ticket was not resumed; the check proves nothing"
        # A resumed session carries no certificate to verify in the handshake:
        # the check after it refuses, with a 403 that says why.
        assert status == 403, (status, body)
        assert b"revoked" in body
        elapsed = time.monotonic() - revoked_at
        assert elapsed < DEADLINE, f"all four refusals took {elapsed:.2f}s"

    # Another client of the same CA is unaffected.
    assert attempt(proxy.port, local_ca.context("dave", version))[0] == 200


def test_revoking_another_client_leaves_the_websocket_open(proxy, local_ca: LocalCA) -> None:
    """Closing is targeted: revoking dave does not touch carol's WebSocket."""
    ctx = local_ca.context("carol")
    with ws_connect(f"wss://localhost:{proxy.port}/ws", ssl=ctx, open_timeout=10,
                    close_timeout=2) as ws:
        ws.send("one")
        assert ws.recv(timeout=5) == "one"
        ca_cli(local_ca.state, "revoke", "dave")
        wait_until(lambda: refused_as(proxy.port, local_ca.context("dave"), "revoked"), 5,
                   "dave to be refused")
        ws.send("two")
        assert ws.recv(timeout=5) == "two"
