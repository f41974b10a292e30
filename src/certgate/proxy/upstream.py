"""Connections to upstreams: a keep-alive pool per upstream, errors mapped once.

The pool is LIFO (the most recently used connection is the least likely to
have been closed by the upstream's own keep-alive timer) and drops idle
connections after ``pool_idle`` seconds, which defaults below the 5 s idle
timeout of common upstream servers. A connection the upstream closed while
it sat idle is noticed by ``connection_lost`` and never handed out; one that
closes in the race between hand-out and first write is retried by the
exchange, but only for requests that are safe to repeat (RFC 9110 s.9.2.2)
and carry no body.

Connection errors are translated here, once, into :class:`HTTPError` with
the status the client should see: refused/unreachable/TLS failure -> 502,
timeout -> 504.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from certgate.config.schema import Timeouts, Upstream, UpstreamTLS
from certgate.errors import HTTPError
from certgate.http.upstream_http import UpstreamHTTP
from certgate.proxy.channel import Channel

# Idle connections kept per upstream (per worker). It must cover the peak
# number of concurrent requests, or every request above it opens and closes
# a connection (measured: with 64 keep-alive clients and a cap of 32, two of
# every three requests paid for a new upstream connection). Idle ones are
# closed after ``timeouts.pool_idle`` anyway, so a high cap costs nothing
# when traffic is low. nginx's upstream ``keepalive`` has no default at all.
MAX_IDLE_PER_UPSTREAM = 256
# h11's default for the response head; upstream heads larger than this are
# treated as broken (502) rather than buffered without bound.
MAX_RESPONSE_HEAD = 64 * 1024


class UpstreamConnection(Channel):
    http: UpstreamHTTP  # the upstream side: no h11 (see certgate.http.upstream_http)

    def __init__(self) -> None:
        super().__init__(UpstreamHTTP(MAX_RESPONSE_HEAD))
        self.idle_timer: asyncio.TimerHandle | None = None
        self.reused = False


def upstream_ssl_context(settings: UpstreamTLS) -> ssl.SSLContext:
    """The client-side TLS context for an ``https://`` upstream."""
    ctx = ssl.create_default_context(cafile=str(settings.ca) if settings.ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if not settings.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert is not None and settings.key is not None:
        ctx.load_cert_chain(str(settings.cert), str(settings.key))
    return ctx


class UpstreamPool:
    """Keep-alive connections to one upstream."""

    def __init__(self, upstream: Upstream, timeouts: Timeouts) -> None:
        self.upstream = upstream
        self.timeouts = timeouts
        self._idle: list[UpstreamConnection] = []
        self._ssl: ssl.SSLContext | None = None
        if upstream.tls is not None:
            self._ssl = upstream_ssl_context(upstream.tls)
        self._server_hostname = (
            (upstream.tls.server_name or upstream.host) if upstream.tls is not None else None
        )

    @staticmethod
    def files(upstream: Upstream) -> tuple[Path, ...]:
        tls = upstream.tls
        if tls is None:
            return ()
        return tuple(p for p in (tls.ca, tls.cert, tls.key) if p is not None)

    async def acquire(self) -> UpstreamConnection:
        """A pooled connection if one is alive, else a new one."""
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            # An upstream that closed its side while idle (EOF) or sent bytes
            # nobody asked for cannot carry another exchange.
            if conn.lost or conn.at_eof or conn.has_buffered_data:
                conn.abort()
                continue
            conn.reused = True
            conn.clear_timeout()
            return conn
        return await self.connect()

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        label = self.upstream.label
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, protocol = await loop.create_connection(
                    UpstreamConnection,
                    self.upstream.host,
                    self.upstream.port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
        except TimeoutError:
            raise HTTPError(504, f"upstream {label} did not accept a connection in time",
                            kind="timeout",
                            close=False) from None
        except ConnectionRefusedError:
            raise HTTPError(502, f"upstream {label} refused the connection",
                            kind="refused") from None
        except ssl.SSLError as exc:
            raise HTTPError(502, f"TLS to upstream {label} failed: {exc.reason}",
                            kind="tls") from None
        except OSError as exc:
            raise HTTPError(502, f"upstream {label} unreachable: {exc.strerror or exc}",
                            kind="refused") from None
        return protocol

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection after a complete exchange, or close it."""
        # Bytes after the end of the response (an upstream that sent more
        # than its Content-Length) would be read as the next response:
        # whoever got this connection from the pool would get a 502.
        if (conn.lost or not conn.http.reusable or conn.has_buffered_data
                or len(self._idle) >= MAX_IDLE_PER_UPSTREAM):
            conn.close()
            return
        conn.http.start_next_cycle()
        conn.cancel_deadline()
        conn.idle_timer = asyncio.get_running_loop().call_later(
            self.timeouts.pool_idle, self._expire, conn)
        self._idle.append(conn)

    def _expire(self, conn: UpstreamConnection) -> None:
        conn.idle_timer = None
        if conn in self._idle:
            self._idle.remove(conn)
        conn.close()

    def close(self) -> None:
        for conn in self._idle:
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
            conn.close()
        self._idle.clear()
