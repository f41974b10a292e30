"""One transport speaking HTTP/1.1, with flow control both ways.

The HTTP state machine is h11 on the client side (hostile bytes arrive
there) and :mod:`certgate.http.upstream_http` on the upstream side.

Theory of operation. Bytes arrive in :meth:`data_received` and wait in a
local buffer; they are handed to h11 only when the reader asks for the next
event and h11 says it needs data. So memory per connection is bounded by
``HIGH_WATER`` plus what h11 holds for one event: above ``HIGH_WATER`` the
transport is paused (``pause_reading``) and resumed once the reader has taken
the buffer. In the other direction, :meth:`send` writes straight to the
transport and :meth:`drain` waits while the transport's own write buffer is
above its high-water mark (asyncio calls ``pause_writing``/``resume_writing``).
A slow reader on one side therefore stops reads on the other side: a 1 GiB
upload never piles up in certgate.

Timers are ``call_later`` handles that fail the waiting reader, not a
``wait_for`` per read (STYLE.md, uvicorn).

After an HTTP upgrade the channel switches to raw mode: h11 is dropped and
:mod:`certgate.proxy.tunnel` pipes bytes between two channels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol, cast

import h11

from certgate.proxy.pace import BodyPace, BodyTooSlow, Verdict

# 64 KiB: one read from the client's TLS transport is up to 64 KiB
# (tls/transport.py) and uvloop's TCP reads are 256 KiB, so a pause takes
# effect within a read or two while keeping syscalls large.
HIGH_WATER = 64 * 1024


class ChannelClosed(Exception):
    """The peer went away (EOF or reset) while we waited for it."""


class ChannelTimeout(Exception):
    """A deadline set with :meth:`Channel.set_deadline` passed."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class HTTPState(Protocol):
    """What a channel needs of its HTTP state machine: ``h11.Connection`` on
    the client side, :class:`certgate.http.upstream_http.UpstreamHTTP` on the
    upstream side."""

    def next_event(self) -> Any: ...

    def receive_data(self, data: bytes) -> None: ...

    def send(self, event: Any) -> bytes | None: ...

    @property
    def trailing_data(self) -> tuple[bytes, bool]: ...


def settle(done: asyncio.Future[None], exc: BaseException | None = None) -> None:
    """End a relay's ``done`` future with ``exc`` (or success), once: the
    relays' callbacks (sink, end of stream, loss, timers) race to it, and
    the first verdict is the one that counts."""
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


