"""Idle keep-alive connections: no task between requests, same behaviour.

Between requests a connection has no serving task (issue #15, idle memory):
the next bytes start one, ``limits.keepalive_timeout`` closes the
connection, and a client's close ends it. These tests pin the behaviour the
parked coroutine had: requests after a pause, pipelined requests, a head
started after a pause and left unfinished (408), a stray blank line (400),
and the idle timeout itself, which before
closed the connection by way of an "internal error" traceback in the log.
"""

from __future__ import annotations

import json
import time

from support.clients import Connection

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
limits: {keepalive_timeout: 1s, header_timeout: 1s}
routes:
  - {host: localhost, upstream: whoami, client_auth: optional}
"""

REQUEST = b"GET /%d HTTP/1.1\r\nhost: localhost\r\n\r\n"


def test_requests_after_a_pause_are_served(start_certgate, pki):
    proxy = start_certgate(CONFIG)
    with Connection(proxy.port, pki.context("alice"), timeout=5) as conn:
        for n in range(3):
            assert json.loads(conn.request("GET", f"/{n}").body)["path"] == f"/{n}"
            time.sleep(0.3)  # idle, well inside keepalive_timeout
        assert conn.request("HEAD", "/last").status == 200


def read_bodies(conn: Connection, count: int) -> list[bytes]:
    """``count`` Content-Length framed responses read off the raw socket (the
    test client's h11 cannot follow requests it did not send itself)."""
    data = bytearray()
    bodies: list[bytes] = []
    for _ in range(100):
        while len(bodies) < count:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(data[:end]).lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            if len(data) < end + 4 + length:
                break
            bodies.append(bytes(data[end + 4:end + 4 + length]))
            del data[:end + 4 + length]
        if len(bodies) == count:
            return bodies
        chunk = conn.sock.recv(65536)
        assert chunk, "closed before every response came"
        data += chunk
    raise AssertionError("too many reads")


def test_pipelined_requests_are_all_answered(start_certgate, pki):
    proxy = start_certgate(CONFIG)
    with Connection(proxy.port, pki.context("alice"), timeout=5) as conn:
        conn.request("GET", "/first")
        conn.send_raw(REQUEST % 1 + REQUEST % 2 + REQUEST % 3)
        paths = [json.loads(body)["path"] for body in read_bodies(conn, 3)]
    assert paths == ["/1", "/2", "/3"]


def test_a_head_split_across_the_idle_wakeup_is_parsed(start_certgate, pki):
    proxy = start_certgate(CONFIG)
    with Connection(proxy.port, pki.context("alice"), timeout=5) as conn:
        conn.request("GET", "/first")
        conn.send_raw(b"GET /sp")
        time.sleep(0.2)
        conn.send_raw(b"lit HTTP/1.1\r\nhost: localhost\r\n\r\n")
        assert json.loads(conn.read_response().body)["path"] == "/split"


def test_the_idle_connection_is_closed_after_keepalive_timeout(start_certgate, pki):
    proxy = start_certgate(CONFIG)
    with Connection(proxy.port, pki.context("alice"), timeout=10) as conn:
        conn.request("GET", "/")
        idle_since = time.monotonic()
        assert conn.read_raw_until_close() == b""
        waited = time.monotonic() - idle_since
    assert 0.8 <= waited < 8, waited
    assert "internal error" not in proxy.log_text()


def test_an_unfinished_head_after_a_pause_gets_408(start_certgate, pki):
    proxy = start_certgate(CONFIG)
    with Connection(proxy.port, pki.context("alice"), timeout=10) as conn:
        conn.request("GET", "/")
        time.sleep(0.2)
        conn.send_raw(b"GET /never-finished HTTP/1.1\r\nhost: loc")
        answer = conn.read_raw_until_close()
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_blank_line_after_a_pause_is_a_malformed_head(start_certgate, pki):
    """As before tasks ended between requests: h11 refuses the blank line
    (400, then close), whether a task waited for it or it started one."""
    proxy = start_certgate(CONFIG)
    with Connection(proxy.port, pki.context("alice"), timeout=10) as conn:
        conn.request("GET", "/")
        time.sleep(0.2)
        conn.send_raw(b"\r\n")
        assert conn.read_raw_until_close().startswith(b"HTTP/1.1 400 ")
