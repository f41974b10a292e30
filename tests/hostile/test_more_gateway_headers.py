"""Gateway headers the issue #11 list missed, sent by an anonymous client.

* ``Proxy`` (httpoxy, CVE-2016-5385): CGI, WSGI-under-CGI, PHP and Go's
  net/http/cgi put it in ``HTTP_PROXY``, which HTTP client libraries then
  use as their outbound proxy: the attacker receives the upstream's
  outgoing requests (and their credentials).
* Client-IP headers a CDN in front would set (``True-Client-IP``,
  ``CF-Connecting-IP``, ``Fastly-Client-IP``, ``X-Cluster-Client-IP``,
  ``X-Original-Forwarded-For``): Rails, Laravel, Nextcloud and rate
  limiters read them for the client address, so an anonymous client chose
  its own IP for allow-lists and bans.
* Host rewrites (``X-Original-Host``, ``X-Host``) read by ASP.NET/IIS ARR
  setups and some CMSs to build absolute URLs (password-reset poisoning).
* ``X-Envoy-*``: an Envoy upstream trusts ``x-envoy-original-path`` and the
  retry/timeout headers from its downstream.

Each is stripped unless the route names it in ``pass_headers``; what the
upstream received is checked.
"""

from __future__ import annotations

import json

import pytest

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - {host: localhost, path: /, upstream: "http://127.0.0.1:%(up)d", client_auth: "off"}
  - {host: localhost, path: /cdn, upstream: "http://127.0.0.1:%(up)d", client_auth: "off",
     pass_headers: [CF-Connecting-IP]}
"""

SPOOFED = [
    ("Proxy", "http://forged.example:3128"),
    ("True-Client-IP", "forged"),
    ("CF-Connecting-IP", "forged"),
    ("Fastly-Client-IP", "forged"),
    ("X-Cluster-Client-IP", "forged"),
    ("X-Original-Forwarded-For", "forged"),
    ("X-Original-Host", "forged.example"),
    ("X-Host", "forged.example"),
    ("X-Envoy-Original-Path", "/admin/forged"),
    ("x_envoy_external_address", "forged"),
]

VERSIONS = ["1.2", "1.3"]


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"up": upstream.port})


@pytest.mark.parametrize("version", VERSIONS)
def test_more_gateway_headers_are_stripped(proxy, pki, upstream, version):  # type: ignore[no-untyped-def]
    with Connection(proxy.port, pki.context(None, version)) as conn:
        response = conn.request("GET", "/echo", headers=SPOOFED)
    assert response.status == 200, response.body
    seen = json.loads(response.body)["headers"]
    assert not [(n, v) for n, v in seen if "forged" in v], seen


def test_a_route_may_still_pass_one(proxy, pki, upstream):  # type: ignore[no-untyped-def]
    with Connection(proxy.port, pki.context(None)) as conn:
        response = conn.request("GET", "/cdn/echo", headers=SPOOFED[:3])
    seen = {n.lower(): v for n, v in json.loads(response.body)["headers"]}
    assert seen.get("cf-connecting-ip") == "forged"
    assert "proxy" not in seen
    assert "true-client-ip" not in seen
