"""A response body framed by Content-Length (or by the upstream's close),
relayed to the client as the upstream delivers it.

Theory of operation. Once the response head is read, the upstream channel
is switched to raw mode, as the tunnel does after a 101: each chunk uvloop
hands to ``data_received`` goes to the client transport at once, framed by
:class:`certgate.http.client_response.ResponseWriter` (as it is under a
Content-Length; chunked for a close-delimited body to an HTTP/1.1 client),
while the bytes still owed are counted here. Nothing is held in the
channel's buffer, the upstream reader's buffer or an ``h11.Data`` event
(issue #15: a download copied each byte about five times in Python
buffers). Backpressure is the tunnel's: above the client transport's
high-water mark, reading from the upstream pauses until it drains. A timer
re-armed on progress fails the relay when the upstream sends nothing for
``read_timeout`` while certgate is not the one holding it paused, and when
the client takes nothing for ``read_timeout`` while certgate holds the
upstream paused for it (nginx's send_timeout): a client that stops reading
a download must not pin its connection and an upstream connection forever.

Chunked upstream bodies still go through the reader's events: their
framing has to be parsed and re-made, and chunk by chunk is what they are.
"""

from __future__ import annotations

import asyncio

from certgate.http.client_response import ResponseWriter
from certgate.proxy.channel import Channel, ChannelClosed, ChannelTimeout
from certgate.proxy.channel import settle as settle_once

__all__ = ["relay_body"]


async def relay_body(client: Channel, upstream: Channel, writer: ResponseWriter,
                     buffered: bytes, left: int | None, read_timeout: float) -> bool:
    """Relay the body; True when the upstream may carry another request.

    Args:
        buffered: body bytes the upstream reader already held.
        left: the Content-Length (> 0), or None for a body that runs to the
            upstream's close.

    Raises:
        ChannelClosed: the upstream closed before the Content-Length was
            met, or the client went away.
        ChannelTimeout: the upstream sent nothing for ``read_timeout``, or
            the client took nothing for as long while the upstream waited.
    """
    if left is not None and len(buffered) >= left:
        # The whole body came with the head (most small responses): no
        # switch to raw mode, no timer.
        client.write_raw(writer.data(buffered[:left] if len(buffered) > left else buffered))
        client.write_raw(writer.end())
        client.uncork()
        return len(buffered) == left
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    last_progress = loop.time()
    overran = False  # bytes past the body: the upstream connection is not reused
    held_since: float | None = None  # when certgate paused the upstream for the client
    upstream_ended = False
    started = False

    def settle(exc: BaseException | None = None) -> None:
        settle_once(done, exc)

    def sink(data: bytes) -> None:
        nonlocal left, last_progress, overran, held_since
        if done.done():
            overran = True
            return
        if client.lost:
            settle(ChannelClosed("client went away mid-body"))
            return
        last_progress = loop.time()
        if left is not None:
            if len(data) >= left:
                overran = len(data) > left
                client.write_raw(writer.data(data[:left] if overran else data))
                left = 0
                settle()
                return
            left -= len(data)
        client.write_raw(writer.data(data))
        if client.writing_paused:
            upstream.pause_reading()
            if held_since is None:
                held_since = loop.time()

    def ended() -> None:
        nonlocal upstream_ended
        upstream_ended = True
        if started:
            finish_at_close()

    def finish_at_close() -> None:
        if left is None:
            settle()
        else:
            settle(ChannelClosed("upstream closed mid-body"))

    def writable() -> None:
        nonlocal last_progress, held_since
        last_progress = loop.time()  # the upstream's silence counts from now
        held_since = None
        upstream.resume_reading()

    def lost() -> None:
        settle(ChannelClosed("client went away mid-body"))

    timer: asyncio.TimerHandle | None = None

    def check_idle() -> None:
        nonlocal timer
        if client.writing_paused:  # certgate holds the upstream, not the other way
            held = loop.time() - (held_since if held_since is not None else last_progress)
            if held >= read_timeout:
                settle(ChannelTimeout("client not reading the response body"))
            else:
                timer = loop.call_later(read_timeout - held, check_idle)
            return
        idle_for = loop.time() - last_progress
        if idle_for >= read_timeout:
            settle(ChannelTimeout("response body"))
        else:
            timer = loop.call_later(read_timeout - idle_for, check_idle)

    client.on_writable = writable
    client.on_lost = lost
    leftover = upstream.switch_to_raw(sink, ended)
    started = True
    try:
        if buffered or leftover:
            sink(buffered + leftover if buffered and leftover else buffered or leftover)
        if upstream_ended:
            finish_at_close()
        if not done.done():
            client.uncork()  # what is ready went out with the head; now wait
            timer = loop.call_later(read_timeout, check_idle)
        await done
    finally:
        if timer is not None:
            timer.cancel()
        client.on_writable = None
        client.on_lost = None
        upstream.switch_from_raw()
    client.write_raw(writer.end())
    client.uncork()
    return left == 0 and not overran and not upstream_ended
