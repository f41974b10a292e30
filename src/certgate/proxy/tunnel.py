"""Raw byte pipe between a client and an upstream after ``101 Switching Protocols``.

WebSockets (Home Assistant's ``/api/websocket``, Immich's socket.io) live
here for hours. Both channels are switched to raw mode: every chunk read on
one side is written to the other at once (no buffering, so frames are not
delayed), and when one side's write buffer fills, reading from the other side
pauses until it drains. An idle timer, reset by traffic in either direction,
closes tunnels nobody uses; a half-close on one side ends the tunnel once
pending bytes are written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from certgate.proxy.channel import Channel


async def run_tunnel(client: Channel, upstream: Channel, idle_timeout: float) -> None:
    """Pipe bytes both ways until either side closes or the tunnel idles out."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    last_activity = loop.time()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def pipe(source: Channel, target: Channel) -> Callable[[bytes], None]:
        def sink(data: bytes) -> None:
            nonlocal last_activity
            last_activity = loop.time()
            target.write_raw(data)
            if target.writing_paused:
                source.pause_reading()

        def writable() -> None:
            source.resume_reading()

        target.on_writable = writable
        return sink

    client_sink = pipe(client, upstream)
    upstream_sink = pipe(upstream, client)
    leftover_client = client.switch_to_raw(client_sink, finish)
    leftover_upstream = upstream.switch_to_raw(upstream_sink, finish)
    if leftover_client:
        upstream.write_raw(leftover_client)
    if leftover_upstream:
        client.write_raw(leftover_upstream)

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
        client.on_writable = None
        upstream.on_writable = None
        client.close()
        upstream.close()
