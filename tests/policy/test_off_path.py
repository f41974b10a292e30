"""Policy acceptance 3: an ``off`` path on a ``require`` route is reachable
without a certificate; every other path of that route is not (403 "client
certificate required"), however the request spells it."""

from __future__ import annotations

import json

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
    rules:
      - {path: /api/webhook/*, client_auth: "off"}
"""

VERSIONS = ["1.2", "1.3"]

OPEN = [("/api/webhook/abc", "/api/webhook/abc"), ("/api/webhook", "/api/webhook"),
        ("//api/webhook/x?token=1", "/api/webhook/x?token=1"),
        ("/api/%77ebhook/x", "/api/webhook/x")]
CLOSED = ["/", "/api", "/api/webhooks", "/api/webhookx/y", "/api/webhook/../states",
          "/api/webhook;x/y", "/api/webhook/%2e%2e/states", "/API/webhook/x",
          "/other?/api/webhook/"]


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % upstream.port)


@pytest.mark.parametrize("version", VERSIONS)
def test_off_path_needs_no_certificate(proxy, pki, upstream, version):
    with Connection(proxy.port, pki.context(None, version)) as conn:
        for target, forwarded in OPEN:
            response = conn.request("POST", target, body=b"{}")
            assert response.status == 200, (target, response.body)
            seen = json.loads(response.body)
            assert seen["path"] == forwarded
            assert ["x-client-verify", "NONE"] in seen["headers"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_other_path_requires_one(proxy, pki, upstream, version):
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context(None, version)) as conn:
        for target in CLOSED:
            response = conn.request("GET", target)
            assert response.status == 403, (target, response.body)
            assert response.body.startswith(b"403 Forbidden: client certificate required ("), \
                response.body
            assert b"no client certificate" in response.body
    assert len(upstream.requests) == before


@pytest.mark.parametrize("version", VERSIONS)
def test_with_a_certificate_everything_is_reachable(proxy, pki, version):
    with Connection(proxy.port, pki.context("bob", version)) as conn:
        for target in ["/", "/api/webhook/abc", "/other"]:
            assert conn.request("GET", target).status == 200


@pytest.mark.parametrize("version", VERSIONS)
def test_a_bad_certificate_still_fails_the_handshake(proxy, pki, version):
    # Asking optionally (the mixed class) must not turn a certificate from an
    # unknown CA into an anonymous client.
    with pytest.raises((OSError, ConnectionError)), \
            Connection(proxy.port, pki.context("untrusted", version)) as conn:
        conn.request("GET", "/api/webhook/abc")
