"""Acceptance 3 and 11, plus streaming bodies: what goes through certgate
arrives unchanged and unbuffered.

* WebSocket frames both ways through the 101 tunnel (``websockets`` client
  and server), text and a 200 KB binary message.
* SSE: the first events reach the client while the upstream is still holding
  the stream open, which only holds if certgate flushes every chunk.
* Range / If-Range pass through; 206 and Content-Range come back unchanged.
* 32 MiB up and down, Content-Length and chunked, SHA-256 compared end to end.
* ``Expect: 100-continue`` from curl, HEAD, 204 and 304 keep the connection
  usable.

The cheap tests run under TLS 1.2 and 1.3 (STYLE.md habit 10).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import h11
import httpx
import pytest
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

from support.clients import Connection
from support.upstream import PATTERN

CONFIG = """
state_dir: {state}
listen: ["127.0.0.1:0"]
client_auth: {trusted_cas: [builtin]}
routes:
  - host: localhost
    upstream: "http://127.0.0.1:%(up)d"
  - host: localhost
    path: /ws
    upstream: "http://127.0.0.1:%(ws)d"
"""

VERSIONS = ["1.2", "1.3"]
BIG = 32 * 1024 * 1024


def pattern_sha256(size: int) -> str:
    """SHA-256 of the first ``size`` bytes of the upstream's repeating PATTERN."""
    digest = hashlib.sha256()
    full, rest = divmod(size, len(PATTERN))
    for _ in range(full):
        digest.update(PATTERN)
    digest.update(PATTERN[:rest])
    return digest.hexdigest()


