"""Acceptance 5 and 9: SNI and Host must agree on client-auth policy.

``open.test`` needs no certificate, ``locked.test`` requires one. A client
that handshakes as open.test (no certificate asked) and then names
locked.test in any spelling gets 421 and the upstream is never contacted.
A session ticket from open.test must not carry a certificate-less client
into locked.test either.
"""

from __future__ import annotations

import ssl

import pytest

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
tls: {session_tickets: true}
routes:
  - {host: locked.test, upstream: "http://127.0.0.1:%(up)d", client_auth: require}
  - {host: open.test, upstream: "http://127.0.0.1:%(up)d", client_auth: "off"}
"""


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"up": upstream.port})


def test_open_name_serves_without_certificate(proxy, pki, upstream):
    with Connection(proxy.port, pki.context(), sni="open.test") as conn:
        response = conn.request("GET", "/echo", host="open.test")
    assert response.status == 200


def test_sni_open_host_locked_is_misdirected(proxy, pki, upstream):
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context(), sni="open.test") as conn:
        response = conn.request("GET", "/echo", host="locked.test")
    assert response.status == 421
    assert b"locked.test" in response.body
    assert len(upstream.requests) == before


@pytest.mark.parametrize("host", ["LOCKED.TEST", "locked.test.", "locked.test:443",
                                  "Locked.Test.:8443"])
def test_host_spellings_are_misdirected(proxy, pki, upstream, host):
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context(), sni="open.test") as conn:
        response = conn.request("GET", "/echo", host=host)
    assert response.status == 421
    assert len(upstream.requests) == before


def test_absolute_form_target_is_misdirected(proxy, pki, upstream):
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context(), sni="open.test") as conn:
        response = conn.request("GET", "https://locked.test/echo", host="open.test")
    assert response.status == 421
    assert len(upstream.requests) == before


def test_locked_name_with_certificate_serves(proxy, pki):
    with Connection(proxy.port, pki.context("alice"), sni="locked.test") as conn:
        assert conn.request("GET", "/echo", host="locked.test").status == 200


def test_no_sni_gets_the_strictest_policy(proxy, pki, upstream):
    """An IP-literal connection (no SNI) is asked for a certificate."""
    before = len(upstream.requests)
    ctx = pki.context(version="1.3")
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)), \
            Connection(proxy.port, ctx, sni=None) as conn:
        conn.request("GET", "/echo", host="locked.test")
    assert len(upstream.requests) == before


def _session_from(port: int, ctx: ssl.SSLContext, name: str) -> ssl.SSLSession:
    with Connection(port, ctx, sni=name) as conn:
        assert conn.request("GET", "/echo", host=name).status == 200
        session = conn.sock.session
    assert session is not None
    return session


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_resumption_works_on_the_same_name(proxy, pki, version):
    """Guards the next test: tickets really are issued and accepted."""
    ctx = pki.context(version=version)
    session = _session_from(proxy.port, ctx, "open.test")
    with Connection(proxy.port, ctx, sni="open.test", session=session) as conn:
        assert conn.request("GET", "/echo", host="open.test").status == 200
        assert conn.sock.session_reused


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_ticket_from_open_name_never_unlocks_locked_name(proxy, pki, upstream, version):
    ctx = pki.context(version=version)
    session = _session_from(proxy.port, ctx, "open.test")
    before = len(upstream.requests)
    statuses: list[int] = []
    try:
        # The session was made for open.test; offer it to locked.test.
        with Connection(proxy.port, ctx, sni="locked.test", session=session,
                        check_hostname=False) as conn:
            assert not conn.sock.session_reused
            statuses.append(conn.request("GET", "/echo", host="locked.test").status)
    except (ssl.SSLError, ConnectionError, OSError):
        pass
    assert not any(200 <= s < 300 for s in statuses)
    assert len(upstream.requests) == before
