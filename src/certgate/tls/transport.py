"""The client side's TLS transport: a non-blocking ``ssl.SSLSocket`` watched
with ``add_reader``/``add_writer``.

Why not uvloop's SSL layer (``connect_accepted_socket(ssl=...)``): it runs
OpenSSL on memory BIOs, so every record is copied from the socket into a
BIO, decrypted into a fresh 256 KiB ``bytes`` per read, and on the way out
encrypted into another BIO and copied to the socket, with Cython
bookkeeping at each step. Here OpenSSL reads and writes the socket itself.
Measured on a bare keep-alive responder (one worker, 32 connections, this
repository's 2-core host): 95-103 µs of server CPU per request through
uvloop's layer, 34-40 µs through this one (issue #15). An idle connection
also no longer holds a read buffer of its own.

Theory of operation.

* :func:`accept_tls` runs the handshake (``do_handshake`` on readiness)
  under a deadline. A failed handshake has already written OpenSSL's alert
  to the socket (``certificate_required``, ``unknown_ca``,
  ``certificate_revoked``...); the socket then *lingers* (:func:`_linger`):
  what the client still sends (Chromium sends its request right behind its
  Finished) is read and dropped until it closes, for at most
  :data:`LINGER_SECONDS` and :data:`LINGER_READS` reads, because closing
  with unread bytes makes the kernel send a reset that can overtake the
  alert, and the browser says "site can't be reached" instead of naming
  the certificate.
* :class:`TLSTransport` is an ``asyncio.Transport``: reads go to
  ``data_received`` a record at a time, at most :data:`READS_PER_WAKE` per
  readiness callback; OpenSSL may hold decrypted bytes that epoll cannot
  see, so when the budget runs out, or reading resumes, the next read is
  scheduled rather than waited for. Writes go out at once when nothing is
  queued; what the socket cannot take is queued, and a ``send`` that
  raised ``SSLWantWriteError`` is retried with the same bytes, as OpenSSL
  requires. ``pause_writing``/``resume_writing`` follow the queue's size.
* ``close()`` flushes the queue, sends ``close_notify``, shuts the write
  side and lingers as above before the socket is closed and
  ``connection_lost`` is called; ``abort()`` closes at once. A queue the
  client never takes is dropped after :data:`CLOSE_FLUSH_SECONDS` (abort).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from certgate import loopfd

__all__ = ["CLOSE_FLUSH_SECONDS", "LINGER_READS", "LINGER_SECONDS", "TLSTransport", "accept_tls",
           "lingering"]

log = logging.getLogger("certgate.tls")

#: How long a closed connection keeps reading and dropping what the client
#: still sends (nginx lingers up to 30 s, lingering_time; a client that got
#: an alert or a close_notify stops within a round trip).
LINGER_SECONDS = 2.0
#: Reads dropped while lingering, 64 KiB each at most.
LINGER_READS = 32
#: Plaintext bytes asked of OpenSSL per read: more than one TLS record.
READ_SIZE = 64 * 1024
#: Reads per readiness callback before other connections get a turn.
READS_PER_WAKE = 16
#: Queued bytes joined into one ``send`` (fewer, larger TLS records).
JOIN_LIMIT = 256 * 1024
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
#: How long ``close()`` waits, with queued bytes and a socket that never once
#: becomes writable, before it aborts: a client that never reads advertises a
#: zero window, which the kernel probes forever (uvloop's TLS layer bounded
#: the whole close the same way, its ssl_shutdown_timeout).
CLOSE_FLUSH_SECONDS = 30.0


async def accept_tls(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                     context: ssl.SSLContext, protocol_factory: Callable[[], asyncio.Protocol],
                     handshake_timeout: float) -> TLSTransport:
    """Complete the server side of a TLS handshake on ``sock``, then start
    the protocol on a :class:`TLSTransport`.

    Raises:
        ssl.SSLError, OSError: the handshake failed (the socket lingers,
            then closes, on its own).
        TimeoutError: no complete handshake within ``handshake_timeout`` seconds.
    """
    try:
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise
    fd = tls.fileno()
    done: asyncio.Future[None] = loop.create_future()
    watching: list[str] = []  # "r" or "w": what the handshake waits for

    def unwatch() -> None:
        for kind in watching:
            with contextlib.suppress(ValueError, OSError):
                (loop.remove_reader if kind == "r" else loop.remove_writer)(fd)
        watching.clear()

    def watch(kind: str) -> None:
        if watching == [kind]:
            return
        unwatch()
        (loopfd.add_reader if kind == "r" else loopfd.add_writer)(loop, fd, step)
        watching.append(kind)

    def step() -> None:
        if done.done():
            return
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            watch("r")
            return
        except ssl.SSLWantWriteError:
            watch("w")
            return
        except (ssl.SSLError, OSError) as exc:
            # Kept without its traceback: its frames hold the socket, and
            # the cycle would keep OpenSSL's memory until a full GC.
            exc.__traceback__ = None
            done.set_exception(exc)
            return
        done.set_result(None)

    def keep_reader() -> bool:
        """Stop watching for writes; True if the fd is still watched for reads
        (the next add_reader then only swaps the callback: no epoll_ctl)."""
        if watching == ["w"]:
            unwatch()
        reading = watching == ["r"]
        watching.clear()
        return reading

    timer = loop.call_later(handshake_timeout, _expire, done)
    step()
    try:
        await done
    except BaseException:
        # Refused (OpenSSL's alert is out: let it be read), timed out, or
        # the listener stopped.
        _linger(loop, tls, None, watched=keep_reader(), half_close=False)
        raise
    finally:
        timer.cancel()
    watched = keep_reader()
    try:
        transport = TLSTransport(loop, tls, protocol_factory(), context)
    except BaseException:
        # Still watched by step(), which now returns at once: it would spin.
        _close_now(loop, tls, watched)
        raise
    try:
        transport.start(watched=watched)
    except BaseException:
        transport.discard()
        raise
    return transport


def _close_now(loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket, watched: bool) -> None:
    if watched:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(sock.fileno())
    with contextlib.suppress(OSError):
        sock.close()


def _expire(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_exception(TimeoutError("TLS handshake timed out"))


_lingering = 0


def lingering() -> int:
    """Sockets of this process still lingering before their close."""
    return _lingering


def _linger(loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket,
            then: Callable[[], None] | None, *, watched: bool = False,
            half_close: bool = True) -> None:
    """Drop what still arrives, then close ``sock``.

    The bytes are read from the descriptor, under TLS: nothing read here
    is ever interpreted. ``watched``: the loop already watches the socket
    for reads (its callback is swapped, which costs no syscall).
    ``half_close``: shut the write side first (after a close_notify, so the
    client's read ends at once). Not after a refused handshake: Chromium,
    seeing the end of the stream while it still sends its request, reports
    ERR_SOCKET_NOT_CONNECTED instead of the alert (tests/browser).
    """
    global _lingering
    _lingering += 1
    fd = sock.fileno()  # -1 if already closed
    if half_close and fd >= 0:
        with contextlib.suppress(OSError):
            # ENOTCONN when the client is already gone: the linger is short then.
            sock.shutdown(socket.SHUT_WR)
    reads = 0
    timer: asyncio.TimerHandle | None = None
    registered = watched

    finished = False

    def finish() -> None:
        global _lingering
        nonlocal finished
        if finished:
            return
        finished = True
        _lingering -= 1
        if timer is not None:
            timer.cancel()
        if fd >= 0 and registered:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            sock.close()
        if then is not None:
            then()

    def drop() -> None:
        nonlocal reads
        reads += 1
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data or reads >= LINGER_READS:
            finish()

    if fd < 0:
        finish()
        return
    timer = loop.call_later(LINGER_SECONDS, finish)
    try:
        loopfd.add_reader(loop, fd, drop)
        registered = True
    except (ValueError, OSError, RuntimeError):  # RuntimeError: the loop closed
        finish()


#: What a transport points to once its protocol got connection_lost.
_GONE = asyncio.Protocol()


class TLSTransport(asyncio.Transport):
    """One accepted TLS connection (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket,
                 protocol: asyncio.Protocol, context: ssl.SSLContext) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._context = context
        self._reading = False  # registered with add_reader
        self._read_paused = False
        self._read_scheduled = False
        self._read_needs_write = False  # OpenSSL must write before it can read on
        self._queue: collections.deque[bytes] = collections.deque()
        self._retry: bytes | None = None  # a send that wants the same bytes again
        self._queued = 0
        self._writing = False  # registered with add_writer
        self._protocol_paused = False
        self._high = HIGH_WATER
        self._low = LOW_WATER
        self._closing = False
        self._lost = False
        self._flush_timer: asyncio.TimerHandle | None = None  # close() waiting on the queue
        self._writable_count = 0  # times the socket became writable while queued

    # -- setup and introspection -------------------------------------------
    def start(self, watched: bool = False) -> None:
        """Call connection_made and start reading. ``watched``: the loop
        already watches the socket for reads (the handshake's registration,
        taken over without a syscall)."""
        self._reading = watched
        self._protocol.connection_made(self)
        if self._reading:
            loopfd.add_reader(self._loop, self._fd, self._read_ready)  # swaps the callback
        if self._read_paused or self._closing:
            self._unwatch_reads()
        elif not self._closing:
            self._watch_reads()
            # Bytes that arrived with the handshake's last flight may already
            # be decrypted inside OpenSSL, where epoll cannot see them.
            self._schedule_read()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._sock
        if name == "sslcontext":
            return self._context
        if name == "socket":
            return self._sock
        if name in ("peername", "sockname"):
            with contextlib.suppress(OSError):
                return (self._sock.getpeername() if name == "peername"
                        else self._sock.getsockname())
            return default
        if name == "peercert":
            return self._sock.getpeercert()
        if name == "cipher":
            return self._sock.cipher()
        return default

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # -- reading -------------------------------------------------------------
    def is_reading(self) -> bool:
        return not self._read_paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._read_paused:
            return
        self._read_paused = True
        self._unwatch_reads()

    def resume_reading(self) -> None:
        if self._closing or not self._read_paused:
            return
        self._read_paused = False
        self._watch_reads()
        self._schedule_read()

    def _watch_reads(self) -> None:
        if not self._reading:
            loopfd.add_reader(self._loop, self._fd, self._read_ready)
            self._reading = True

    def _unwatch_reads(self) -> None:
        if self._reading:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._fd)
            self._reading = False

    def _schedule_read(self) -> None:
        if not self._read_scheduled:
            self._read_scheduled = True
            self._loop.call_soon(self._scheduled_read)

    def _scheduled_read(self) -> None:
        self._read_scheduled = False
        self._read_ready()

    def _read_ready(self) -> None:
        for _ in range(READS_PER_WAKE):
            if self._read_paused or self._closing:
                return
            try:
                data = self._sock.recv(READ_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                # A key update or alert to answer first: read again once the
                # socket takes writes.
                self._read_needs_write = True
                self._unwatch_reads()
                self._watch_writes()
                return
            except (ssl.SSLError, OSError) as exc:
                self._fatal(exc)
                return
            if not data:
                self._eof()
                return
            try:
                self._protocol.data_received(data)
            except Exception:
                log.exception("error in a TLS connection's protocol")
                self.abort()
                return
        # Read ahead (tls/openssl.py: set_read_ahead) lets OpenSSL hold whole
        # records epoll cannot see, so reading goes on until "want read",
        # and after READS_PER_WAKE reads, on the next turn of the loop.
        self._schedule_read()

    def _eof(self) -> None:
        self._unwatch_reads()
        try:
            keep_open = self._protocol.eof_received()
        except Exception:
            log.exception("error in a TLS connection's protocol")
            self.abort()
            return
        if not keep_open:
            self.close()

    # -- writing -------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        chunk = bytes(data)
        if self._queue or self._retry is not None:
            self._queue.append(chunk)
            self._queued += len(chunk)
        else:
            self._send(chunk)
        self._check_high_water()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def _send(self, chunk: bytes) -> bool:
        """Send ``chunk`` now; queue what the socket cannot take. True if all went."""
        try:
            sent = self._sock.send(chunk)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            self._retry = chunk
            self._queued += len(chunk)
            self._watch_writes()
            return False
        except (ssl.SSLError, OSError) as exc:
            self._fatal(exc)
            return False
        if sent < len(chunk):  # partial writes, should a build enable them
            rest = chunk[sent:]
            self._queue.appendleft(rest)
            self._queued += len(rest)
            self._watch_writes()
            return False
        return True

    def _watch_writes(self) -> None:
        if not self._writing and not self._lost:
            loopfd.add_writer(self._loop, self._fd, self._write_ready)
            self._writing = True

    def _unwatch_writes(self) -> None:
        if self._writing:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(self._fd)
            self._writing = False

    def _write_ready(self) -> None:
        self._writable_count += 1  # the peer took bytes (see _flush_expired)
        if self._read_needs_write:
            self._read_needs_write = False
            if not self._read_paused and not self._closing:
                self._watch_reads()
                self._schedule_read()
        while self._retry is not None or self._queue:
            if self._retry is not None:
                chunk, self._retry = self._retry, None
            else:
                chunk = self._take()
            self._queued -= len(chunk)
            if not self._send(chunk):
                return
        self._unwatch_writes()
        if self._protocol_paused and self._queued <= self._low:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except Exception:
                log.exception("error in a TLS connection's protocol")
                self.abort()
                return
        if self._closing and not self._lost:
            self._shut()

    def _take(self) -> bytes:
        """The next queued bytes, small chunks joined up to JOIN_LIMIT."""
        first = self._queue.popleft()
        if len(first) >= JOIN_LIMIT or not self._queue:
            return first
        parts = [first]
        size = len(first)
        while self._queue and size + len(self._queue[0]) <= JOIN_LIMIT:
            part = self._queue.popleft()
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    def _check_high_water(self) -> None:
        if not self._protocol_paused and self._queued > self._high and not self._lost:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except Exception:
                log.exception("error in a TLS connection's protocol")
                self.abort()

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low
        self._check_high_water()

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    # -- closing -------------------------------------------------------------
    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._retry is None and not self._queue:
            self._shut()  # the linger takes the read registration over
        else:
            # _write_ready shuts once the queue is out; meanwhile nothing is
            # read (a level-triggered reader would spin).
            self._unwatch_reads()
            self._arm_flush_timer()

    def abort(self) -> None:
        if self._lost:
            return
        self._close_now()
        self._connection_lost(None)

    def discard(self) -> None:
        """Unwatch and close the socket without calling the protocol: its
        connection_made failed, so it gets no connection_lost either."""
        self._lost = True
        self._close_now()

    def _close_now(self) -> None:
        """Unwatch, drop what is queued, close the socket: no close_notify,
        no linger (abort, a fatal error, a failed start)."""
        self._closing = True
        self._unwatch_reads()
        self._unwatch_writes()
        self._cancel_flush_timer()
        self._queue.clear()
        self._retry = None
        self._queued = 0
        with contextlib.suppress(OSError):
            self._sock.close()

    def _shut(self) -> None:
        """close_notify, then linger, then connection_lost."""
        self._cancel_flush_timer()
        self._unwatch_writes()
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            # Sends close_notify; the peer's own is not waited for (nor is
            # it by browsers). Raises "want read" on a non-blocking socket.
            self._sock.unwrap()
        self._lost = True  # no more writes or callbacks into the protocol
        watched, self._reading = self._reading, False
        _linger(self._loop, self._sock, lambda: self._deliver_lost(None),
                watched=watched)

    def _fatal(self, exc: BaseException) -> None:
        log.debug("TLS connection failed: %r", exc)
        if self._lost:
            return
        self._close_now()
        self._connection_lost(exc if isinstance(exc, Exception) else None)

    def _arm_flush_timer(self) -> None:
        self._flush_timer = self._loop.call_later(CLOSE_FLUSH_SECONDS, self._flush_expired,
                                                  self._writable_count)

    def _flush_expired(self, writable_then: int) -> None:
        """Abort a close whose socket did not once become writable for
        CLOSE_FLUSH_SECONDS; a client that still takes bytes, however slowly,
        gets another period (nginx's send_timeout runs between two writes,
        not for the whole). Writability is the measure, not the queue: one
        large chunk stays queued whole until OpenSSL has written all of it."""
        self._flush_timer = None
        if self._lost:
            return
        if self._writable_count != writable_then:
            self._arm_flush_timer()
            return
        self.abort()

    def _cancel_flush_timer(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    def _connection_lost(self, exc: Exception | None) -> None:
        self._cancel_flush_timer()
        if self._lost:
            return
        self._lost = True
        self._loop.call_soon(self._deliver_lost, exc)

    def _deliver_lost(self, exc: Exception | None) -> None:
        """connection_lost, then let go of the protocol. The protocol holds
        this transport too; without breaking the cycle both (and the
        connection's buffers, h11 state and SSL object) waited for the
        cyclic GC: after 2,000 connections closed, a worker's heap stayed
        9 MB up until a full collection (benchmarks/soak.py), as asyncio's
        own transports avoid by the same step."""
        protocol, self._protocol = self._protocol, _GONE
        protocol.connection_lost(exc)
