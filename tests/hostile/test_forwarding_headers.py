"""Identity and routing headers other gateways set never come from a client.

Issue #11 finding 8: upstreams built to sit behind another gateway believe
``Client-Cert`` (RFC 9440), ``X-SSL-Cert``, ``X-Remote-User``,
``X-Original-URL``, ``X-HTTP-Method-Override`` and the like. An anonymous
client on a public path sent them straight through. Now each is stripped
unless the route names it in ``pass_headers``; certgate's own headers can
never be named there. Each case checks what the upstream received.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from certgate.config.loader import load_config_text
from certgate.errors import ConfigError

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(up)d"
    client_auth: require
    rules:
      - {path: /api/webhook/*, client_auth: "off"}
"""

SSO_ROUTE = """
  - host: localhost
    path: /sso
    upstream: "http://127.0.0.1:%(up)d"
    client_auth: "off"
    pass_headers: [X-Remote-User, Remote-Groups]
"""

SPOOFED = [
    ("Client-Cert", ":MIIBforged=:"),
    ("Client-Cert-Chain", ":MIIBforged=:"),
    ("X-SSL-Cert", "-----BEGIN%20CERTIFICATE-----forged"),
    ("X-ARR-ClientCert", "MIIBforged"),
    ("X-Amzn-Mtls-Clientcert", "forged"),
    ("X-Amzn-Mtls-Clientcert-Leaf", "forged"),
    ("X-Amzn-Oidc-Identity", "forged"),
    ("X-Remote-User", "forged"),
    ("X-Remote-Group", "forged"),
    ("X_Remote_User", "forged"),
    ("x.remote.user", "forged"),
    ("Remote-User", "forged"),
    ("X-Webauth-User", "forged"),
    ("X-WEBAUTH-EMAIL", "forged"),
    ("X-Original-URL", "/admin/forged"),
    ("X-Rewrite-URL", "/admin/forged"),
    ("X-HTTP-Method-Override", "DELETE-forged"),
    ("X-HTTP-Method", "DELETE-forged"),
    ("X-Method-Override", "DELETE-forged"),
    ("X-Forwarded-User", "forged"),
    ("X-Forwarded-Email", "forged"),
    ("X-Forwarded-Groups", "forged"),
    ("X-Forwarded-Preferred-Username", "forged"),
    ("X-Forwarded-Access-Token", "forged"),
    ("X-Auth-Request-User", "forged"),
    ("X-Auth-Request-Email", "forged"),
    ("X-Pomerium-Jwt-Assertion", "forged"),
    ("X-authentik-username", "forged"),
    ("Cf-Access-Authenticated-User-Email", "forged"),
    ("X-Goog-Authenticated-User-Email", "forged"),
    ("Tailscale-User-Login", "forged"),
    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    # X-Forwarded-* beyond the four certgate writes: Traefik forward-auth,
    # Rack, Spring and ASP.NET rebuild the URL or scheme from them.
    ("X-Forwarded-Prefix", "/admin-forged"),
    ("X-Forwarded-Uri", "/admin/forged"),
    ("X-Forwarded-Method", "DELETE-forged"),
    ("X-Forwarded-Scheme", "forged"),
    ("X-Forwarded-Ssl", "forged"),
    ("X-Forwarded-Server", "forged"),
    ("x_forwarded_prefix", "/forged"),
]


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"up": upstream.port})


@pytest.fixture
def sso_proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate((CONFIG.rstrip("\n") + SSO_ROUTE) % {"up": upstream.port})


def _seen(body: bytes) -> dict[str, str]:
    return {n.lower(): v for n, v in json.loads(body)["headers"]}


@pytest.mark.parametrize("who", [None, "alice"])
def test_gateway_identity_and_routing_headers_are_stripped(proxy, pki, who):
    with Connection(proxy.port, pki.context(who)) as conn:
        response = conn.request("POST", "/api/webhook/x", headers=SPOOFED, body=b"{}")
    assert response.status == 200, response.body
    seen = _seen(response.body)
    assert not [v for v in seen.values() if "forged" in v], seen
    assert "http2-settings" not in seen
    assert seen["x-client-verify"] == ("SUCCESS" if who else "NONE")


def test_route_passes_the_headers_it_names_and_only_those(sso_proxy, pki):
    with Connection(sso_proxy.port, pki.context(None)) as conn:
        response = conn.request("GET", "/sso/whoami", headers=[
            ("X-Remote-User", "alice@sso"), ("remote_groups", "family"),
            ("X-Webauth-User", "forged"), ("X-Original-URL", "/forged"),
            ("X-Client-CN", "forged"), ("X-Forwarded-User", "forged")])
    assert response.status == 200
    seen = _seen(response.body)
    assert seen["x-remote-user"] == "alice@sso"
    assert seen["remote_groups"] == "family"
    assert not [v for v in seen.values() if "forged" in v], seen


# -- pass_headers is checked at load time --------------------------------------------

ROUTE = """\
routes:
  - host: ha.example.com
    upstream: http://127.0.0.1:8123
    pass_headers: %s
"""


def _problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, str(tmp_path / "c.yaml"), tmp_path)
    return info.value.problems


@pytest.mark.parametrize(("name", "why"), [
    ("X-Client-CN", "set by certgate itself"),
    ("x_client_verify", "set by certgate itself"),
    ("X-Forwarded-Client-Cert", "set by certgate itself"),
    ("X-Forwarded-For", "set by certgate itself"),
    ("X-Forwarded-User", "set by certgate itself"),
    ("Forwarded", "set by certgate itself"),
    ("X-Real-IP", "set by certgate itself"),
    ("Host", "not an end-to-end header"),
    ("Content-Length", "not an end-to-end header"),
    ("HTTP2-Settings", "not an end-to-end header"),
    ("X-Custom", "not a header certgate strips"),
    ("X Remote User", "is not a header name"),
])
def test_pass_headers_refuses_what_it_cannot_pass(tmp_path, name, why):
    problems = _problems(ROUTE % f"[{json.dumps(name)}]", tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{tmp_path / 'c.yaml'}:4: routes[0].pass_headers[0]: ")
    assert why in problems[0]


def test_pass_headers_loads_folded_names(tmp_path):
    config = load_config_text(ROUTE % "[X-Remote-User, Client_Cert, X-Amzn-Mtls-Clientcert]",
                              "c.yaml", tmp_path)
    assert config.routes[0].pass_headers == frozenset(
        {b"x-remote-user", b"client-cert", b"x-amzn-mtls-clientcert"})
