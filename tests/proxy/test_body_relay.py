"""Response bodies relayed from the upstream transport to the client's
(certgate.proxy.bodyrelay, issue #15): a Content-Length body however the
upstream splits and paces it, a body that runs to the upstream's close (to
HTTP/1.1 and HTTP/1.0 clients), and each way an upstream can break one.

Invariants: the client receives exactly the bytes the upstream framed, with
the framing its HTTP version reads; a body the upstream cut short or let
stall is a cut client connection (never a complete-looking response); an
upstream connection is pooled again only after a clean Content-Length body.

The upstream is a raw socket server running one script per connection, so
the tests control every byte and every pause.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from support.clients import Connection
from support.process import wait_until
from support.threaded_server import ThreadedServer

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(port)d"
    timeouts: {read: 1s}
"""

BODY = bytes(range(256)) * 40  # 10,240 bytes, every byte value

Script = Callable[[socket.socket, int], None]


class RawUpstream(ThreadedServer):
    """Accepts connections; runs ``script(sock, index)`` on each in a thread."""

    def __init__(self, script: Script) -> None:
        self.script = script
        super().__init__(lambda sock, index: lambda: self._run(sock, index), lifetime=120)

    def _run(self, sock: socket.socket, index: int) -> None:
        with sock, contextlib.suppress(OSError):
            sock.settimeout(10)
            self.script(sock, index)

    def stop(self, join: float = 15) -> None:
        super().stop(join)


def read_request(sock: socket.socket) -> bytes:
    """One request head (the tests send no request bodies)."""
    data = b""
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("certgate closed")
        data += chunk
    return data


@pytest.fixture
def relay(start_certgate) -> Iterator[Callable[[Script], tuple[object, RawUpstream]]]:  # type: ignore[no-untyped-def]
    started: list[RawUpstream] = []

    def go(script: Script, read: str = "1s") -> tuple[object, RawUpstream]:
        upstream = RawUpstream(script)
        started.append(upstream)
        config = (CONFIG % {"port": upstream.port}).replace("read: 1s", f"read: {read}")
        return start_certgate(config), upstream

    yield go
    for upstream in started:
        upstream.stop()


