"""The friendly refusal (issue #12, acceptance 3): ``no_certificate: page``.

``page.test`` requires a certificate but answers its absence with a 496 HTML
page after a completed handshake; a bad certificate still fails in the
handshake. ``locked.test`` keeps today's default (refused in the handshake).
``mixed.test`` is an ``optional`` name with a ``require`` path and no page.

Moving page.test from the ``require`` handshake class to ``optional`` must
not open anything: a certificate-less connection made for page.test that
names locked.test gets 421 (class mismatch), and one that names
mixed.test/private gets the per-request 403, exactly what a connection made
for mixed.test itself gets. The upstream is never contacted on any refusal.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from certgate.config.loader import load_config_text
from certgate.config.schema import ClientAuth
from certgate.http import certpage
from certgate.routing import RouteTable

from support.clients import Connection
from support.foreign_ca import make_foreign_ca

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
routes:
  - {host: page.test, upstream: "http://127.0.0.1:%(up)d", no_certificate: page}
  - {host: locked.test, upstream: "http://127.0.0.1:%(up)d", client_auth: require}
  - {host: mixed.test, upstream: "http://127.0.0.1:%(up)d", client_auth: optional}
  - {host: mixed.test, path: /private, upstream: "http://127.0.0.1:%(up)d"}
"""

VERSIONS = ["1.2", "1.3"]
CSP = "default-src 'none'; style-src 'unsafe-inline'"


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"up": upstream.port})


@pytest.mark.parametrize("version", VERSIONS)
def test_no_certificate_gets_the_page(proxy, pki, upstream, version):  # type: ignore[no-untyped-def]
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context(version=version), sni="page.test") as conn:
        response = conn.request("GET", "/", host="page.test")
    assert response.status == 496
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == CSP
    assert b"This site needs a device certificate" in response.body
    assert b"<li>certgate test CA" in response.body  # the trusted CA's CN
    assert b"enrollment link" in response.body  # what to ask for, not "the README"
    assert b"README" not in response.body
    assert b"<script" not in response.body.lower()
    assert len(upstream.requests) == before


@pytest.mark.parametrize("version", VERSIONS)
def test_good_certificate_is_served(proxy, pki, upstream, version):  # type: ignore[no-untyped-def]
    with Connection(proxy.port, pki.context("alice", version), sni="page.test") as conn:
        response = conn.request("GET", "/echo", host="page.test")
    assert response.status == 200


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("who", ["untrusted", "expired"])
def test_bad_certificate_still_fails_in_the_handshake(proxy, pki, upstream, version, who):  # type: ignore[no-untyped-def]
    before = len(upstream.requests)
    with pytest.raises((ssl.SSLError, ConnectionError)), \
            Connection(proxy.port, pki.context(who, version), sni="page.test") as conn:
        # TLS 1.3: the server's verdict on the client's certificate arrives
        # after the client's handshake returns, on the first read.
        conn.request("GET", "/echo", host="page.test")
    assert len(upstream.requests) == before


def test_default_route_still_refuses_in_the_handshake(proxy, pki, upstream):  # type: ignore[no-untyped-def]
    with pytest.raises((ssl.SSLError, ConnectionError)), \
            Connection(proxy.port, pki.context(version="1.3"), sni="locked.test") as conn:
        conn.request("GET", "/echo", host="locked.test")


@pytest.mark.parametrize("host", ["locked.test", "LOCKED.TEST", "locked.test.:443"])
def test_page_connection_cannot_reach_a_require_name(proxy, pki, upstream, host):  # type: ignore[no-untyped-def]
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context(), sni="page.test") as conn:
        response = conn.request("GET", "/echo", host=host)
    assert response.status == 421
    assert len(upstream.requests) == before


def test_page_connection_meets_the_per_request_check_on_an_optional_name(proxy, pki, upstream):  # type: ignore[no-untyped-def]
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context(), sni="page.test") as conn:
        response = conn.request("GET", "/private/x", host="mixed.test")
    assert response.status == 403  # mixed.test has no page: the plain refusal
    assert b"client certificate required" in response.body
    assert len(upstream.requests) == before


@pytest.mark.parametrize("target", ["/echo", "//echo", "/%2e%2e/echo", "/x/../echo", "/;x/echo",
                                    "/ECHO", "/echo?x=1", "/%65cho"])
def test_path_spellings_never_reach_the_upstream(proxy, pki, upstream, target):  # type: ignore[no-untyped-def]
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context(), sni="page.test") as conn:
        response = conn.request("GET", target, host="page.test")
    assert response.status in (400, 496)
    assert len(upstream.requests) == before


def test_post_body_is_never_forwarded_and_the_connection_closes(proxy, pki, upstream):  # type: ignore[no-untyped-def]
    before = len(upstream.requests)
    with Connection(proxy.port, pki.context(), sni="page.test") as conn:
        response = conn.request("POST", "/echo", host="page.test", body=b"secret=1" * 1000)
        assert response.status == 496
        assert response.headers.get("connection") == "close"
        assert conn.read_raw_until_close() == b""
    assert len(upstream.requests) == before


def test_the_page_never_echoes_the_request(proxy, pki, upstream):  # type: ignore[no-untyped-def]
    marker = "zq7MARKERzq7"
    with Connection(proxy.port, pki.context(), sni="page.test") as conn:
        conn.send_raw(
            f"GET /{marker}/%3Cscript%3E?{marker}=<b> HTTP/1.1\r\nHost: page.test\r\n"
            f"User-Agent: <script>{marker}</script>\r\nReferer: {marker}\r\n"
            f"Cookie: {marker}\r\n\r\n".encode())
        raw = conn.read_raw_until_close()
    assert raw.startswith(b"HTTP/1.1 496 ")
    assert marker.encode() not in raw
    assert b"script" not in raw.lower().replace(b"no script", b"")


def test_hostile_host_gets_no_page(proxy, pki, upstream):  # type: ignore[no-untyped-def]
    with Connection(proxy.port, pki.context(), sni="page.test") as conn:
        conn.send_raw(b"GET / HTTP/1.1\r\nHost: <script>x</script>.test\r\n\r\n")
        raw = conn.read_raw_until_close()
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert b"<script>" not in raw


# -- sans-IO: the page's text and the handshake class -------------------------

def test_ca_names_are_escaped(tmp_path: Path) -> None:
    hostile = make_foreign_ca(tmp_path / "a", name='<img src=x onerror="alert(1)"> & Co')
    plain = make_foreign_ca(tmp_path / "b", name="Home CA")
    trust = hostile.path.read_text() + plain.path.read_text() + plain.path.read_text()
    body = certpage.page(trust).decode()
    assert "<li>&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; Co</li>" in body
    assert body.count("<li>Home CA</li>") == 1
    assert "<img" not in body


def test_page_moves_a_require_name_to_the_optional_class(tmp_path: Path) -> None:
    config = load_config_text(CONFIG.replace("{state}", str(tmp_path)) % {"up": 9},
                              "c.yaml", tmp_path)
    table = RouteTable(config.routes)
    assert table.handshake_mode("page.test") is ClientAuth.OPTIONAL
    assert table.handshake_mode("locked.test") is ClientAuth.REQUIRE
    assert table.handshake_mode("mixed.test") is ClientAuth.OPTIONAL
    # An IP-literal connection still gets the strictest class in use.
    assert table.handshake_mode(None) is ClientAuth.REQUIRE
