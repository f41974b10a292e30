"""One large body through the proxy, download or upload, on one TLS connection.

Blocking socket, 1 MiB reads and writes from one preallocated buffer: the
client copies nothing it does not have to, so the transfer rate is the
proxy's (plus the upstream's, which writes 256 KiB slices of one constant).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from benchmarks.clients.http import Target, client_context, response_length, status_of
from benchmarks.loadgen import ClientResult, Window

CHUNK = 1 << 20
IO_TIMEOUT = 60.0  # a stalled transfer fails the measurement instead of hanging it


@dataclass(frozen=True, slots=True)
class StreamSpec:
    target: Target
    direction: str  # "download" | "upload"
    size: int


def _open(target: Target) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", target.port), timeout=IO_TIMEOUT)
    ctx = client_context(target)
    return ctx.wrap_socket(raw, server_hostname="localhost") if ctx else raw


def _read_head(sock: socket.socket) -> tuple[int, bytes]:
    """Read until the response head is complete; return (status, body bytes read)."""
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    return status_of(buf), bytes(buf[end + 4:])


def _download(sock: socket.socket, size: int) -> None:
    sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % size)
    status, first = _read_head(sock)
    if status != 200:
        raise ConnectionError(f"status {status}")
    got = len(first)
    buffer = memoryview(bytearray(CHUNK))
    while got < size:
        n = sock.recv_into(buffer, min(CHUNK, size - got))
        if not n:
            raise ConnectionError(f"closed after {got} of {size} bytes")
        got += n


def _upload(sock: socket.socket, size: int) -> None:
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: localhost\r\ncontent-type: "
                 b"application/octet-stream\r\ncontent-length: %d\r\n\r\n" % size)
    block = memoryview(bytes(CHUNK))
    sent = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        sock.sendall(block[:n])
        sent += n
    buf = bytearray()
    while not response_length(buf):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the upload's response")
        buf += chunk
    if status_of(buf) != 200:
        raise ConnectionError(f"status {status_of(buf)}")


def run(spec: StreamSpec, window: Window) -> ClientResult:
    sock = _open(spec.target)
    result = ClientResult()
    with sock:
        window.start()
        try:
            (_download if spec.direction == "download" else _upload)(sock, spec.size)
            result.ops = 1
            result.counters["bytes"] = spec.size
        except OSError as exc:
            result.errors = 1
            result.error_sample = f"{type(exc).__name__}: {exc}"
        result.counters["seconds"] = time.perf_counter() - window.started
        return window.finish(result)
