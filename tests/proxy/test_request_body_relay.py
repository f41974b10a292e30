"""Content-Length request bodies relayed past h11 (certgate.proxy.requestbody,
issue #15), attacked where the shortcut could go wrong.

The body's framing is now a count kept outside h11, so the tests aim at the
count's edges: the bytes right after the body are the client's next request
and must be parsed and judged as one (never forwarded as body, never
skipped); bytes inside the body that look like a request must stay body;
a connection whose body did not end cleanly must never be reused; the
keep-alive terms of the request (``Connection: close``, HTTP/1.0) still
hold. Bodies arrive in pieces after the head, which is what sends them down
the raw path (a body that arrives with its head is still h11's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.clients import Connection, Response
from support.process import wait_until
from support.threaded_server import ThreadedServer
from support.upstream import Upstream

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(port)d"
    timeouts: {read: 2s}
    rules:
      - {path: /admin/*, allow: [role:nobody]}
"""


def head(path: str, length: int, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return (b"POST %b HTTP/%b\r\nHost: localhost\r\nContent-Length: %d\r\n%b\r\n"
            % (path.encode(), version, length, extra))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def send_in_pieces(conn: Connection, data: bytes, pieces: int) -> None:
    """Separate writes with a short pause, so certgate reads them apart."""
    step = max(1, len(data) // pieces)
    for at in range(0, len(data), step):
        conn.send_raw(data[at:at + step])
        time.sleep(0.01)


def next_response(conn: Connection) -> Response:
    """The next response to raw-sent requests: the client's h11 never sent
    them, so each response is read by a fresh h11 state (keeping what was
    already received past the last one)."""
    leftover, _ = conn.h11.trailing_data
    conn.h11 = h11.Connection(h11.CLIENT)
    if leftover:
        conn.h11.receive_data(leftover)
    return conn.read_response()


def get(conn: Connection, path: str) -> Response:
    conn.h11 = h11.Connection(h11.CLIENT)
    return conn.request("GET", path)


@pytest.fixture
def proxy(start_certgate, upstream: Upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"port": upstream.port})


def test_an_upload_in_pieces_arrives_whole_and_the_connection_is_reused(proxy, pki, upstream):
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    with Connection(proxy.port, pki.context("alice")) as conn:
        for round_ in range(3):
            conn.send_raw(head(f"/echo/{round_}", len(body)))
            send_in_pieces(conn, body, 16)
            answer = next_response(conn)
            assert answer.status == 200, answer.body
            seen = json.loads(answer.body)
            assert (seen["sha256"], seen["size"]) == (sha(body), len(body))
        after = get(conn, "/echo/after")
    assert after.status == 200
    assert upstream.paths()[-4:] == ["/echo/0", "/echo/1", "/echo/2", "/echo/after"]


def test_the_request_after_the_body_is_parsed_and_judged_as_a_request(proxy, pki, upstream):
    """The body's last bytes and a pipelined request in one write: the
    request is a request (to a route that refuses it), not body."""
    body = b"b" * 70_000
    seen_before = len(upstream.paths())  # the upstream is shared with other tests
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(head("/echo/first", len(body)) + body[:1000])
        time.sleep(0.05)
        conn.send_raw(body[1000:] + b"GET /admin/x HTTP/1.1\r\nHost: localhost\r\n\r\n"
                      b"GET /echo/third HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = next_response(conn)
        second = next_response(conn)
        third = next_response(conn)
    assert first.status == 200
    assert json.loads(first.body)["size"] == len(body)
    assert second.status == 403
    assert third.status == 200
    assert upstream.paths()[seen_before:] == ["/echo/first", "/echo/third"]


def test_a_request_inside_the_body_stays_body(proxy, pki, upstream):
    smuggled = b"GET /admin/x HTTP/1.1\r\nHost: localhost\r\n\r\n"
    body = b"x" * 5000 + smuggled + b"y" * 5000 + smuggled
    seen_before = len(upstream.paths())  # the upstream is shared with other tests
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(head("/echo/carrier", len(body)))
        send_in_pieces(conn, body, 7)
        answer = next_response(conn)
        after = get(conn, "/echo/after")
    assert answer.status == after.status == 200
    assert json.loads(answer.body)["sha256"] == sha(body)
    assert upstream.paths()[seen_before:] == ["/echo/carrier", "/echo/after"]


def test_malformed_bytes_after_the_body_are_a_400_not_body(proxy, pki, upstream):
    body = b"z" * 30_000
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(head("/echo/ok", len(body)))
        send_in_pieces(conn, body[:-10], 3)
        conn.send_raw(body[-10:] + b"GET /echo/x HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        first = next_response(conn)
        second = next_response(conn)
        rest = conn.read_raw_until_close()
    assert first.status == 200
    assert json.loads(first.body)["size"] == len(body)
    assert second.status == 400
    assert rest == b""  # and closed
    assert "/echo/x" not in upstream.paths()


@pytest.mark.parametrize(("extra", "version"),
                         [(b"Connection: close\r\n", b"1.1"), (b"", b"1.0")])
def test_a_request_that_asks_to_close_still_closes(proxy, pki, upstream, extra, version):
    body = b"c" * 50_000
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(head("/echo/closing", len(body), extra, version))
        send_in_pieces(conn, body, 5)
        conn.send_raw(b"GET /echo/never HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = conn.read_raw_until_close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.count(b"HTTP/1.1 ") == 1
    assert "/echo/never" not in upstream.paths()


def test_an_upstream_that_answers_before_the_body_ends_ends_the_connection(
        start_certgate, pki):
    """The upstream answers 413 (keep-alive) without reading the body; the
    rest of the body, which holds requests, must never be read as the next
    request."""
    answered = threading.Event()

    def early(sock: socket.socket, index: int) -> Callable[[], None]:
        def run() -> None:
            with sock, contextlib.suppress(OSError):
                sock.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                sock.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                answered.set()
                while sock.recv(65536):  # whatever certgate still sends, until it closes
                    pass
        return run

    server = ThreadedServer(early, lifetime=60)
    try:
        proxy = start_certgate(CONFIG % {"port": server.port})
        smuggled = b"GET /echo/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
        with Connection(proxy.port, pki.context("alice")) as conn:
            conn.send_raw(head("/early", 200_000))
            conn.send_raw(b"a" * 100)
            answer = next_response(conn)
            assert answer.status == 413
            tail = b""
            with contextlib.suppress(OSError):
                conn.send_raw(smuggled * 100)
                tail = conn.read_raw_until_close()
        assert answered.is_set()
        assert b"HTTP/1.1" not in tail
        assert server.accepted == 1
    finally:
        server.stop()


def test_a_client_that_stalls_mid_body_gets_408_and_the_upstream_is_aborted(
        proxy, pki, upstream):
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(head("/upload/stall", 100_000))
        conn.send_raw(b"s" * 20_000)
        started = time.monotonic()
        answer = next_response(conn)  # the route's read timeout is 2 s
    assert answer.status == 408, answer.body
    assert b"request body not received in time" in answer.body
    assert time.monotonic() - started < 8


SIZES = st.sampled_from([1, 2, 100, 16_383, 16_384, 65_536, 70_000, 200_000])


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.one_of(st.none(), SIZES), min_size=1, max_size=6),
       data=st.data())
def test_any_split_of_uploads_and_pipelined_requests(proxy, pki, upstream, requests, data):
    """Uploads (Content-Length bodies of record-edge sizes) and GETs written
    as one stream cut at arbitrary points: every request is answered in
    order with its own body, and the upstream sees exactly these requests.
    One certgate serves every example."""
    stream = b""
    expected: list[tuple[str, str | None]] = []
    tag = uuid.uuid4().hex[:8]
    for index, size in enumerate(requests):
        path = f"/echo/{tag}-{index}"
        if size is None:
            stream += b"GET %b HTTP/1.1\r\nHost: localhost\r\n\r\n" % path.encode()
            expected.append((path, None))
        else:
            body = bytes([index]) * size
            stream += head(path, size) + body
            expected.append((path, sha(body)))
    cuts = data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=8, unique=True)
                     if len(stream) > 1 else st.just([]))
    with Connection(proxy.port, pki.context("alice")) as conn:
        previous = 0
        for cut in [*sorted(cuts), len(stream)]:
            conn.send_raw(stream[previous:cut])
            previous = cut
            time.sleep(0.002)  # separate reads, not a wait for anything
        for path, digest in expected:
            answer = next_response(conn)
            assert answer.status == 200, (path, answer.body[:200])
            seen = json.loads(answer.body)
            assert seen["path"] == path
            if digest is not None:
                assert seen["sha256"] == digest
    wait_until(lambda: len([p for p in upstream.paths() if tag in p]) >= len(expected), 5,
               "all requests upstream")
    assert [p for p in upstream.paths() if tag in p] == [path for path, _ in expected]
