"""Upgrades: only a checked WebSocket handshake may turn a request into a tunnel.

Issue #11 finding 1. After a ``101`` certgate pipes raw bytes and judges
nothing more, so the only request ever judged on a tunnelled connection is
the upgrade request. An anonymous client on a public path (``client_auth:
off``) that gets any protocol switched on therefore reaches every path of the
upstream. The cases here:

* ``h2c`` in front of stock Hypercorn (which switches to HTTP/2 on
  ``Upgrade: h2c`` + ``HTTP2-Settings``): the HTTP/2 streams to protected
  paths that followed the 101 on the original code must never reach it;
* an upstream that answers *any* ``Upgrade`` with 101 and then serves HTTP/1.1
  requests from the tunnel bytes (``TLS/1.2``, unknown tokens, ``h2c``):
  the second request on the connection must be judged (403), not tunnelled;
* a 101 that does not answer the WebSocket upgrade certgate forwarded
  (another token, no or a wrong ``Sec-WebSocket-Accept``), or a 101 to a
  request that asked for nothing: 502 and close, nothing tunnelled;
* malformed WebSocket handshakes (version, key, method, body): 400 before
  any upstream is contacted.

Each case asserts what the upstream received against what certgate judged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import pytest

from support.clients import Connection
from support.process import wait_until
from support.threaded_server import ThreadedServer

VERSIONS = ["1.2", "1.3"]
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(h2c)d"
    client_auth: require
    rules:
      - {path: /api/webhook/*, client_auth: "off"}
  - host: localhost
    path: /raw
    upstream: "http://127.0.0.1:%(raw)d"
    client_auth: require
    rules:
      - {path: /raw/public/*, client_auth: "off"}
"""


# -- a stock h2c-capable upstream: Hypercorn ------------------------------------

@dataclass
class Seen:
    path: str
    http_version: str
    headers: dict[str, str]


@dataclass
class Hypercorn:
    port: int
    seen: list[Seen] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]