def read_all(conn: Connection, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Everything until the connection ends (or the timeout); True if it ended."""
    conn.sock.settimeout(0.2)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = conn.sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, ssl.SSLError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            assert data == b"\r\n"
            return out
        out += data[:size]
        assert data[size:size + 2] == b"\r\n"
        data = data[size + 2:]


# -- Content-Length bodies -------------------------------------------------------

@pytest.mark.parametrize("piece", [0, 1, 7, 1000, len(BODY)])
def test_a_content_length_body_arrives_whole_however_it_is_split(relay, pki, piece):
    """``piece`` 0: head and body in one send (the relay's fast path)."""

    def script(sock: socket.socket, index: int) -> None:
        for _ in range(2):
            read_request(sock)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
            if not piece:
                sock.sendall(head + BODY)
                continue
            sock.sendall(head)
            for at in range(0, len(BODY), piece):
                sock.sendall(BODY[at:at + piece])
                if piece < 1000 and at % (piece * 300) == 0:
                    time.sleep(0.01)  # pacing: let certgate see separate reads

    proxy, upstream = relay(script)
    with Connection(proxy.port, pki.context("alice")) as conn:
        first = conn.request("GET", "/a")
        second = conn.request("GET", "/b")
    assert first.status == second.status == 200
    assert first.body == second.body == BODY
    assert upstream.accepted == 1  # the upstream connection went back to the pool


def test_an_upstream_that_closes_short_of_its_length_cuts_the_client(relay, pki):
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
        sock.sendall(BODY[:5000])
        time.sleep(0.05)

    proxy, _ = relay(script)
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"GET /short HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data, ended = read_all(conn)
    head, _, body = data.partition(b"\r\n\r\n")
    assert ended
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == BODY[:5000]


def test_an_upstream_that_stalls_mid_body_is_cut_after_the_read_timeout(relay, pki):
    release = threading.Event()

    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
        sock.sendall(BODY[:100])
        release.wait(10)

    proxy, _ = relay(script)
    try:
        with Connection(proxy.port, pki.context("alice")) as conn:
            conn.send_raw(b"GET /stall HTTP/1.1\r\nHost: localhost\r\n\r\n")
            started = time.monotonic()
            data, ended = read_all(conn, timeout=8)
            elapsed = time.monotonic() - started
    finally:
        release.set()
    assert ended
    assert data.partition(b"\r\n\r\n")[2] == BODY[:100]
    assert 0.9 <= elapsed <= 4.0, elapsed


# -- bodies that run to the close ------------------------------------------------

def close_delimited(sock: socket.socket, index: int) -> None:
    read_request(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
    for at in range(0, len(BODY), 3000):
        sock.sendall(BODY[at:at + 3000])
        time.sleep(0.01)


def test_a_body_to_the_close_is_chunked_for_an_http11_client(relay, pki):
    proxy, upstream = relay(close_delimited)
    with Connection(proxy.port, pki.context("alice")) as conn:
        response = conn.request("GET", "/a")
        assert response.status == 200
        assert response.body == BODY
        again = conn.request("GET", "/b")  # the client connection lives on
    assert again.body == BODY
    assert upstream.accepted == 2  # never pooled: the close ended each body


def test_a_body_to_the_close_is_raw_then_closed_for_an_http10_client(relay, pki):
    proxy, _ = relay(close_delimited)
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"GET /a HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data, ended = read_all(conn)
    head, _, body = data.partition(b"\r\n\r\n")
    assert ended
    assert b"\r\nconnection: close" in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert body == BODY


def test_the_raw_response_bytes_of_a_body_to_the_close(relay, pki):
    proxy, _ = relay(close_delimited)
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data, ended = read_all(conn)
    head, _, body = data.partition(b"\r\n\r\n")
    assert ended
    assert head.endswith(b"\r\nTransfer-Encoding: chunked\r\nConnection: close")
    assert dechunk(body) == BODY


def test_a_slow_client_holds_the_upstream_back(relay, pki):
    """Backpressure: while the client reads nothing, certgate stops reading
    the upstream, so the upstream's sends block long before 64 MiB."""
    size = 64 << 20
    sent = [0]
    done = threading.Event()

    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        sock.settimeout(30)
        block = b"x" * 65536
        with contextlib.suppress(OSError):
            while sent[0] < size:
                sent[0] += sock.send(block[:size - sent[0]])
        done.set()

    # The read timeout is also how long the client may take nothing (below):
    # longer than this test's pause.
    proxy, _ = relay(script, read="30s")
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        wait_until(lambda: sent[0] > 1 << 20, 10, "the upstream to start sending")
        settled = sent[0]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the upstream's sends stop moving
            before = sent[0]
            done.wait(0.5)
            if sent[0] == before:
                break
            settled = sent[0]
        assert not done.is_set()
        assert settled < size // 2, settled
        received = 0
        conn.sock.settimeout(10)
        while received < size:  # now read it all: the relay resumes
            chunk = conn.sock.recv(1 << 20)
            assert chunk
            received += len(chunk)
    assert done.wait(10)


def test_a_client_that_stops_reading_is_cut_after_the_read_timeout(relay, pki):
    """nginx's send_timeout: a client that takes nothing of a download while
    certgate holds the upstream back for it is cut after the read timeout,
    and the upstream connection goes too (it is not pinned forever)."""
    size = 64 << 20
    upstream_done = threading.Event()

    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        sock.settimeout(20)
        block = b"x" * 65536
        sent = 0
        with contextlib.suppress(OSError):
            while sent < size:
                sent += sock.send(block)
        upstream_done.set()  # sent all, or certgate closed the connection

    proxy, _ = relay(script)
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        started = time.monotonic()
        # The client reads nothing; certgate must give up on it by itself.
        assert upstream_done.wait(15), "the upstream connection was left pinned"
        elapsed = time.monotonic() - started
        data, ended = read_all(conn, timeout=10)
    assert ended
    assert len(data) < size  # cut, not completed
    assert 0.9 <= elapsed <= 8.0, elapsed
