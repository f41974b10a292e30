"""Full or resumed mTLS handshakes, one tiny request each, connection closed.

One process = one connection at a time, with blocking sockets: the cheapest
loop Python has (no event loop per connection). Concurrency comes from the
number of processes (16 in a full run, as in the issue's measurements).

Resumption (scenario 3): the first connection, outside the measured window,
yields a session; every measured connection offers the session the previous
one ended with (TLS 1.3 tickets are sent after the handshake, so it is read
after the response). ``session_reused`` is counted, so a server that quietly
refuses resumption shows up as 0 % resumed rather than as a fast number.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

from benchmarks.clients.http import REQUEST_CLOSE, Target, client_context, response_length
from benchmarks.loadgen import ClientResult, Window

CONNECT_TIMEOUT = 10.0
ERROR_BACKOFF = 0.01  # after a failed connection, so a dead server is not hammered


@dataclass(frozen=True, slots=True)
class HandshakeSpec:
    target: Target
    resume: bool
    max_ops: int


def _one(ctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None
         ) -> tuple[ssl.SSLSession | None, bool]:
    """One connection: handshake, GET, read the whole response, close."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    except BaseException:
        raw.close()
        raise
    with sock:
        sock.sendall(REQUEST_CLOSE)
        buf = bytearray()
        while not response_length(buf):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a complete response")
            buf += chunk
        if buf[9:12] != b"200":
            raise ConnectionError(f"status {bytes(buf[9:12]).decode('latin-1')}")
        return sock.session, bool(sock.session_reused)


def run(spec: HandshakeSpec, window: Window) -> ClientResult:
    ctx = client_context(spec.target)
    assert ctx is not None
    session: ssl.SSLSession | None = None
    if spec.resume:
        session, _ = _one(ctx, spec.target.port, None)
    result = ClientResult()
    reused = 0
    window.start()
    while result.ops < spec.max_ops and time.perf_counter() < window.deadline:
        try:
            new_session, was_reused = _one(ctx, spec.target.port, session)
        except (OSError, ssl.SSLError) as exc:
            result.errors += 1
            result.error_sample = result.error_sample or f"{type(exc).__name__}: {exc}"
            time.sleep(ERROR_BACKOFF)
            continue
        result.ops += 1
        reused += was_reused
        if spec.resume:
            session = new_session
    result.counters["resumed"] = reused
    return window.finish(result)
