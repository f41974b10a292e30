"""Acceptance 6, 8 and 10: hostile clients and broken upstreams.

* slowloris (6): a head trickled a byte at a time is cut at
  ``limits.header_timeout`` while other clients are served meanwhile;
* smuggling (10): ambiguous framing is answered 400 and the connection
  closed, so a request pipelined behind it never reaches an upstream;
* header size and count limits -> 431; route ``max_body`` -> 413;
* upstream failures (8): refused -> 502 at once, silent -> 504 after
  ``timeouts.read``; a pooled connection the upstream closed is not fatal to
  a GET and a POST is never sent twice;
* a client that vanishes mid-upload takes the upstream request down with it.

Some cases need an upstream that misbehaves on purpose: :class:`Scripted`
is a small threaded HTTP/1.1 server whose per-connection behaviour the test
chooses, and which records what each connection saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import select
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import h11
import pytest

from support.clients import Connection
from support.process import wait_until
from support.threaded_server import ThreadedServer

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
limits: {header_timeout: 2s, max_header_bytes: 4K, max_header_count: 20}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(up)d"
  - host: localhost
    path: /slow
    upstream: "http://127.0.0.1:%(up)d"
    timeouts: {read: 1s}
  - host: localhost
    path: /upload
    upstream: "http://127.0.0.1:%(up)d"
    timeouts: {read: 1s}
  - host: localhost
    path: /dead
    upstream: "http://127.0.0.1:%(dead)d"
  - host: localhost
    path: /scripted
    upstream: "http://127.0.0.1:%(scripted)d"
    max_body: 1K
  - host: localhost
    path: /open
    upstream: "http://127.0.0.1:%(scripted)d"
  - host: localhost
    path: /stall
    upstream: "http://127.0.0.1:%(scripted)d"
    timeouts: {read: 1s}
"""

HEADER_TIMEOUT = 2.0


# -- a misbehaving upstream ------------------------------------------------------

class StopServing(Exception):
    """The test is over or the peer went away: end this connection's script."""


@dataclass
class UpConn:
    """What one upstream connection saw."""

    index: int
    requests: list[str] = field(default_factory=list)  # "METHOD target"
    body_bytes: int = 0
    bodies_complete: int = 0
    peer_closed_at: float | None = None  # certgate closed or reset it
    we_closed_at: float | None = None  # the script closed it


class Peer:
    """One accepted upstream socket, spoken to through h11."""

    def __init__(self, sock: socket.socket, rec: UpConn, stopping: threading.Event) -> None:
        self.sock = sock
        self.rec = rec
        self.stopping = stopping
        self.h11 = h11.Connection(h11.SERVER)

    def _recv(self, deadline: float) -> bytes:
        # 50 ms blocking reads so a stopping server is noticed; bounded by deadline.
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data and self.rec.peer_closed_at is None:
                self.rec.peer_closed_at = time.monotonic()
            return data
        raise StopServing

    def next_event(self, timeout: float = 30.0) -> object:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                raise StopServing from None  # EOF in the middle of a body
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(self._recv(deadline))

    def read_head(self) -> h11.Request:
        event = self.next_event()
        if not isinstance(event, h11.Request):
            raise StopServing
        self.rec.requests.append(f"{event.method.decode()} {event.target.decode()}")
        return event

    def read_body(self) -> None:
        while True:
            event = self.next_event()
            if isinstance(event, h11.Data):
                self.rec.body_bytes += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.rec.bodies_complete += 1
                return
            else:
                raise StopServing

    def respond(self, body: bytes) -> None:
        data = self.h11.send(h11.Response(status_code=200, headers=[
            ("content-length", str(len(body)))]))
        data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(h11.EndOfMessage())
        self.sock.sendall(data)
        self.h11.start_next_cycle()


Script = Callable[[Peer], None]


