"""Acceptance 2: client-sent identity headers never reach the upstream."""

from __future__ import annotations

import json

import pytest

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
routes:
  - {host: localhost, upstream: "http://127.0.0.1:%d", client_auth: optional}
"""

SPOOFED = [
    ("X-Client-CN", "admin"),
    ("x-client-verify", "SUCCESS"),
    ("X_Client_CN", "admin"),
    ("X.Client.Serial", "01"),
    ("X-Forwarded-Client-Cert", "Hash=abc;Subject=\"CN=admin\""),
    ("X-Forwarded-Tls-Client-Cert", "MIIB..."),
    ("X-Forwarded-Tls-Client-Cert-Info", "Subject=CN=admin"),
    ("X-SSL-Client-Verify", "SUCCESS"),
    ("Ssl-Client-Subject-Dn", "CN=admin"),
    ("X-Client-Roles", "ops"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Real-IP", "10.0.0.1"),
    ("Forwarded", "for=10.0.0.1"),
]


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % upstream.port)


def _seen_headers(body: bytes) -> list[tuple[str, str]]:
    return [(n.lower(), v) for n, v in json.loads(body)["headers"]]


@pytest.mark.parametrize("who", ["alice", None])
def test_spoofed_identity_headers_are_stripped(proxy, pki, who):
    with Connection(proxy.port, pki.context(who)) as conn:
        response = conn.request("GET", "/echo", headers=SPOOFED)
    assert response.status == 200
    seen = _seen_headers(response.body)
    values = [v for _, v in seen]
    assert "admin" not in values
    assert "CN=admin" not in values
    assert not any("10.0.0.1" in v for v in values)
    names = [n for n, _ in seen]
    assert not any("_" in n or "." in n for n in names)
    assert names.count("x-client-cn") == (1 if who else 0)
    assert names.count("x-forwarded-for") == 1
    headers = dict(seen)
    assert headers["x-client-verify"] == ("SUCCESS" if who else "NONE")
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == "localhost"
    if who:
        assert headers["x-client-cn"] == "alice"
        assert headers["x-client-roles"] == "ops"


def test_connection_header_removes_hop_by_hop_extras(proxy, pki):
    with Connection(proxy.port, pki.context("alice")) as conn:
        response = conn.request("GET", "/echo", headers=[
            ("Connection", "X-Custom, keep-alive"),
            ("X-Custom", "hop-by-hop by request"),
            ("Keep-Alive", "timeout=5"),
        ])
    headers = dict(_seen_headers(response.body))
    assert headers["x-client-cn"] == "alice"
    assert "x-custom" not in headers
    assert "keep-alive" not in headers
    assert "connection" not in headers


@pytest.mark.parametrize("listed", ["X-Client-CN", "X-Client-Verify", "X-Forwarded-For"])
def test_connection_header_naming_certgate_headers_is_refused(proxy, pki, upstream, listed):
    """Connection may not name a header certgate sets (issue #11 finding 8):
    refused with 400 rather than silently ignored."""
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context("alice")) as conn:
        response = conn.request("GET", "/echo", headers=[("Connection", f"{listed}, X-Custom")])
    assert response.status == 400
    assert f"Connection header names {listed.lower()}".encode() in response.body
    assert len(upstream.requests) == before
