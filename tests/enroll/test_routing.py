"""The ``enroll`` upstream: config rules, the path table, token redaction,
and the root CA served by a real certgate."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from certgate.config.loader import load_config_text
from certgate.enroll.paths import redact, relative
from certgate.errors import ConfigError

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
routes:
  - {host: localhost, upstream: whoami}
  - {host: enroll.localhost, upstream: enroll}
"""


def _config(route: str) -> str:
    return f"state_dir: /tmp/x\nlisten: ['127.0.0.1:0']\nroutes:\n  - {route}\n"


def test_enroll_route_defaults_to_optional() -> None:
    config = load_config_text(_config("{host: e.test, upstream: enroll}"), "t.yaml", Path("/"))
    route = config.routes[0]
    assert route.upstream.is_enroll
    assert route.upstream.label == "enroll"
    assert route.client_auth.value == "optional"
    assert config.enroll_routes == (route,)


@pytest.mark.parametrize("extra", [
    "client_auth: require",
    "allow: [role:family]",
    "rules: [{path: /x, client_auth: off}]",
    "no_certificate: page",
    "max_body: 1M",
])
def test_enroll_route_refuses_what_would_lock_a_phone_out(extra: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(_config(f"{{host: e.test, upstream: enroll, {extra}}}"), "t.yaml",
                         Path("/"))
    assert "enroll upstream" in str(caught.value)


def test_redact_hides_every_token_segment() -> None:
    token = "A" * 43
    assert redact(f"/enroll/{token}") == "/enroll/[token]"
    assert redact(f"/x/enroll/{token}/p12") == "/x/enroll/[token]/p12"
    assert redact("/enroll/ca.crt") == "/enroll/ca.crt"
    assert redact("/enroll/short") == "/enroll/[token]"  # a truncated token is still secret
    assert redact("/renew") == "/renew"


def test_relative_paths() -> None:
    assert relative("/enroll/x", "/") == "/enroll/x"
    assert relative("/certgate/enroll/x", "/certgate") == "/enroll/x"
    assert relative("/certgatex/enroll", "/certgate") is None


def test_root_certificate_is_public(start_certgate, pki) -> None:  # type: ignore[no-untyped-def]
    proxy = start_certgate(CONFIG)
    root = x509.load_pem_x509_certificate(pki.root.read_bytes())
    with Connection(proxy.port, pki.context(), sni="enroll.localhost") as conn:
        got = conn.request("GET", "/enroll/ca.crt", host="enroll.localhost")
        missing = conn.request("GET", "/nothing", host="enroll.localhost")
        wrong = conn.request("DELETE", "/enroll/ca.crt", host="enroll.localhost")
    assert got.status == 200
    assert x509.load_der_x509_certificate(got.body) == root
    assert got.headers["cache-control"] == "no-store"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert missing.status == 404
    assert wrong.status == 405
    assert wrong.headers["allow"] == "GET, HEAD"