def pattern_chunks(size: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    block = PATTERN * (chunk // len(PATTERN))
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece


def _echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


@pytest.fixture
def ws_upstream() -> Iterator[int]:
    """A real ``websockets`` echo server on 127.0.0.1, in its own thread."""
    with ws_serve(_echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def proxy(start_certgate, upstream, ws_upstream):  # type: ignore[no-untyped-def]
    return start_certgate(CONFIG % {"up": upstream.port, "ws": ws_upstream})


def _send_head(conn: Connection, method: str, target: str,
               headers: list[tuple[str, str]] | None = None) -> None:
    data = conn.h11.send(h11.Request(method=method, target=target,
                                     headers=[("host", "localhost"), *(headers or [])]))
    data += conn.h11.send(h11.EndOfMessage())
    conn.sock.sendall(data)


def _read_until(conn: Connection, needle: bytes, timeout: float
                ) -> tuple[h11.Response | None, bytes, bool]:
    """Read events until ``needle`` is in the body or the message ends.

    Returns (response head, body so far, message complete). Every recv is a
    blocking read with the socket's own timeout, and the loop has a deadline.
    """
    deadline = time.monotonic() + timeout
    head: h11.Response | None = None
    body = bytearray()
    while time.monotonic() < deadline:
        event = conn.h11.next_event()
        if event is h11.NEED_DATA:
            conn.h11.receive_data(conn.sock.recv(65536))
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if needle in body:
                return head, bytes(body), False
        elif isinstance(event, h11.EndOfMessage):
            return head, bytes(body), True
        else:
            raise AssertionError(f"unexpected event {event!r}")
    raise AssertionError(f"{needle!r} not received within {timeout}s; got {bytes(body)!r}")


# -- acceptance 3: WebSocket and SSE ---------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_websocket_echo_text_and_binary(proxy, pki, version):
    big = bytes(PATTERN) * 3 + PATTERN[:200_000 - 3 * len(PATTERN)]
    assert len(big) == 200_000
    with ws_connect(f"wss://localhost:{proxy.port}/ws", ssl=pki.context("alice", version),
                    open_timeout=10, close_timeout=5) as ws:
        ws.send("hello through certgate")
        assert ws.recv(timeout=10) == "hello through certgate"
        ws.send(big)
        echoed = ws.recv(timeout=10)
        assert isinstance(echoed, bytes)
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(big).digest()
        ws.send("after binary")
        assert ws.recv(timeout=10) == "after binary"


@pytest.mark.parametrize("version", VERSIONS)
def test_sse_events_are_not_buffered(proxy, pki, upstream, version):
    upstream.sse_release.clear()
    with Connection(proxy.port, pki.context("alice", version)) as conn:
        _send_head(conn, "GET", "/sse")
        head, body, complete = _read_until(conn, b"data: event 1\n\n", timeout=10)
        # The upstream is still blocked on the release: what arrived was
        # flushed by certgate, not delivered at the end of the stream.
        assert not upstream.sse_release.is_set()
        assert not complete
        assert head is not None
        assert head.status_code == 200
        assert dict(head.headers)[b"content-type"] == b"text/event-stream"
        assert body == b"data: event 0\n\ndata: event 1\n\n"
        assert b"last" not in body
        # Release through certgate itself, on a second connection.
        with Connection(proxy.port, pki.context("alice", version)) as other:
            assert other.request("GET", "/sse-release").status == 204
        _, rest, complete = _read_until(conn, b"\x00never\x00", timeout=10)
        assert complete
        assert rest == b"data: last\n\n"


# -- acceptance 11: Range requests -----------------------------------------------

def test_range_passes_through_unchanged(proxy, pki, upstream):
    marker = uuid.uuid4().hex
    resource = bytes(i % 251 for i in range(1000))
    with Connection(proxy.port, pki.context("alice")) as conn:
        response = conn.request("GET", f"/range?{marker}", headers=[("range", "bytes=0-1")])
        assert response.status == 206
        assert response.headers["content-range"] == "bytes 0-1/1000"
        assert response.headers["content-length"] == "2"
        assert response.body == resource[:2]
        # If-Range reaches the upstream verbatim, on the same connection.
        response = conn.request("GET", f"/range?{marker}-if", headers=[
            ("range", "bytes=500-"), ("if-range", '"v1-etag"')])
        assert response.status == 206
        assert response.headers["content-range"] == "bytes 500-999/1000"
        assert response.body == resource[500:]
    seen = [r for r in upstream.requests if r.path == f"/range?{marker}-if"]
    assert len(seen) == 1
    headers = dict(seen[0].headers)
    assert headers["if-range"] == '"v1-etag"'
    assert headers["range"] == "bytes=500-"


# -- big bodies ------------------------------------------------------------------

@pytest.fixture
def http(proxy, pki) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=f"https://localhost:{proxy.port}",
                      verify=pki.context("alice"), timeout=30) as client:
        yield client


def test_download_32_mib_intact(http):
    digest = hashlib.sha256()
    size = 0
    with http.stream("GET", f"/bytes/{BIG}") as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(BIG)
        for chunk in response.iter_raw(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    assert size == BIG
    assert digest.hexdigest() == pattern_sha256(BIG)


def test_upload_32_mib_with_content_length(http, upstream):
    body = b"".join(pattern_chunks(BIG))
    marker = uuid.uuid4().hex
    response = http.post(f"/upload?{marker}", content=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["size"] == BIG
    assert answer["sha256"] == pattern_sha256(BIG)
    (seen,) = [r for r in upstream.requests if r.path == f"/upload?{marker}"]
    assert dict(seen.headers)["content-length"] == str(BIG)


def test_upload_32_mib_chunked(http, upstream):
    marker = uuid.uuid4().hex
    response = http.post(f"/upload?{marker}", content=pattern_chunks(BIG, 100_003))
    assert response.status_code == 200
    answer = response.json()
    assert answer["size"] == BIG
    assert answer["sha256"] == pattern_sha256(BIG)
    (seen,) = [r for r in upstream.requests if r.path == f"/upload?{marker}"]
    assert dict(seen.headers)["transfer-encoding"] == "chunked"


def test_keep_alive_serves_many_requests_on_one_connection(proxy, pki, upstream):
    """GET, Content-Length POST, chunked POST, download: one client connection,
    one pooled upstream connection."""
    before = upstream.connections
    body = bytes(PATTERN) * 8  # 512 KiB
    with Connection(proxy.port, pki.context("alice")) as conn:
        for _ in range(3):
            assert conn.request("GET", "/echo").status == 200
            response = conn.request("POST", "/upload", body=body)
            assert response.status == 200
            assert json.loads(response.body)["sha256"] == hashlib.sha256(body).hexdigest()
            # Chunked, framed by h11, odd chunk sizes.
            data = conn.h11.send(h11.Request(method="POST", target="/upload", headers=[
                ("host", "localhost"), ("transfer-encoding", "chunked")]))
            for start in range(0, len(body), 70_001):
                data += conn.h11.send(h11.Data(data=body[start:start + 70_001]))
            data += conn.h11.send(h11.EndOfMessage())
            conn.send_raw(data)
            response = conn.read_response()
            assert response.status == 200
            answer = json.loads(response.body)
            assert (answer["size"], answer["sha256"]) == (len(body),
                                                          hashlib.sha256(body).hexdigest())
            response = conn.request("GET", "/bytes/300000")
            assert response.body == b"".join(pattern_chunks(300_000))
    # Twelve requests, one upstream connection (reused from certgate's pool).
    assert upstream.connections - before == 1


# -- Expect, HEAD, bodiless statuses ---------------------------------------------

def test_expect_100_continue_with_curl(proxy, pki, tmp_path):
    payload = b"".join(pattern_chunks(3 * 1024 * 1024 + 17))
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    alice = pki["alice"]
    result = subprocess.run(
        ["curl", "-sS", "-v", "--max-time", "20", "--cacert", str(pki.root),
         "--cert", str(alice.cert), "--key", str(alice.key),
         "-H", "content-type: application/octet-stream", "--data-binary", f"@{path}",
         f"https://localhost:{proxy.port}/upload"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "> Expect: 100-continue" in result.stderr
    # certgate answers the 100 itself (h11 sends no reason phrase); without it
    # curl would wait a second and send the body anyway.
    assert re.search(r"^< HTTP/1\.1 100\b", result.stderr, re.MULTILINE), result.stderr
    answer = json.loads(result.stdout)
    assert answer["size"] == len(payload)
    assert answer["sha256"] == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("version", VERSIONS)
def test_head_204_304_have_no_body_and_keep_the_connection(proxy, pki, version):
    with Connection(proxy.port, pki.context("alice", version)) as conn:
        head = conn.request("HEAD", "/echo")
        assert head.status == 200
        assert int(head.headers["content-length"]) > 0  # the GET's length
        assert head.body == b""
        for status in (204, 304):
            response = conn.request("GET", f"/status/{status}")
            assert response.status == status
            assert response.body == b""
            assert "transfer-encoding" not in response.headers
        # Any stray body byte after HEAD/204/304 would be parsed as the start of
        # this response and break it.
        response = conn.request("GET", "/echo?after")
        assert response.status == 200
        assert json.loads(response.body)["path"] == "/echo?after"
