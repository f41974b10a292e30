"""The built-in whoami upstream: identity as JSON, keep-alive, bodies discarded."""

from __future__ import annotations

import json

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
routes:
  - {host: localhost, upstream: whoami, client_auth: optional}
"""


def test_whoami_keeps_the_connection_alive(start_certgate, pki):
    proxy = start_certgate(CONFIG)
    with Connection(proxy.port, pki.context("alice"), timeout=5) as conn:
        first = json.loads(conn.request("GET", "/a").body)
        second = json.loads(conn.request("POST", "/b", body=b"x" * 100_000).body)
        third = conn.request("HEAD", "/c")
    assert first["cn"] == "alice"
    assert first["verified"] is True
    assert first["roles"] == ["ops"]
    assert second["path"] == "/b"
    assert third.status == 200
    assert third.body == b""


def test_whoami_without_certificate_on_optional_route(start_certgate, pki):
    proxy = start_certgate(CONFIG)
    with Connection(proxy.port, pki.context(), timeout=5) as conn:
        doc = json.loads(conn.request("GET", "/").body)
    assert doc == {"verified": False, "route": "localhost/", "host": "localhost", "path": "/"}


def test_whoami_is_not_sniffed(start_certgate, pki):
    """The JSON carries certificate fields a client chose: a browser must not
    read it as HTML (issue #11 finding 8)."""
    proxy = start_certgate(CONFIG)
    with Connection(proxy.port, pki.context(), timeout=5) as conn:
        response = conn.request("GET", "/")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-type"] == "application/json"


def test_whoami_status_line_has_its_reason_phrase(start_certgate, pki):
    """`HTTP/1.1 200 ` with an empty reason is legal but looks broken in curl -v
    (newcomer trial): certgate's own answers carry the standard phrase."""
    import socket

    proxy = start_certgate(CONFIG)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw, \
            pki.context().wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        head = tls.recv(64)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
