"""A Content-Length request body relayed from the client transport to the
upstream's, without h11's buffer and events in between.

Theory of operation. h11 parses the request head and hands out, as
``h11.Data``, whatever body bytes arrived with it (the exchange forwards
those first; a small POST ends there). For the rest, the client channel is
switched to raw mode, as the response relay does with the upstream channel
(:mod:`certgate.proxy.bodyrelay`): each chunk uvloop hands to
``data_received`` is written to the upstream transport at once, and the
bytes still owed are counted here (issue #15: an upload went through h11's
receive buffer, a ``Data`` event and a write per chunk). A Content-Length
body needs no parsing: its framing is the count, which h11 would only
have counted too. Bytes past the count are the client's next request; they
go back to the client channel for h11 to parse.

Limits are the ones the event loop enforced, kept by a timer re-armed as
it goes:

* the client's pace (:class:`certgate.proxy.pace.BodyPace`): no byte for
  the idle time -> ``ChannelTimeout`` (408), a window below the minimum rate
  -> ``BodyTooSlow`` (408);
* backpressure: above the upstream transport's high-water mark, reading
  from the client pauses until it drains; the time the upstream holds it
  is given back to the client's pace, and an upstream that takes nothing
  for ``read_timeout`` fails with :class:`UpstreamNotReading` (504).

Afterwards h11 never saw the body, so it still waits for it: the client
connection is reused only through a fresh h11 state
(``ClientConnection.next_cycle``), and only when this relay returned.
"""

from __future__ import annotations

import asyncio

from certgate.proxy.channel import HIGH_WATER, Channel, ChannelClosed, ChannelTimeout
from certgate.proxy.channel import settle as settle_once
from certgate.proxy.pace import BodyPace, BodyTooSlow, Verdict

__all__ = ["UpstreamNotReading", "relay_request_body"]

# The shortest re-arm of the pace timer, so a judgement that lands exactly
# on a window's edge cannot spin.
MIN_TICK = 0.01


class UpstreamNotReading(Exception):
    """The upstream took no request-body bytes for the read timeout (-> 504)."""


async def relay_request_body(client: Channel, upstream: Channel, left: int, pace: BodyPace,
                             read_timeout: float) -> None:
    """Relay the ``left`` (> 0) body bytes still to come from ``client``.

    Raises:
        ChannelClosed: either side went away before the body was complete.
        ChannelTimeout: the client sent nothing for the pace's idle time.
        BodyTooSlow: a whole window below the route's minimum rate.
        UpstreamNotReading: the upstream took nothing for ``read_timeout``.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    excess = bytearray()  # past the body: the client's next request
    held_since: float | None = None  # when the upstream's backpressure paused the client
    client_ended = False
    started = False
    timer: asyncio.TimerHandle | None = None

    def settle(exc: BaseException | None = None) -> None:
        settle_once(done, exc)

    def sink(data: bytes) -> None:
        nonlocal left, held_since
        if done.done():
            excess.extend(data)
            if len(excess) > HIGH_WATER:
                client.pause_reading()
            return
        if len(data) >= left:
            pace.progress(left, loop.time())
            upstream.write_raw(data if len(data) == left else data[:left])
            excess.extend(memoryview(data)[left:])
            left = 0
            settle()
            return
        pace.progress(len(data), loop.time())
        left -= len(data)
        upstream.write_raw(data)
        if upstream.writing_paused and held_since is None:
            client.pause_reading()
            held_since = loop.time()

    def writable() -> None:
        nonlocal held_since
        if held_since is not None:
            pace.pause(loop.time() - held_since)
            held_since = None
        client.resume_reading()

    def ended() -> None:
        nonlocal client_ended
        client_ended = True
        if started:
            settle(ChannelClosed("client went away during upload"))

    def upstream_lost() -> None:
        settle(ChannelClosed("upstream closed during upload"))

    def check() -> None:
        nonlocal timer
        timer = None
        if done.done():
            return
        now = loop.time()
        if held_since is not None:
            held = now - held_since
            if held >= read_timeout:
                settle(UpstreamNotReading(f"upstream stopped reading the request body for "
                                          f"{read_timeout:g}s"))
            else:
                timer = loop.call_later(max(read_timeout - held, MIN_TICK), check)
            return
        verdict = pace.judge(now)
        if verdict is Verdict.STALLED:
            settle(ChannelTimeout("request body"))
        elif verdict is Verdict.TOO_SLOW:
            settle(BodyTooSlow(pace.describe()))
        else:
            timer = loop.call_later(max(pace.wait_for(now), MIN_TICK), check)

    upstream.on_writable = writable
    upstream.on_lost = upstream_lost
    leftover = client.switch_to_raw(sink, ended)
    started = True
    try:
        if leftover:
            sink(leftover)
        if upstream.lost:
            upstream_lost()
        if client_ended:
            settle(ChannelClosed("client went away during upload"))
        if not done.done():
            if upstream.writing_paused and held_since is None:
                client.pause_reading()
                held_since = loop.time()
            timer = loop.call_later(max(pace.wait_for(loop.time()), MIN_TICK), check)
        await done
    finally:
        if timer is not None:
            timer.cancel()
        upstream.on_writable = None
        upstream.on_lost = None
        client.switch_from_raw(bytes(excess))