class Scripted(ThreadedServer):
    """A threaded upstream on 127.0.0.1 running ``script`` for every connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.conns: list[UpConn] = []
        super().__init__(self._connect_one)

    def _connect_one(self, sock: socket.socket, index: int) -> Callable[[], None]:
        rec = UpConn(index)
        self.conns.append(rec)
        return lambda: self._run(sock, rec)

    def _run(self, sock: socket.socket, rec: UpConn) -> None:
        with sock, contextlib.suppress(StopServing, OSError):
            sock.settimeout(0.05)
            self.script(Peer(sock, rec, self.stopping))
        # After the close, so a test waiting on this sees a closed socket.
        if rec.peer_closed_at is None:
            rec.we_closed_at = time.monotonic()

    def seen(self, request: str) -> int:
        return sum(c.requests.count(request) for c in self.conns)

    def stop(self, join: float = 5) -> None:
        super().stop(join)
        assert not any(t.is_alive() for t in [self.accepter, *self.threads])


def answer_then_close_when_idle(peer: Peer) -> None:
    """Answer one request, then close the idle connection a moment later."""
    peer.read_head()
    peer.read_body()
    peer.respond(f"conn {peer.rec.index}".encode())
    peer.stopping.wait(0.2)  # pacing: the connection sits idle in certgate's pool


def close_on_second_request(peer: Peer) -> None:
    """Answer the first request; take the second one's head and hang up,
    like a server whose keep-alive timer fired just as the request came."""
    peer.read_head()
    peer.read_body()
    peer.respond(f"conn {peer.rec.index}".encode())
    peer.read_head()


def overrun_content_length(peer: Peer) -> None:
    """On the first connection, announce 10 bytes and send 100, keeping the
    connection open; answer every other request properly."""
    if peer.rec.index == 0:
        peer.read_head()
        peer.read_body()
        peer.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"L" * 100)
    for _ in range(10):
        peer.h11 = h11.Connection(h11.SERVER)
        peer.read_head()
        peer.read_body()
        peer.respond(f"conn {peer.rec.index}".encode())


def take_head_never_body(peer: Peer) -> None:
    """Read a request head, then never read its body (a wedged upstream)."""
    peer.read_head()
    peer.stopping.wait(30)


def count_body(peer: Peer) -> None:
    """Read requests, counting body bytes; answer each complete one."""
    for _ in range(100):
        peer.read_head()
        peer.read_body()
        peer.respond(b"got it")


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], Scripted]]:
    started: list[Scripted] = []

    def start(script: Script) -> Scripted:
        server = Scripted(script)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def dead_port() -> int:
    """A port nothing listens on: bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def launch(start_certgate, upstream, scripted, dead_port):  # type: ignore[no-untyped-def]
    """Start certgate with the scripted upstream running ``script``."""

    def go(script: Script = count_body) -> tuple[object, Scripted]:
        server = scripted(script)
        proxy = start_certgate(CONFIG % {"up": upstream.port, "dead": dead_port,
                                         "scripted": server.port})
        return proxy, server

    return go


# -- acceptance 6: slowloris -----------------------------------------------------

def test_slowloris_is_cut_while_others_are_served(launch, pki):
    proxy, _ = launch()
    started = time.monotonic()
    outcome: bytes | str | None = None
    served: tuple[int, float] | None = None
    with Connection(proxy.port, pki.context("alice")) as slow:
        slow.send_raw(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        slow.sock.settimeout(0.3)  # the pace: one byte per 0.3 s read timeout
        for i in range(int((HEADER_TIMEOUT + 3) / 0.3)):
            try:
                slow.sock.sendall(b"a")
                data = slow.sock.recv(4096)
            except TimeoutError:
                data = None  # nothing from certgate yet: send the next byte
            except (OSError, ssl.SSLError) as exc:
                outcome = type(exc).__name__
                break
            if data is not None:
                outcome = data
                break
            if i == 2:  # meanwhile, on another connection, a normal request
                with Connection(proxy.port, pki.context("alice")) as other:
                    served = (other.request("GET", "/echo").status, time.monotonic())
        cut_at = time.monotonic()
    assert outcome is not None, "the slow client was never cut off"
    if isinstance(outcome, bytes):
        assert outcome == b"" or outcome.startswith(b"HTTP/1.1 408"), outcome
    elapsed = cut_at - started
    assert HEADER_TIMEOUT - 0.1 <= elapsed <= HEADER_TIMEOUT + 1.5, elapsed
    assert served is not None
    assert served[0] == 200
    assert served[1] < cut_at


# -- acceptance 10: request smuggling --------------------------------------------

@pytest.mark.parametrize(("framing", "status"), [
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
    (b"Content-Length: 5, 6\r\n\r\nhello", 400),
    # RFC 9112 s.6.1: a transfer coding the server does not understand -> 501.
    (b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
], ids=["cl-te", "te-cl", "two-cl", "cl-list", "te-unknown"])
def test_ambiguous_framing_is_refused_and_nothing_is_smuggled(launch, pki, upstream, framing,
                                                              status):
    proxy, _ = launch()
    marker = uuid.uuid4().hex
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"POST /echo?front-" + marker.encode() + b" HTTP/1.1\r\n"
                      b"Host: localhost\r\n" + framing +
                      b"GET /echo?smuggled-" + marker.encode() + b" HTTP/1.1\r\n"
                      b"Host: localhost\r\n\r\n")
        raw = conn.read_raw_until_close()  # blocks until EOF (socket timeout 10 s)
    assert raw.startswith(b"HTTP/1.1 %d " % status), raw[:200]
    assert b"\r\nconnection: close\r\n" in raw.lower()
    assert raw.count(b"HTTP/1.1 ") == 1, raw
    assert not [p for p in upstream.paths() if marker in p]


# -- header limits ---------------------------------------------------------------

def test_header_count_over_limit_is_431(launch, pki, upstream):
    proxy, _ = launch()
    marker = uuid.uuid4().hex
    with Connection(proxy.port, pki.context("alice")) as conn:
        response = conn.request("GET", f"/echo?{marker}",
                                headers=[(f"x-field-{i}", "v") for i in range(25)])
    assert response.status == 431
    assert not [p for p in upstream.paths() if marker in p]


def test_header_count_at_limit_is_served(launch, pki):
    proxy, _ = launch()
    with Connection(proxy.port, pki.context("alice")) as conn:
        # Host + 19 = max_header_count (20).
        response = conn.request("GET", "/echo", headers=[(f"x-f-{i}", "v") for i in range(19)])
    assert response.status == 200


def test_header_bytes_over_limit_is_431_when_trickled(launch, pki, upstream):
    """An incomplete head growing past max_header_bytes (4K) is refused."""
    proxy, _ = launch()
    marker = uuid.uuid4().hex
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(f"GET /echo?{marker} HTTP/1.1\r\nHost: localhost\r\nX-Big: ".encode())
        # 1 KiB per TLS record; the fourth takes the head past 4096 bytes. No
        # more is sent, so certgate's close cannot turn into a reset that
        # would hide its answer.
        for _ in range(4):
            conn.send_raw(b"b" * 1024)
        raw = conn.read_raw_until_close()
    assert raw.startswith(b"HTTP/1.1 431 "), raw[:200]
    assert not [p for p in upstream.paths() if marker in p]


def test_header_bytes_over_limit_is_431_in_one_write(launch, pki, upstream):
    proxy, _ = launch()
    marker = uuid.uuid4().hex
    with Connection(proxy.port, pki.context("alice")) as conn:
        response = conn.request("GET", f"/echo?{marker}", headers=[("x-big", "b" * 8192)])
    assert response.status == 431
    assert not [p for p in upstream.paths() if marker in p]


# -- max_body --------------------------------------------------------------------

def test_content_length_over_max_body_is_413_before_upstream(launch, pki):
    proxy, server = launch()
    with Connection(proxy.port, pki.context("alice")) as conn:
        response = conn.request("POST", "/scripted/upload", body=b"x" * 2048)
    assert response.status == 413
    assert server.conns == []  # certgate never even connected


def test_content_length_at_max_body_is_served(launch, pki):
    proxy, server = launch()
    with Connection(proxy.port, pki.context("alice")) as conn:
        response = conn.request("POST", "/scripted/upload", body=b"x" * 1024)
    assert response.status == 200
    assert server.conns[0].body_bytes == 1024


def test_chunked_body_over_max_body_is_cut(launch, pki):
    proxy, server = launch()
    with Connection(proxy.port, pki.context("alice")) as conn:
        data = conn.h11.send(h11.Request(method="POST", target="/scripted/upload", headers=[
            ("host", "localhost"), ("transfer-encoding", "chunked")]))
        for _ in range(4):
            data += conn.h11.send(h11.Data(data=b"y" * 512))
        data += conn.h11.send(h11.EndOfMessage())
        conn.send_raw(data)
        raw = conn.read_raw_until_close()
    assert raw == b"" or raw.startswith(b"HTTP/1.1 413 "), raw[:200]
    # The upstream may have seen the head and up to max_body bytes, never the end.
    wait_until(lambda: all(c.peer_closed_at or c.we_closed_at for c in server.conns), 5,
               "the upstream connection to be closed")
    assert sum(c.bodies_complete for c in server.conns) == 0
    assert all(c.body_bytes <= 1024 for c in server.conns)


# -- acceptance 8: upstream failures ---------------------------------------------

def test_refused_upstream_is_502_at_once(launch, pki):
    proxy, _ = launch()
    with Connection(proxy.port, pki.context("alice")) as conn:
        started = time.monotonic()
        response = conn.request("GET", "/dead/thing")
        elapsed = time.monotonic() - started
    assert response.status == 502
    assert elapsed < 1.0


def test_silent_upstream_is_504_after_read_timeout(launch, pki, upstream):
    proxy, _ = launch()
    marker = uuid.uuid4().hex
    with Connection(proxy.port, pki.context("alice")) as conn:
        started = time.monotonic()
        response = conn.request("GET", f"/slow?{marker}")
        elapsed = time.monotonic() - started
    assert response.status == 504
    assert 1.0 <= elapsed < 3.0
    assert f"/slow?{marker}" in upstream.paths()  # it did reach the upstream


def test_slow_upload_longer_than_read_timeout_is_not_504(launch, pki):
    """The read timeout runs from the end of the request body: an upload that
    keeps moving for 3x the route's 1 s read timeout still gets its answer."""
    proxy, _ = launch()
    chunks = 8
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"POST /upload HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Length: %d\r\n\r\n" % (chunks * 1024))
        for _ in range(chunks):  # the slow client is the scenario: 8 x 0.4 s
            conn.send_raw(b"x" * 1024)
            time.sleep(0.4)
        response = conn.read_response()
    assert response.status == 200, response.body
    assert hashlib.sha256(b"x" * chunks * 1024).hexdigest().encode() in response.body


