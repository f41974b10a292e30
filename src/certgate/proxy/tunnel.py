"""Raw byte pipe between a client and an upstream after ``101 Switching Protocols``.

WebSockets (Home Assistant's ``/api/websocket``, Immich's socket.io) live
here for hours. Both channels are switched to raw mode: every chunk read on
one side is written to the other at once (no buffering, so frames are not
delayed), and when one side's write buffer fills, reading from the other side
pauses until it drains. An idle timer, reset by traffic in either direction,
closes tunnels nobody uses; a half-close on one side ends the tunnel once
pending bytes are written.

Every tunnel is a checked WebSocket handshake (:mod:`certgate.http.upgrade`
forwards no other upgrade). At shutdown the tunnel ends the way a WebSocket
server going down should (RFC 6455 section 7.4.1): each side gets a Close
frame with 1001 "going away", sent at the next frame boundary of its
direction (:mod:`certgate.proxy.wsframes` follows them), anything after it
in that direction is dropped, and the TCP connections close once both sides
have answered with their Close frame or gone, or after CLOSE_WAIT seconds.
A browser then reports a clean close and reconnects, instead of an abnormal
1006 drop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from certgate.proxy.channel import Channel
from certgate.proxy.wsframes import FrameTracker, close_frame

# After sending "going away", how long both sides get to answer with their
# own Close frame before the TCP connections close anyway. Browsers answer
# at once; 2 s covers a busy phone without holding shutdown up.
CLOSE_WAIT = 2.0


class _Direction:
    """One direction of the tunnel, with the frame boundaries it has passed."""

    def __init__(self, source: Channel, target: Channel, *, to_upstream: bool) -> None:
        self.source = source
        self.target = target
        self.to_upstream = to_upstream  # certgate is the WebSocket client there: mask
        self.frames = FrameTracker()
        self.closing = False  # "going away" asked for; the Close goes at the next boundary
        self.close_sent = False
        self.source_done = False  # the source answered with Close, or ended

    def forward(self, data: bytes) -> None:
        if not self.closing:
            self.frames.feed(data)
            self.target.write_raw(data)
            return
        if not self.close_sent:
            # The rest of the current frame still goes through, then the Close.
            taken = self.frames.feed(data, stop_at_boundary=True)
            if taken:
                self.target.write_raw(data[:taken])
            if not self.frames.at_boundary:
                return
            self.send_close()
            data = data[taken:]
        # After our Close nothing more may go this way; only watch for the
        # source's own Close (its answer to the one it got from us).
        self.frames.feed(data)
        self.source_done = self.source_done or self.frames.close_seen

    def start_closing(self) -> None:
        self.closing = True
        if self.frames.at_boundary:
            self.send_close()

    def send_close(self) -> None:
        self.close_sent = True
        self.target.write_raw(close_frame(masked=self.to_upstream))


async def run_tunnel(client: Channel, upstream: Channel, idle_timeout: float) -> None:
    """Pipe bytes both ways until either side closes or the tunnel idles out.

    While it runs, ``client.going_away()`` (shutdown) ends it cleanly; see
    the module docstring.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    last_activity = loop.time()
    outward = _Direction(client, upstream, to_upstream=True)
    inward = _Direction(upstream, client, to_upstream=False)
    closing = False
    close_timer: asyncio.TimerHandle | None = None

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def check_closed() -> None:
        # Both sides answered (or went away): the closing handshake is over.
        if closing and all(d.close_sent and d.source_done for d in (outward, inward)):
            finish()

    def pipe(direction: _Direction) -> Callable[[bytes], None]:
        source, target = direction.source, direction.target

        def sink(data: bytes) -> None:
            nonlocal last_activity
            last_activity = loop.time()
            direction.forward(data)
            if target.writing_paused:
                source.pause_reading()
            check_closed()

        def writable() -> None:
            source.resume_reading()

        target.on_writable = writable
        return sink

    def source_ended(direction: _Direction) -> Callable[[], None]:
        def ended() -> None:
            if not closing:
                finish()
                return
            direction.source_done = True
            check_closed()

        return ended

    def going_away() -> None:
        nonlocal closing, close_timer
        if closing or done.done():
            return
        closing = True
        for direction in (outward, inward):
            direction.start_closing()
            if direction.source.at_eof:
                direction.source_done = True
        close_timer = loop.call_later(CLOSE_WAIT, finish)
        check_closed()

    client_sink = pipe(outward)
    upstream_sink = pipe(inward)
    leftover_client = client.switch_to_raw(client_sink, source_ended(outward))
    leftover_upstream = upstream.switch_to_raw(upstream_sink, source_ended(inward))
    if leftover_client:
        outward.forward(leftover_client)
    if leftover_upstream:
        inward.forward(leftover_upstream)
    client.on_going_away = going_away

    timer: asyncio.TimerHandle | None = None

    def check_idle() -> None:
        nonlocal timer
        idle_for = loop.time() - last_activity
        if idle_for >= idle_timeout:
            finish()
        else:
            timer = loop.call_later(idle_timeout - idle_for, check_idle)

    timer = loop.call_later(idle_timeout, check_idle)
    try:
        await done
    finally:
        timer.cancel()
        if close_timer is not None:
            close_timer.cancel()
        client.on_going_away = None
        client.on_writable = None
        upstream.on_writable = None
        client.close()
        upstream.close()