class Channel(asyncio.Protocol):
    """Bytes <-> HTTP events for one transport."""

    transport: asyncio.Transport

    def __init__(self, conn: HTTPState) -> None:
        self.http = conn
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._eof = False
        self._lost = False
        self._reading_paused = False
        self._writing_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out: str | None = None
        # Raw mode (after an upgrade): bytes go to this callback, not h11.
        #: Writes held back to go out as one (see :meth:`cork`).
        self._corked: list[bytes] | None = None
        self._raw_sink: Callable[[bytes], None] | None = None
        self._raw_eof: Callable[[], None] | None = None
        #: Called when the transport can take writes again (tunnel backpressure).
        self.on_writable: Callable[[], None] | None = None
        #: Set while a tunnel runs on this channel: ends it cleanly (shutdown).
        self.on_going_away: Callable[[], None] | None = None
        #: Called when the connection is lost (a body relay stops at once).
        self.on_lost: Callable[[], None] | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport API without
        # subclassing asyncio.Transport, hence a cast rather than a check.
        self.transport = cast(asyncio.Transport, transport)
        self._is_tls = transport.get_extra_info("sslcontext") is not None

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self._raw_sink is not None:
            self._raw_sink(data)
            return
        self._buffer += data
        if len(self._buffer) > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._raw_eof is not None:
            self._raw_eof()
        self._wake_reader()
        # Keep a plain TCP write side open (half-close) so a response can still
        # be sent after the peer finished sending; TLS has no half-close.
        return None if self._is_tls else True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        self.cancel_deadline()
        if self._raw_eof is not None:
            self._raw_eof()
        self._wake_reader()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ChannelClosed("connection lost"))
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.on_writable is not None:
            self.on_writable()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading ----------------------------------------------------------
    def _wake_reader(self) -> None:
        waiter, self._read_waiter = self._read_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def lost(self) -> bool:
        return self._lost

    @property
    def at_eof(self) -> bool:
        """The peer finished sending (half-closed or gone)."""
        return self._eof

    @property
    def has_buffered_data(self) -> bool:
        return bool(self._buffer)

    @property
    def unread_bytes(self) -> int:
        """Bytes received that no request has taken yet: waiting here or in the
        HTTP state's receive buffer (at a request's end: the pipelined ones).

        0 in raw mode, where every byte goes to the sink as it arrives.
        ``trailing_data`` copies h11's buffer, which is empty or small
        between requests: call this once per request, not per read.
        """
        if self._raw_sink is not None:
            return 0
        return len(self._buffer) + len(self.http.trailing_data[0])

    async def next_event(self, before_waiting: Channel | None = None) -> Any:
        """The next h11 event; raises ChannelTimeout or h11.RemoteProtocolError.

        ``before_waiting`` is uncorked before this channel waits for bytes, so
        what was corked there goes out as soon as nothing more is ready here.
        """
        while True:
            event = self.http.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._buffer:
                self.http.receive_data(bytes(self._buffer))
                self._buffer.clear()
                if self._reading_paused and not self._lost:
                    self._reading_paused = False
                    self.transport.resume_reading()
                continue
            if self._eof:
                self.http.receive_data(b"")
                continue
            if before_waiting is not None:
                before_waiting.uncork()
            await self._wait_readable()

    async def wait_for_data(self) -> bool:
        """Wait until bytes are buffered; False if the peer closed first."""
        while not self._buffer and not self.http.trailing_data[0]:
            if self._eof:
                return False
            await self._wait_readable()
        return True

    async def _wait_readable(self) -> None:
        if self._timed_out is not None:
            raise ChannelTimeout(self._timed_out)
        waiter = self._loop.create_future()
        self._read_waiter = waiter
        try:
            await waiter
        finally:
            self._read_waiter = None
        if self._timed_out is not None:
            raise ChannelTimeout(self._timed_out)

    def set_deadline(self, seconds: float, what: str) -> None:
        """Fail the reader with ChannelTimeout(what) if it is still waiting then."""
        self.cancel_deadline()
        self._timer = self._loop.call_later(seconds, self._on_deadline, what)

    def cancel_deadline(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self, what: str) -> None:
        self._timer = None
        self._timed_out = what
        self._wake_reader()

    def clear_timeout(self) -> None:
        self._timed_out = None

    # -- writing ----------------------------------------------------------
    def send(self, event: Any) -> None:
        data = self.http.send(event)
        if data and not self._lost:
            self.bytes_out += len(data)
            if self._corked is not None:
                self._corked.append(data)
            else:
                self.transport.write(data)

    def cork(self) -> None:
        """Hold writes until :meth:`uncork`, to send them as one.

        Over TLS every transport write is its own record and its own send
        syscall; a response head and a body that the upstream delivered
        together go out together instead (one record, one syscall).
        """
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        pending, self._corked = self._corked, None
        if pending and not self._lost:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    @property
    def corked(self) -> bool:
        return self._corked is not None

    def write_raw(self, data: bytes) -> None:
        """Write bytes as they are (held while corked)."""
        if data and not self._lost:
            self.bytes_out += len(data)
            if self._corked is not None:
                self._corked.append(data)
            else:
                self.transport.write(data)

    async def drain(self, give_up_after: float | None = None) -> None:
        """Wait while the transport holds more than its high-water mark.

        ``give_up_after``: a peer that lets nothing drain for that long has its
        connection aborted and ChannelClosed is raised. A client that never
        reads advertises a zero window, which the kernel probes forever:
        nothing else would end the wait.
        """
        if self._lost:
            raise ChannelClosed("connection lost")
        if not self._writing_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiter = waiter
        if give_up_after is None:
            await waiter
            return
        try:
            async with asyncio.timeout(give_up_after):
                await waiter
        except TimeoutError:
            self.abort()
            raise ChannelClosed(f"peer took nothing for {give_up_after:g}s") from None

    def close(self) -> None:
        self.cancel_deadline()
        if not self._lost:
            self.transport.close()

    def abort(self) -> None:
        self.cancel_deadline()
        if not self._lost:
            self.transport.abort()

    def going_away(self) -> bool:
        """Shutdown: ask a tunnel on this channel to end cleanly; False if none runs."""
        if self.on_going_away is None:
            return False
        self.on_going_away()
        return True

    # -- raw mode ---------------------------------------------------------
    async def next_body_event(self, pace: BodyPace) -> Any:
        """The next request-body event, within ``pace``'s limits.

        Raises:
            ChannelTimeout: no body byte for the pace's idle time (-> 408).
            BodyTooSlow: a whole window below the minimum rate (-> 408).
            h11.RemoteProtocolError: a malformed body (-> 400).
        """
        loop = self._loop
        try:
            while True:
                self.set_deadline(pace.wait_for(loop.time()), "request body")
                try:
                    event = await self.next_event()
                except ChannelTimeout:
                    self.clear_timeout()
                    verdict = pace.judge(loop.time())
                    if verdict is Verdict.STALLED:
                        raise
                    if verdict is Verdict.TOO_SLOW:
                        raise BodyTooSlow(pace.describe()) from None
                    continue
                if isinstance(event, h11.Data):
                    pace.progress(len(event.data), loop.time())
                return event
        finally:
            self.cancel_deadline()

    def switch_to_raw(self, sink: Callable[[bytes], None], on_eof: Callable[[], None]) -> bytes:
        """Stop parsing HTTP; return bytes already received past the HTTP part."""
        leftover = bytes(self.http.trailing_data[0]) + bytes(self._buffer)
        self._buffer.clear()
        self._raw_sink = sink
        self._raw_eof = on_eof
        if self._reading_paused and not self._lost:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._eof:
            on_eof()
        return leftover

    def switch_from_raw(self, unread: bytes = b"") -> None:
        """Back to HTTP after a body relay: later bytes are buffered again.

        ``unread``: bytes the relay took past its body (a pipelined request),
        read next as if they had just arrived.
        """
        self._raw_sink = None
        self._raw_eof = None
        if unread:
            self._buffer += unread
        if len(self._buffer) <= HIGH_WATER:
            self.resume_reading()

    def pause_reading(self) -> None:
        if not self._reading_paused and not self._lost:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and not self._lost:
            self._reading_paused = False
            self.transport.resume_reading()

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused
