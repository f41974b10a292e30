"""Accept TCP, read SNI from the ClientHello without consuming it, start TLS.

Theory of operation. The listening socket is non-blocking and watched with
``add_reader``. Each accepted socket is watched until its first TLS record
(the ClientHello) is complete, read with ``MSG_PEEK`` so the bytes stay in the
kernel for OpenSSL. To avoid spinning on a level-triggered reader while a
ClientHello is still arriving in pieces, ``SO_RCVLOWAT`` is set to the number
of bytes the parser says it needs next: epoll then wakes us only when they are
all there (Linux honours SO_RCVLOWAT in poll since 2.6.28). With the SNI known,
the runtime picks the context for that name's client-auth class and the socket
is handed to :func:`certgate.tls.transport.accept_tls`, which runs the
handshake on the socket itself (OpenSSL reads and writes it; see there why
not uvloop's TLS layer). A connection that does not send a complete
ClientHello within ``limits.handshake_timeout`` is closed; so is one whose
first bytes are not TLS (a plain ``GET`` gets a one-line 400 first, like nginx's 497 page).
When ``accept`` fails for want of descriptors (EMFILE), accepting pauses
for :data:`ACCEPT_PAUSE`: the backlog keeps the listening socket readable,
and retrying at once would spin the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from certgate import loopfd, metrics
from certgate.hostnames import InvalidHost, normalise_host
from certgate.proxy.client import ClientConnection
from certgate.proxy.info import ConnectionInfo
from certgate.tls.clienthello import MAX_CLIENT_HELLO, peek_client_hello
from certgate.tls.transport import accept_tls

if TYPE_CHECKING:
    from certgate.runtime import Runtime

log = logging.getLogger("certgate.listener")

# Accept at most this many sockets per readiness callback so one busy
# listener cannot starve the rest of the loop (uvicorn and asyncio use 100).
ACCEPT_BATCH = 64
# SO_RCVLOWAT cannot usefully exceed half the receive buffer; a ClientHello
# this large is refused by the parser anyway.
_PEEK_SIZE = MAX_CLIENT_HELLO + 5
# accept() failing for want of descriptors or memory leaves the connection in
# the backlog and the listening socket readable: accepting pauses this long
# instead of spinning (nginx waits 500 ms too).
ACCEPT_PAUSE = 0.5
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 47\r\n\r\n400 Bad Request: this port only speaks HTTPS\n"
)


class Listener:
    """One listening socket, feeding TLS connections into the current runtime."""

    def __init__(self, sock: socket.socket, label: str, current: Callable[[], Runtime]) -> None:
        self.sock = sock
        self.label = label
        self._current = current
        self._loop = asyncio.get_running_loop()
        self._pending: set[_PendingHello] = set()
        self.handshake_failures = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._resume: asyncio.TimerHandle | None = None  # accepting paused (EMFILE)

    def start(self) -> None:
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._on_acceptable)

    def stop(self) -> None:
        """Stop accepting and drop connections still in the ClientHello stage."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for pending in list(self._pending):
            pending.abandon()

    def _on_acceptable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep serving others
                log.warning("accept failed on %s: %s", self.label, exc)
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting()
                return
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer_ip = address[0] if isinstance(address, tuple) else "unix"
            pending = _PendingHello(self, conn, peer_ip)
            self._pending.add(pending)
            pending.start()

    def _pause_accepting(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.sock.fileno())
        self._resume = self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        self._loop.add_reader(self.sock.fileno(), self._on_acceptable)

    def hand_over(self, conn: socket.socket, peer_ip: str, sni_raw: str | None,
                  accepted_at: float | None = None) -> None:
        """Start the TLS handshake on ``conn``; ``accepted_at`` (loop time)
        makes ``limits.handshake_timeout`` one deadline for the ClientHello
        and the handshake together, not one each."""
        runtime = self._current()
        sni: str | None = None
        if sni_raw is not None:
            with contextlib.suppress(InvalidHost):
                sni = normalise_host(sni_raw)
        mode = runtime.routes.handshake_mode(sni)
        context = runtime.contexts.select(sni, mode)
        info = ConnectionInfo(self.label, peer_ip, sni, mode)
        timeout = runtime.config.limits.handshake_timeout
        if accepted_at is not None:
            timeout = max(0.0, timeout - (self._loop.time() - accepted_at))
        task = self._loop.create_task(self._start_tls(runtime, conn, context, info, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_tls(self, runtime: Runtime, conn: socket.socket, context: ssl.SSLContext,
                         info: ConnectionInfo, seconds: float) -> None:
        try:
            await accept_tls(self._loop, conn, context, lambda: ClientConnection(runtime, info),
                             seconds)
        except (ssl.SSLError, OSError, TimeoutError) as failure:
            # OpenSSL's alert has gone out; the socket lingers and closes on
            # its own (tls/transport.py).
            failure.__traceback__ = None
            self.handshake_failures += 1
            metrics.METRICS.handshake(self.label, metrics.handshake_failure_reason(failure))
            runtime.handshake_failed(info, failure)


class _PendingHello:
    """A socket whose ClientHello is still being peeked at."""

    def __init__(self, listener: Listener, conn: socket.socket, peer_ip: str) -> None:
        self.listener = listener
        self.conn = conn
        self.peer_ip = peer_ip
        self.fd = conn.fileno()
        self.timer: asyncio.TimerHandle | None = None
        self.lowat = 1
        self.watching = False  # add_reader was called (the ClientHello was incomplete)
        self.peeked = 0  # bytes the last peek saw
        self.waiting_since: float | None = None  # loop time the hello began to be awaited

    def start(self) -> None:
        # The ClientHello usually follows the client's ACK at once, so it is
        # often in the socket buffer by the time accept() returns: try it
        # now, and only watch the socket (an epoll registration, a timer,
        # and later their removal) when it is not all there yet.
        if self._attempt():
            return
        loop = self.listener._loop
        timeout = self.listener._current().config.limits.handshake_timeout
        self.waiting_since = loop.time()
        self.timer = loop.call_later(timeout, self.abandon, "timeout")
        loopfd.add_reader(loop, self.fd, self._on_readable)
        self.watching = True

    def _finish(self) -> None:
        self.listener._pending.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.watching:
            self.watching = False
            with contextlib.suppress(ValueError, OSError):
                self.listener._loop.remove_reader(self.fd)

    def abandon(self, reason: str | None = None) -> None:
        """Close a socket that never completed a ClientHello.

        Only a ClientHello that stalls past the deadline counts as a failed
        handshake; a TCP connect-and-close (port scanners, load-balancer
        health checks) is not a TLS client and would only skew the ratio.
        """
        self._finish()
        if reason is not None:
            metrics.METRICS.handshake(self.listener.label, reason)
        with contextlib.suppress(OSError):
            self.conn.close()

    def _on_readable(self) -> None:
        self._attempt(woken=True)

    def _attempt(self, woken: bool = False) -> bool:
        """Peek at what has arrived; True once the socket is handed over or
        closed, False while more of the ClientHello is awaited."""
        try:
            data = self.conn.recv(_PEEK_SIZE, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.abandon()
            return True
        if not data:
            self.abandon()
            return True
        peek = peek_client_hello(data)
        if not peek.complete:
            if woken and len(data) <= self.peeked:
                # Woken with nothing new: with SO_RCVLOWAT at what is still
                # missing, that is the client's FIN (or a reset: uvloop runs
                # the callback once on an epoll error). The end of stream
                # stays readable, so waiting would spin the loop until the
                # handshake timeout.
                metrics.METRICS.handshake(self.listener.label, "protocol")
                self.abandon()
                return True
            self.peeked = len(data)
            if peek.need != self.lowat:
                self.lowat = min(peek.need, _PEEK_SIZE)
                try:
                    self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, self.lowat)
                except OSError:
                    self.abandon()
                    return True
            return False
        self._finish()
        if peek.error is not None:
            metrics.METRICS.handshake(self.listener.label, "protocol")
            if data[:1].isalpha():
                with contextlib.suppress(OSError):
                    self.conn.send(_PLAIN_HTTP_ANSWER)
            with contextlib.suppress(OSError):
                self.conn.close()
            return True
        if self.lowat != 1:
            try:
                self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            except OSError:
                self.abandon()
                return True
        self.listener.hand_over(self.conn, self.peer_ip, peek.sni, self.waiting_since)
        return True
