"""Open many keep-alive TLS connections, make one request on each, then hold them.

The harness measures the server's RSS while they are held (its
``after_setup`` hook runs once every process has opened its share), then
releases the clients, which close everything. One request per connection
first, so the server has built all its per-connection state (HTTP parser,
buffers), as it has for a real idle keep-alive client.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from benchmarks.clients.http import REQUEST, Target, client_context, response_length
from benchmarks.loadgen import ClientResult, Window

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class IdleSpec:
    target: Target
    connections: int


def _open(ctx: ssl.SSLContext, port: int) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    try:
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise
    sock.sendall(REQUEST)
    buf = bytearray()
    while not response_length(buf):
        chunk = sock.recv(65536)
        if not chunk:
            sock.close()
            raise ConnectionError("closed before a complete response")
        buf += chunk
    return sock


def run(spec: IdleSpec, window: Window) -> ClientResult:
    ctx = client_context(spec.target)
    assert ctx is not None
    result = ClientResult()
    held: list[socket.socket] = []
    try:
        for _ in range(spec.connections):
            try:
                held.append(_open(ctx, spec.target.port))
            except (OSError, ssl.SSLError) as exc:
                result.errors += 1
                result.error_sample = result.error_sample or f"{type(exc).__name__}: {exc}"
        result.ops = len(held)
        window.start()  # the harness measured while we waited here
    finally:
        for sock in held:
            sock.close()
    return window.finish(result)
