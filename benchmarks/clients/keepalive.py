"""Keep-alive load: many persistent connections per process, one request in flight each.

Each process runs a uvloop event loop with ``connections`` protocol
instances (uvloop's TLS layer is C, so a Python client can keep up with a
Python proxy). No pipelining: a connection sends its next GET only when the
previous response is complete, which is how browsers and apps use HTTP/1.1.

Two modes:
  * closed loop (``rate`` None): send again at once, to find the peak rate;
  * paced (``rate`` given): each connection sends on its own fixed schedule
    (randomly phased) so the total is ``rate`` requests/s; a late response
    makes the next request go at once, never bunches two. Latency is
    measured from the actual send to the end of the response.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from array import array
from dataclasses import dataclass
from typing import cast

import uvloop

from benchmarks.clients.http import REQUEST, Target, client_context, response_length
from benchmarks.loadgen import ClientResult, Window

# A bound on the latencies one process keeps (8 bytes each): past it the
# run still counts requests, it just stops recording their latency.
MAX_LATENCIES = 2_000_000


@dataclass(frozen=True, slots=True)
class KeepAliveSpec:
    target: Target
    connections: int
    max_ops: int
    rate: float | None = None  # this process's share of the total, requests/s


class _Conn(asyncio.Protocol):
    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent_at = 0.0
        self.next_at = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.sent_at = time.perf_counter()
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            length = response_length(self.buf)
        except ValueError as exc:
            self.shared.fail(str(exc))
            assert self.transport is not None
            self.transport.close()
            return
        if not length:
            return
        now = time.perf_counter()
        status = self.buf[9:12]
        del self.buf[:length]
        self.shared.done(self, now, status == b"200")

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.lost(self, exc)
        if not self.closed.done():
            self.closed.set_result(None)


class _Shared:
    """Counters of one process, and the decision of when each connection sends next."""

    def __init__(self, spec: KeepAliveSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.result = ClientResult()
        self.latencies = array("d")
        self.deadline = 0.0  # perf_counter
        self.interval = spec.connections / spec.rate if spec.rate else 0.0
        self.running = False
        self.idle: asyncio.Future[None] = loop.create_future()
        self.in_flight = 0

    def fail(self, message: str) -> None:
        self.result.errors += 1
        self.result.error_sample = self.result.error_sample or message

    def lost(self, conn: _Conn, exc: Exception | None) -> None:
        if self.running:
            self.fail(f"connection lost: {exc!r}")
            if conn.sent_at:
                self._settle()

    def start(self, conns: list[_Conn], deadline: float) -> None:
        self.deadline = deadline
        self.running = True
        now = time.perf_counter()
        for conn in conns:
            if self.interval:
                conn.next_at = now + random.random() * self.interval
                self._schedule(conn)
            else:
                self.in_flight += 1
                conn.send()

    def _schedule(self, conn: _Conn) -> None:
        delay = conn.next_at - time.perf_counter()
        self.in_flight += 1
        if delay > 0:
            self.loop.call_later(delay, conn.send)
        else:
            conn.send()

    def done(self, conn: _Conn, now: float, ok: bool) -> None:
        result = self.result
        if ok:
            result.ops += 1
            if len(self.latencies) < MAX_LATENCIES:
                self.latencies.append(now - conn.sent_at)
        else:
            self.fail(f"status {bytes(conn.buf[9:12])!r}")
        conn.sent_at = 0.0
        self.in_flight -= 1
        if now < self.deadline and result.ops < self.spec.max_ops:
            if self.interval:
                conn.next_at = max(conn.next_at + self.interval, now)
                self._schedule(conn)
            else:
                self.in_flight += 1
                conn.send()
        elif self.in_flight == 0 and not self.idle.done():
            self.idle.set_result(None)

    def _settle(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and not self.idle.done():
            self.idle.set_result(None)


async def _connect(spec: KeepAliveSpec, shared: _Shared) -> list[_Conn]:
    loop = asyncio.get_running_loop()
    ctx: ssl.SSLContext | None = client_context(spec.target)
    conns: list[_Conn] = []
    for _ in range(spec.connections):
        _, proto = await loop.create_connection(
            lambda: _Conn(shared), "127.0.0.1", spec.target.port, ssl=ctx,
            server_hostname="localhost" if ctx else None)
        conns.append(proto)
    return conns


async def _run(shared: _Shared, conns: list[_Conn], window: Window) -> ClientResult:
    shared.start(conns, window.deadline)
    grace = window.deadline + 10.0 - time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.shield(shared.idle), max(grace, 0.1))
    except TimeoutError:
        shared.fail("responses still outstanding 10 s after the deadline")
    shared.running = False
    result = window.finish(shared.result)  # before the teardown, which is not load
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.wait_for(asyncio.gather(*(conn.closed for conn in conns)), 10.0)
    return result


def run(spec: KeepAliveSpec, window: Window) -> ClientResult:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        shared = _Shared(spec, loop)
        conns = loop.run_until_complete(_connect(spec, shared))
        window.start()
        result = loop.run_until_complete(_run(shared, conns, window))
        result.latencies = shared.latencies
        return result
    finally:
        loop.close()
