"""Request heads and bodies h11 accepts but an upstream must never see.

Issue #11 finding 8, each reachable without a certificate (a ``client_auth:
off`` path), each over real TLS:

* ``Connection`` naming Host, Content-Length, Transfer-Encoding or one of
  certgate's own headers: 400 with a one-line reason; before, ``Connection:
  host`` crashed admission (no answer, a traceback in the log) and
  ``Connection: content-length`` sent the POST upstream without its body;
* a malformed chunked body: 400, counted as a client error, not a 502 that
  fires the upstream-error alert;
* control characters in header values, ``Transfer-Encoding`` in HTTP/1.0,
  ``HTTP/2.0`` and ``HTTP/1.2`` request lines: refused, never forwarded;
* a 400 body never echoes the raw request line (h11's repr).

Each case asserts what the upstream received against what was judged.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid

import pytest

from support.clients import Connection
from support.process import free_port, wait_until

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:%(port)d"]
metrics: {listen: "127.0.0.1:0"}
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(up)d"
    client_auth: require
    rules:
      - {path: /api/webhook/*, client_auth: "off"}
"""


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"up": upstream.port, "port": free_port()})


def _exchange(proxy, pki, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """Send raw bytes anonymously; return everything certgate answers until it closes."""
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(data)
        return conn.read_raw_until_close()


def _reached(upstream, marker: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [p for p in upstream.paths() if marker in p]


def _one_line_reason(raw: bytes) -> bytes:
    """The body of certgate's own error response: exactly one line."""
    body = raw.partition(b"\r\n\r\n")[2]
    assert body.count(b"\n") == 1, body
    assert body.endswith(b"\n"), body
    return body


# -- Connection naming what it may not ---------------------------------------------

@pytest.mark.parametrize("listed", ["host", "Host", "content-length", "transfer-encoding",
                                    "x-client-verify", "X-Forwarded-For", "x-forwarded-host",
                                    "x-forwarded-client-cert", "forwarded"])
def test_connection_naming_a_protected_header_is_400(proxy, pki, upstream, listed):
    marker = uuid.uuid4().hex
    raw = _exchange(proxy, pki, (
        f"POST /api/webhook/{marker} HTTP/1.1\r\nHost: localhost\r\n"
        f"Connection: keep-alive, {listed}\r\nContent-Length: 5\r\n\r\nhello").encode())
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:300]
    assert b"Connection header names " + listed.lower().encode() in _one_line_reason(raw)
    assert _reached(upstream, marker) == []
    assert "Traceback" not in proxy.log_text()
    assert "internal error" not in proxy.log_text()


def test_connection_content_length_never_drops_the_body(proxy, pki, upstream):
    """Before: the upstream got the POST without Content-Length and without
    its body. Now nothing is forwarded, or the body arrives whole."""
    marker = uuid.uuid4().hex
    raw = _exchange(proxy, pki, (
        f"POST /api/webhook/{marker} HTTP/1.1\r\nHost: localhost\r\n"
        "Connection: content-length\r\nContent-Length: 11\r\n\r\nhello world").encode())
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:300]
    assert _reached(upstream, marker) == []


# -- a malformed chunked body is the client's fault -------------------------------------

def _metrics_text(proxy) -> str:  # type: ignore[no-untyped-def]
    found: list[int] = []

    def seen() -> bool:
        match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", proxy.log_text())
        if match:
            found.append(int(match.group(1)))
        return bool(found)

    wait_until(seen, 10, "the metrics listener to start")
    with urllib.request.urlopen(f"http://127.0.0.1:{found[0]}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _access_lines(proxy, marker: str) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    lines = []
    for line in proxy.stdout_lines:
        if marker in line:
            lines.append(json.loads(line))
    return lines


@pytest.mark.parametrize("body", [
    b"5\r\nhello\r\nZZ\r\nbad\r\n0\r\n\r\n",  # not a hex chunk size
    b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the chunk data
    b"-1\r\nx\r\n0\r\n\r\n",
], ids=["bad-size", "missing-crlf", "negative-size"])
def test_malformed_chunked_body_is_400_and_a_client_error(proxy, pki, upstream, body):
    marker = uuid.uuid4().hex
    raw = _exchange(proxy, pki, (
        f"POST /api/webhook/{marker} HTTP/1.1\r\nHost: localhost\r\n"
        "Transfer-Encoding: chunked\r\n\r\n").encode() + body)
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:300]
    assert b"malformed request body" in _one_line_reason(raw)
    # The upstream may have seen the head (bodies stream), but was cut before
    # an answer: the one response the client got is certgate's 400.
    wait_until(lambda: _access_lines(proxy, marker), 5, "the access-log line")
    assert [line["status"] for line in _access_lines(proxy, marker)] == [400]
    text = _metrics_text(proxy)
    assert "certgate_upstream_errors_total{" not in text, text
    assert 'certgate_requests_total{code_class="4xx"' in text