@pytest.fixture
def hypercorn() -> Iterator[Hypercorn]:
    """Hypercorn serving an ASGI app that records each request it answers."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    listener = socket.create_server(("127.0.0.1", 0))
    server = Hypercorn(listener.getsockname()[1])

    async def app(scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        server.seen.append(Seen(scope["path"], scope["http_version"],
                                {n.decode(): v.decode("latin-1") for n, v in scope["headers"]}))
        body = f"{scope['path']} over HTTP/{scope['http_version']}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    import asyncio

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    config = Config()
    config.bind = [f"fd://{listener.detach()}"]  # Hypercorn owns (and closes) it
    config.graceful_timeout = 1
    config.loglevel = "WARNING"

    def run() -> None:
        try:
            loop.run_until_complete(serve(app, config,  # type: ignore[arg-type]
                                          shutdown_trigger=stop.wait))
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10):
        pass  # the listening socket exists from the start; this waits for nothing
    yield server
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    assert not thread.is_alive()


# -- an upstream that switches to anything ----------------------------------------

@dataclass
class RawSeen:
    request_line: str
    headers: dict[str, str]
    tunnelled: bool  # read from the bytes after a 101


class Switcher(ThreadedServer):
    """Answers every request carrying ``Upgrade`` (or every request, with
    ``always``) with 101, then reads HTTP/1.1 requests from the tunnel and
    answers each ``200 tunnelled``: what an h2c/TLS-upgrade-capable upstream
    does, in the simplest form. ``respond_101`` builds the 101 head."""

    def __init__(self) -> None:
        self.seen: list[RawSeen] = []
        self.always = False
        self.respond_101: Callable[[dict[str, str]], bytes] = lambda _: (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
        super().__init__(lambda sock, _index: lambda: self._serve(sock))

    def _read_head(self, sock: socket.socket, buffer: bytearray) -> bytes | None:
        deadline = time.monotonic() + 30
        while b"\r\n\r\n" not in buffer:
            if self.stopping.is_set() or time.monotonic() > deadline:
                return None
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not data:
                return None
            buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        buffer[:] = rest
        return head

    def _serve(self, sock: socket.socket) -> None:
        buffer = bytearray()
        tunnelled = False
        with sock, contextlib.suppress(OSError):
            sock.settimeout(0.05)
            for _ in range(20):
                head = self._read_head(sock, buffer)
                if head is None:
                    return
                line, *fields = head.decode("latin-1").split("\r\n")
                headers = {}
                for item in fields:
                    name, _, value = item.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.seen.append(RawSeen(line, headers, tunnelled))
                if not tunnelled and ("upgrade" in headers or self.always):
                    sock.sendall(self.respond_101(headers))
                    tunnelled = True
                    continue
                body = f"{'tunnelled' if tunnelled else 'plain'} {line}".encode()
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def lines(self) -> list[str]:
        return [s.request_line for s in self.seen]



@pytest.fixture
def switcher() -> Iterator[Switcher]:
    server = Switcher()
    yield server
    server.stop()


@pytest.fixture
def proxy(start_certgate, hypercorn, switcher):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"h2c": hypercorn.port, "raw": switcher.port})


def _read_head(conn: Connection, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """(response head, bytes after it), or (what came, b"") if the connection ended."""
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        try:
            chunk = conn.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _closed(conn: Connection) -> bool:
    """True when certgate ends the connection (EOF or reset) within 5 s; what
    it sends before that (the rest of a response body) is read and dropped,
    but a second response means the connection was kept."""
    conn.sock.settimeout(5)
    data = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            chunk = conn.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
        if not chunk:
            return True
        data += chunk
        if b"HTTP/1.1 " in data:
            return False
    return False


# -- h2c in front of Hypercorn (the attack as reported) -----------------------------

def _h2_requests(conn: Connection, h2conn: h2.connection.H2Connection, leftover: bytes,
                 paths: list[str]) -> dict[str, int]:
    """After a 101 to h2c: open one HTTP/2 stream per path; return path -> status."""
    conn.sock.sendall(h2conn.data_to_send())
    streams: dict[int, str] = {}
    for path in paths:
        stream = h2conn.get_next_available_stream_id()
        h2conn.send_headers(stream, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                     (":authority", "localhost")], end_stream=True)
        streams[stream] = path
    conn.sock.sendall(h2conn.data_to_send())
    statuses: dict[str, int] = {}
    data = leftover
    deadline = time.monotonic() + 10
    while len(statuses) < len(paths) and time.monotonic() < deadline:
        if not data:
            try:
                data = conn.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError, TimeoutError):
                break
            if not data:
                break
        for event in h2conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id in streams:
                statuses[streams[event.stream_id]] = int(dict(event.headers)[b":status"])
        data = b""
        conn.sock.sendall(h2conn.data_to_send())
    return statuses


@pytest.mark.parametrize("version", VERSIONS)
def test_h2c_upgrade_on_a_public_path_opens_no_http2_streams(proxy, pki, hypercorn, version):
    marker = uuid.uuid4().hex
    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = h2conn.initiate_upgrade_connection()
    with Connection(proxy.port, pki.context(None, version)) as conn:
        conn.send_raw(b"GET /api/webhook/" + marker.encode() + b" HTTP/1.1\r\n"
                      b"Host: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                      b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n")
        head, rest = _read_head(conn)
        reached: dict[str, int] = {}
        if head.startswith(b"HTTP/1.1 101"):  # the original code: HTTP/2 to anything
            reached = _h2_requests(conn, h2conn, rest, ["/admin/secret", "/private"])
    assert reached == {}, f"HTTP/2 streams through the tunnel got answers: {reached}"
    # Judged as the plain public request it is: forwarded, without the upgrade.
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert hypercorn.paths() == [f"/api/webhook/{marker}"]
    seen = hypercorn.seen[0]
    assert seen.http_version == "1.1"
    assert "upgrade" not in seen.headers
    assert "http2-settings" not in seen.headers
    assert "upgrade" not in seen.headers.get("connection", "").lower()
    assert seen.headers["x-client-verify"] == "NONE"


def test_http2_preface_after_the_refused_upgrade_is_not_forwarded(proxy, pki, hypercorn):
    """The client ignores the 200 and speaks HTTP/2 anyway: certgate reads
    it as a (bad) HTTP/1.1 request, answers an error and closes."""
    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = h2conn.initiate_upgrade_connection()
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(b"GET /api/webhook/x HTTP/1.1\r\nHost: localhost\r\n"
                      b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                      b"HTTP2-Settings: " + settings + b"\r\n\r\n")
        assert _read_head(conn)[0].startswith(b"HTTP/1.1 200 ")
        reached = _h2_requests(conn, h2conn, b"", ["/admin/secret"])
    assert reached == {}
    assert "/admin/secret" not in hypercorn.paths()


def test_http2_prior_knowledge_is_refused(proxy, pki, hypercorn):
    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h2conn.initiate_connection()
    h2conn.send_headers(1, [(":method", "GET"), (":path", "/api/webhook/x"), (":scheme", "https"),
                            (":authority", "localhost")], end_stream=True)
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(h2conn.data_to_send())
        raw = conn.read_raw_until_close()
    assert raw.startswith((b"HTTP/1.1 505 ", b"HTTP/1.1 400 ")), raw[:200]
    assert hypercorn.seen == []


# -- an upstream that switches to anything ----------------------------------------

@pytest.mark.parametrize("token", [b"h2c", b"TLS/1.2", b"TLS/1.2, HTTP/1.1", b"foo/1",
                                   b"HTTP/2.0", b"websocketx"])
def test_non_websocket_upgrade_is_stripped_and_the_next_request_judged(proxy, pki, switcher,
                                                                       token):
    marker = uuid.uuid4().hex
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(b"GET /raw/public/" + marker.encode() + b" HTTP/1.1\r\n"
                      b"Host: localhost\r\nConnection: Upgrade\r\nUpgrade: " + token +
                      b"\r\n\r\n")
        head, _ = _read_head(conn)
        conn.send_raw(b"GET /raw/private/" + marker.encode() + b" HTTP/1.1\r\n"
                      b"Host: localhost\r\n\r\n")
        second, _ = _read_head(conn)
    lines = switcher.lines()
    assert not [line for line in lines if "/raw/private/" in line], switcher.seen
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert second.startswith(b"HTTP/1.1 403 "), second
    assert lines == [f"GET /raw/public/{marker} HTTP/1.1"]
    assert "upgrade" not in switcher.seen[0].headers
    assert "upgrade" not in switcher.seen[0].headers.get("connection", "").lower()


def test_upgrade_without_connection_upgrade_is_stripped(proxy, pki, switcher):
    """Upgrade is hop-by-hop: without ``Connection: upgrade`` it means nothing
    and is not forwarded."""
    with Connection(proxy.port, pki.context(None)) as conn:
        response = conn.request("GET", "/raw/public/a", headers=[("upgrade", "websocket")])
    assert response.status == 200
    assert switcher.seen[0].headers.get("upgrade") is None


def test_forged_101_to_a_plain_request_closes_without_tunnelling(proxy, pki, switcher):
    switcher.always = True
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(b"GET /raw/public/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, _ = _read_head(conn)
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.send_raw(b"GET /raw/private/b HTTP/1.1\r\nHost: localhost\r\n\r\n")
        closed = _closed(conn)
    assert head.startswith(b"HTTP/1.1 502 "), head
    assert b"\r\nconnection: close" in head.lower()
    assert closed
    assert switcher.lines() == ["GET /raw/public/a HTTP/1.1"]


# -- WebSocket: the handshake is checked both ways ---------------------------------

def _ws_key() -> bytes:
    return base64.b64encode(uuid.uuid4().bytes)


def _accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def _ws_request(path: str, key: bytes, extra: bytes = b"", method: bytes = b"GET",
                version: bytes = b"13") -> bytes:
    return (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: " + version + b"\r\nSec-WebSocket-Key: " + key + b"\r\n" +
            extra + b"\r\n")


def _good_101(headers: dict[str, str]) -> bytes:
    key = headers.get("sec-websocket-key", "").encode()
    return (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Accept: " + _accept(key) + b"\r\n\r\n")


def test_valid_websocket_handshake_is_tunnelled(proxy, pki, switcher):
    switcher.respond_101 = _good_101
    key = _ws_key()
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(_ws_request("/raw/public/ws", key))
        head, _ = _read_head(conn)
        assert head.startswith(b"HTTP/1.1 101 "), head
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        assert {n.lower(): v for n, v in fields.items()}[b"sec-websocket-accept"] == _accept(key)
        # Bytes after the 101 belong to the upgraded protocol: the upstream
        # (which speaks "HTTP in the tunnel" here) answers them unjudged.
        conn.send_raw(b"GET /tunnel-payload HTTP/1.1\r\n\r\n")
        answer, _ = _read_head(conn)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    first = switcher.seen[0]
    assert first.headers["upgrade"].lower() == "websocket"
    assert first.headers["sec-websocket-key"] == key.decode()
    assert first.headers["sec-websocket-version"] == "13"
    assert switcher.seen[1].tunnelled


def _wrong_token(headers: dict[str, str]) -> bytes:
    key = headers.get("sec-websocket-key", "").encode()
    return (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
            b"Sec-WebSocket-Accept: " + _accept(key) + b"\r\n\r\n")


def _no_accept(_: dict[str, str]) -> bytes:
    return b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def _wrong_accept(_: dict[str, str]) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Accept: " + _accept(b"someone else's key") + b"\r\n\r\n")


def _no_upgrade(headers: dict[str, str]) -> bytes:
    key = headers.get("sec-websocket-key", "").encode()
    return (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + _accept(key) + b"\r\n\r\n")


@pytest.mark.parametrize("respond", [_wrong_token, _no_accept, _wrong_accept, _no_upgrade],
                         ids=["upgrade-h2c", "no-accept", "wrong-accept", "no-upgrade"])
def test_101_that_does_not_answer_the_websocket_upgrade_is_not_tunnelled(proxy, pki, switcher,
                                                                         respond):
    switcher.respond_101 = respond
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(_ws_request("/raw/public/ws", _ws_key()))
        head, _ = _read_head(conn)
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.send_raw(b"GET /raw/private/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        closed = _closed(conn)
    assert head.startswith(b"HTTP/1.1 502 "), head
    assert closed
    wait_until(lambda: not any(t.is_alive() for t in switcher.threads), 5,
               "certgate to close the upstream connection")
    assert [s.request_line for s in switcher.seen] == ["GET /raw/public/ws HTTP/1.1"]


@pytest.mark.parametrize(("request_bytes", "reason"), [
    (_ws_request("/raw/public/ws", _ws_key(), version=b"8"), b"Sec-WebSocket-Version"),
    (_ws_request("/raw/public/ws", _ws_key(), version=b"13, 8"), b"Sec-WebSocket-Version"),
    (_ws_request("/raw/public/ws", b"c2hvcnQ="), b"Sec-WebSocket-Key"),
    (_ws_request("/raw/public/ws", b"not base64 at all!!!!==="), b"Sec-WebSocket-Key"),
    (_ws_request("/raw/public/ws", base64.b64encode(b"x" * 16),
                 extra=b"Sec-WebSocket-Key: " + base64.b64encode(b"y" * 16) + b"\r\n"),
     b"Sec-WebSocket-Key"),
    (b"GET /raw/public/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
     b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n", b"Sec-WebSocket-Key"),
    (_ws_request("/raw/public/ws", _ws_key(), method=b"POST",
                 extra=b"Content-Length: 0\r\n"), b"GET"),
    (_ws_request("/raw/public/ws", _ws_key(), extra=b"Content-Length: 5\r\n") + b"hello",
     b"body"),
    (_ws_request("/raw/public/ws", _ws_key(), extra=b"Transfer-Encoding: chunked\r\n") +
     b"0\r\n\r\n", b"body"),
], ids=["version-8", "version-list", "short-key", "bad-base64", "two-keys", "no-key", "post",
        "content-length-body", "chunked-body"])
def test_malformed_websocket_handshake_is_400_before_the_upstream(proxy, pki, switcher,
                                                                  request_bytes, reason):
    switcher.respond_101 = _good_101
    with Connection(proxy.port, pki.context(None)) as conn:
        conn.send_raw(request_bytes)
        raw = conn.read_raw_until_close()
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:300]
    assert reason in raw
    assert switcher.seen == []
