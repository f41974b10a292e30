"""A request body trickled a byte at a time is cut, an honest slow upload is not.

Issue #11 finding 8: a client sending one body byte every few seconds held
an upstream connection for as long as each byte came within the route's
read timeout (300 s by default): forever. ``timeouts.body_min_rate`` (bytes/s
averaged over ``timeouts.body_rate_window``) now answers such a client 408
and closes both connections. The values here are small so the test is
quick; the defaults (500 B/s over 60 s) are argued in config/schema.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
import time
from pathlib import Path

import pytest

from certgate.config.loader import load_config_text
from certgate.config.schema import Timeouts

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(up)d"
    client_auth: require
    timeouts: {read: 30s, body_min_rate: 200, body_rate_window: 1s}
    rules:
      - {path: /api/webhook/*, client_auth: "off"}
  - host: localhost
    path: /me
    upstream: whoami
    client_auth: "off"
    timeouts: {read: 30s, body_min_rate: 200, body_rate_window: 1s}
  - host: localhost
    path: /unlimited
    upstream: "http://127.0.0.1:%(up)d"
    client_auth: "off"
    timeouts: {read: 2s, body_min_rate: 0, body_rate_window: 1s}
"""


@pytest.fixture
def proxy(start_certgate, upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"up": upstream.port})


def _trickle(conn: Connection, head: bytes, pace: float, limit: float) -> tuple[bytes, float]:
    """Send ``head``, then one body byte every ``pace`` seconds until certgate
    answers or ``limit`` seconds pass. Returns (answer, seconds taken)."""
    conn.send_raw(head)
    conn.sock.settimeout(pace)
    started = time.monotonic()
    answer = b""
    while time.monotonic() - started < limit:
        try:
            chunk = conn.sock.recv(65536)
        except TimeoutError:
            with contextlib.suppress(OSError, ssl.SSLError):
                conn.sock.sendall(b"x")
            continue
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        answer += chunk
        if b"\r\n\r\n" in answer:
            break
    took = time.monotonic() - started
    conn.sock.settimeout(2)
    with contextlib.suppress(OSError, ssl.SSLError):
        for _ in range(100):  # the rest of a 408 (it says connection: close), then EOF
            chunk = conn.sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer, took


@pytest.mark.parametrize("path", ["/api/webhook/upload", "/me"])
def test_trickled_body_gets_408_within_a_window(proxy, pki, upstream, path):
    with Connection(proxy.port, pki.context(None)) as conn:
        answer, took = _trickle(conn, (f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
                                       "Content-Length: 100000\r\n\r\n").encode(), 0.3, 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"request body arrived slower than 200 bytes/s over 1s" in answer
    assert b"connection: close" in answer.lower()
    assert took < 3.5, took  # one 1 s window, plus slack for a loaded machine
    if path.startswith("/api"):
        # The upstream saw the head (bodies stream) and then a closed connection,
        # never a complete request body: the echo upstream never answered.
        assert any(p == path for p in upstream.paths())


def test_trickled_chunked_body_gets_408(proxy, pki):
    """Chunk-size lines carry no body bytes: trickling them does not count."""
    with Connection(proxy.port, pki.context(None)) as conn:
        answer, took = _trickle(conn, b"POST /api/webhook/c HTTP/1.1\r\nHost: localhost\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\n1\r\ny\r\n", 0.3, 10)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert took < 3.5, took


def test_slow_but_steady_upload_passes(proxy, pki):
    """2 KiB every 0.25 s (8 KiB/s, 40x the route's minimum) for 3 windows."""
    chunks = 12
    body = b"z" * 2048 * chunks
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(b"POST /api/webhook/steady HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body))
        for i in range(chunks):  # the pace is the scenario
            conn.send_raw(body[i * 2048:(i + 1) * 2048])
            time.sleep(0.25)
        response = conn.read_response()
    assert response.status == 200, response.body
    assert hashlib.sha256(body).hexdigest().encode() in response.body


def test_rate_check_can_be_disabled(proxy, pki):
    """body_min_rate: 0 leaves only the idle timeout (read: 2s here)."""
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(b"POST /unlimited/up HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Length: 8\r\n\r\n")
        for _ in range(8):  # 1 byte per 0.4 s: far below any rate, never 2 s idle
            conn.send_raw(b"x")
            time.sleep(0.4)
        response = conn.read_response()
    assert response.status == 200, response.body


# -- config ----------------------------------------------------------------------

def test_defaults_are_immich_safe():
    defaults = Timeouts()
    # 4 kbit/s: an order of magnitude below a phone's slowest usable uplink.
    assert defaults.body_min_rate == 500
    assert defaults.body_rate_window == 60.0


@pytest.mark.parametrize(("value", "expected"), [("1K", 1024), ("250", 250), ("0", 0),
                                                 ("off", 0)])
def test_body_min_rate_loads(tmp_path: Path, value, expected):
    config = load_config_text(
        "routes:\n  - host: a.example\n    upstream: http://127.0.0.1:1\n"
        f"    timeouts: {{body_min_rate: {value}, body_rate_window: 30s}}\n", "c.yaml", tmp_path)
    assert config.routes[0].timeouts.body_min_rate == expected
    assert config.routes[0].timeouts.body_rate_window == 30.0
