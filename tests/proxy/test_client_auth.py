"""Acceptance 1 of the core issue: who gets through a `require` route.

Every case runs under TLS 1.2 and 1.3: in 1.3 the client finishes its side of
the handshake before the server has judged its certificate, so a refusal
shows up on the first read instead of in ``wrap_socket``.
"""

from __future__ import annotations

import json
import ssl
import subprocess

import pytest

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%d"
    client_auth: require
"""

VERSIONS = ["1.2", "1.3"]


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % upstream.port)


def _attempt(port: int, ctx: ssl.SSLContext) -> int | str:
    """Status code of GET /echo, or the name of the error that stopped it."""
    try:
        with Connection(port, ctx) as conn:
            return conn.request("GET", "/echo").status
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return type(exc).__name__


@pytest.mark.parametrize("version", VERSIONS)
def test_valid_certificate_reaches_upstream_with_identity(proxy, pki, upstream, version):
    alice = pki["alice"]
    with Connection(proxy.port, pki.context("alice", version)) as conn:
        response = conn.request("GET", "/echo")
    assert response.status == 200
    headers = dict(json.loads(response.body)["headers"])
    assert headers["x-client-verify"] == "SUCCESS"
    assert headers["x-client-cn"] == "alice"
    assert headers["x-client-serial"] == format(alice.serial, "x")
    assert headers["x-client-fingerprint"] == alice.fingerprint
    assert "CN=alice" in headers["x-client-dn"]
    assert headers["x-client-issuer-dn"]
    assert headers["x-client-not-after"].endswith("Z")
    assert "email:alice@example.test" in headers["x-client-san"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("who", [None, "untrusted", "expired", "server-only", "ca-leaf"])
def test_refused_clients_never_reach_upstream(proxy, pki, upstream, version, who):
    before = len(upstream.requests)
    outcome = _attempt(proxy.port, pki.context(who, version))
    if who == "ca-leaf":
        # OpenSSL's ssl_client purpose check lets a CA:TRUE leaf through; certgate's
        # own profile check refuses it after the handshake, with a 403.
        assert outcome == 403
    else:
        assert not isinstance(outcome, int), f"{who} got HTTP {outcome}"
    assert len(upstream.requests) == before


def test_curl_with_issued_certificate(proxy, pki):
    alice = pki["alice"]
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(pki.root), "--cert", str(alice.cert),
         "--key", str(alice.key), f"https://localhost:{proxy.port}/echo"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["headers"]


def test_curl_without_certificate_fails(proxy, pki):
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(pki.root),
         f"https://localhost:{proxy.port}/echo"], capture_output=True, text=True, check=False)
    assert result.returncode != 0