# -- strict heads --------------------------------------------------------------------

@pytest.mark.parametrize("value", [b"a\x01b", b"a\x7fb", b"a\x1bb", b"\x0bx", b"x\x0c"],
                         ids=["0x01", "0x7f", "esc", "vt", "ff"])
def test_control_characters_in_header_values_are_400(proxy, pki, upstream, value):
    marker = uuid.uuid4().hex
    raw = _exchange(proxy, pki, f"GET /api/webhook/{marker} HTTP/1.1\r\nHost: localhost\r\n"
                    .encode() + b"X-Note: " + value + b"\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:300]
    reason = _one_line_reason(raw).lower()
    # h11 itself refuses VT and FF (whitespace to its parser); certgate the rest.
    assert b"control character in the value of header x-note" in reason \
        or b"malformed header line" in reason, reason
    assert _reached(upstream, marker) == []


def test_tab_and_obs_text_in_header_values_are_forwarded(proxy, pki, upstream):
    """HTAB and bytes >= 0x80 are legal field content (RFC 9110 s.5.5)."""
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(b"GET /api/webhook/tab HTTP/1.1\r\nHost: localhost\r\n"
                      b"X-Note: a\tb \xc3\xa9\r\n\r\n")
        response = conn.read_response()
    assert response.status == 200
    seen = dict((n.lower(), v) for n, v in json.loads(response.body)["headers"])
    assert seen["x-note"] == "a\tb \xc3\xa9"


def test_http10_with_transfer_encoding_is_400(proxy, pki, upstream):
    marker = uuid.uuid4().hex
    raw = _exchange(proxy, pki, (
        f"POST /api/webhook/{marker} HTTP/1.0\r\nHost: localhost\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode())
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:300]
    assert b"Transfer-Encoding in an HTTP/1.0 request" in _one_line_reason(raw)
    assert _reached(upstream, marker) == []


@pytest.mark.parametrize("version", [b"2.0", b"1.2", b"1.9", b"3.0", b"0.9"])
def test_other_http_versions_are_never_forwarded_as_11(proxy, pki, upstream, version):
    marker = uuid.uuid4().hex
    raw = _exchange(proxy, pki, f"GET /api/webhook/{marker} HTTP/".encode() + version +
                    b"\r\nHost: localhost\r\n\r\n")
    assert raw.startswith((b"HTTP/1.1 505 ", b"HTTP/1.1 400 ")), raw[:300]
    _one_line_reason(raw)
    assert _reached(upstream, marker) == []


def test_http10_without_body_is_still_served(proxy, pki, upstream):
    raw = _exchange(proxy, pki, b"GET /api/webhook/old HTTP/1.0\r\nHost: localhost\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:300]


# -- 400 bodies are fixed text ---------------------------------------------------------

@pytest.mark.parametrize("head", [
    b"GET /api/webhook/MARK HTTP/1.1 trailing-junk\r\nHost: localhost\r\n\r\n",
    b"GET /api/webhook/MARK\x00 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /api/webhook/x HTTP/1.1\r\nHost: localhost\r\nBad Header MARK: v\r\n\r\n",
    b"GET /api/webhook/x HTTP/1.1\r\n MARK-continuation\r\nHost: localhost\r\n\r\n",
], ids=["junk-after-version", "nul", "space-in-name", "leading-continuation"])
def test_400_bodies_do_not_echo_the_request(proxy, pki, upstream, head):
    marker = uuid.uuid4().hex
    raw = _exchange(proxy, pki, head.replace(b"MARK", marker.encode()))
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:300]
    reason = _one_line_reason(raw)
    assert marker.encode() not in raw
    assert b"bytearray" not in reason
    assert b"b'" not in reason
    wait_until(lambda: [line for line in proxy.stdout_lines if '"status": 400' in line
                        or '"status":400' in line], 5, "the access-log line")
    assert marker not in "".join(proxy.stdout_lines) + proxy.log_text()
    assert _reached(upstream, marker) == []