def test_client_that_stalls_mid_upload_gets_408(launch, pki, upstream):
    proxy, _ = launch()
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"POST /upload HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
        started = time.monotonic()
        response = conn.read_response()  # the route's read timeout is 1 s
        elapsed = time.monotonic() - started
    assert response.status == 408, response.body
    assert b"request body not received in time" in response.body
    assert elapsed < 5


def test_upstream_that_stops_reading_the_body_gets_504(launch, pki):
    """No request hangs on an upstream that stops reading an upload: after
    read timeout (1 s here) without progress, 504 and close."""
    proxy, server = launch(take_head_never_body)
    size = 64 * 1024 * 1024  # far more than the socket buffers hold
    with Connection(proxy.port, pki.context("alice")) as conn:
        conn.send_raw(b"POST /stall/up HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Length: %d\r\n\r\n" % size)
        conn.sock.settimeout(0.2)
        chunk = b"x" * 65536
        answer = b""
        started = time.monotonic()
        for _ in range(size // len(chunk)):  # stops once certgate answers or stops reading
            if time.monotonic() - started > 15:
                break
            try:
                conn.sock.sendall(chunk)
            except TimeoutError:
                pass
            except (ssl.SSLError, OSError):
                break
            readable, _, _ = select.select([conn.sock], [], [], 0)
            if not readable and not conn.sock.pending():
                continue
            try:
                answer += conn.sock.recv(4096)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except (ssl.SSLError, OSError):
                break
            if answer:
                break
        elapsed = time.monotonic() - started
        conn.sock.settimeout(2)
        with contextlib.suppress(OSError, ssl.SSLError):
            while b"stopped reading" not in answer and len(answer) < 4096:
                more = conn.sock.recv(4096)  # the rest of the 504, then EOF
                if not more:
                    break
                answer += more
    assert server.seen("POST /stall/up") == 1
    assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
    assert b"stopped reading the request body" in answer
    assert elapsed < 10, (elapsed, answer[:100])


def test_get_is_retried_when_pooled_connection_dies_on_reuse(launch, pki):
    proxy, server = launch(close_on_second_request)
    with Connection(proxy.port, pki.context("alice")) as conn:
        assert conn.request("GET", "/scripted/a").body == b"conn 0"
        response = conn.request("GET", "/scripted/b")
    assert response.status == 200
    assert response.body == b"conn 1"
    assert server.seen("GET /scripted/b") == 2  # the dead attempt and the retry


def test_post_is_not_replayed_when_pooled_connection_dies(launch, pki):
    proxy, server = launch(close_on_second_request)
    with Connection(proxy.port, pki.context("alice")) as conn:
        assert conn.request("GET", "/scripted/a").body == b"conn 0"
        response = conn.request("POST", "/scripted/b", body=b"pay once")
    wait_until(lambda: server.seen("POST /scripted/b") >= 1, 5, "the POST to reach upstream")
    assert response.status == 502
    assert server.seen("POST /scripted/b") == 1
    assert len(server.conns) == 1  # no second connection was opened for it


def test_get_after_upstream_closed_idle_connection(launch, pki):
    proxy, server = launch(answer_then_close_when_idle)
    with Connection(proxy.port, pki.context("alice")) as conn:
        assert conn.request("GET", "/scripted/a").body == b"conn 0"
        wait_until(lambda: server.conns[0].we_closed_at, 5, "the upstream to close conn 0")
        response = conn.request("GET", "/scripted/b")
    assert response.status == 200
    assert response.body == b"conn 1"


def test_post_after_upstream_closed_idle_connection(launch, pki):
    proxy, server = launch(answer_then_close_when_idle)
    with Connection(proxy.port, pki.context("alice")) as conn:
        assert conn.request("GET", "/scripted/a").body == b"conn 0"
        wait_until(lambda: server.conns[0].we_closed_at, 5, "the upstream to close conn 0")
        response = conn.request("POST", "/scripted/b", body=b"pay once")
    assert response.status == 200
    assert server.seen("POST /scripted/b") == 1


def test_upstream_overrunning_content_length_is_not_pooled(launch, pki):
    """Regression (benchmarks/soak.py, upstream_long): bytes beyond the
    upstream's Content-Length sat in h11's buffer, the connection went back
    to the pool, and the next request on it, from any client, got a 502."""
    proxy, _ = launch(overrun_content_length)
    with Connection(proxy.port, pki.context("alice")) as conn:
        first = conn.request("GET", "/scripted/a")
        assert first.status == 200
        assert first.body == b"L" * 10
    with Connection(proxy.port, pki.context("alice")) as conn:
        second = conn.request("GET", "/scripted/b")
    assert second.status == 200
    assert second.body == b"conn 1"


# -- client abort ----------------------------------------------------------------

def test_client_abort_mid_upload_aborts_upstream_request(launch, pki):
    proxy, server = launch()
    conn = Connection(proxy.port, pki.context("alice"))
    try:
        conn.send_raw(b"POST /open/upload HTTP/1.1\r\nHost: localhost\r\n"
                      b"Content-Length: " + str(10 << 20).encode() + b"\r\n\r\n")
        for _ in range(16):
            conn.send_raw(b"z" * 65536)  # 1 MiB of the promised 10
        wait_until(lambda: server.conns and server.conns[0].body_bytes > 0, 5,
                   "the upload to reach the upstream")
    finally:
        conn.close()
    closed = time.monotonic()
    wait_until(lambda: server.conns[0].peer_closed_at, 5,
               "certgate to close the upstream connection")
    rec = server.conns[0]
    assert rec.peer_closed_at is not None
    assert rec.peer_closed_at - closed < 3.0
    assert rec.bodies_complete == 0
    assert rec.body_bytes <= 1 << 20
