"""Relay one request to an upstream and its response back, streaming both ways.

Theory of operation. The request head goes out first; a request body is then
pumped by a separate task while the main flow waits for the response head,
because an upstream may answer (413, 401, 100-continue refusals) before it has
read the body. Each body chunk is written and then ``drain`` awaited on the
receiving side, so at most one chunk plus the transports' buffers is in flight
whatever the body size. Either side vanishing aborts the other: a client that
disconnects mid-upload aborts the upstream request, and an upstream reset
mid-download aborts the client connection (the status line is already sent,
so truncation is the only honest signal).

Retry: a reused pooled connection that dies before a single response byte
arrives is retried once on a fresh connection, but only for a method that is
safe to repeat and a request without a body (never a POST).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import cast

import h11

from certgate import metrics
from certgate.errors import HTTPError
from certgate.http.client_response import request_keep_alive, start_response
from certgate.http.headers import response_headers_for_client
from certgate.http.upgrade import WebSocketUpgrade, refuse_switch
from certgate.http.upstream_http import ResponseHead
from certgate.proxy.bodyrelay import relay_body
from certgate.proxy.channel import Channel, ChannelClosed, ChannelTimeout
from certgate.proxy.pace import BodyPace, BodyTooSlow
from certgate.proxy.requestbody import UpstreamNotReading, relay_request_body
from certgate.proxy.tunnel import run_tunnel
from certgate.proxy.upstream import UpstreamConnection, UpstreamPool

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class BodyTooLarge(Exception):
    """A chunked body grew past the route's max_body mid-upload (-> 413 or a cut)."""


@dataclass(slots=True)
class Plan:
    """Everything the relay needs, decided before any upstream is contacted."""

    pool: UpstreamPool
    request: h11.Request
    has_body: bool
    max_body: int | None
    read_timeout: float
    tunnel_idle: float
    upgrade: WebSocketUpgrade | None  # the checked handshake when the client asks to switch
    client_request: h11.Request  # as the client sent it: the response is framed for it
    route: str = "-"  # the route's name, for metrics labels
    body_min_rate: int = 0  # bytes/s over body_rate_window; 0: no rate check
    body_rate_window: float = 60.0
    body_length: int | None = None  # the request's Content-Length (None: chunked)


@dataclass(slots=True)
class Result:
    status: int
    reusable: bool  # the client connection may serve another request
    #: The response went out without h11 (:mod:`certgate.http.client_response`):
    #: the client's h11 state still waits for it to be sent (see
    #: ``ClientConnection.next_cycle``).
    direct: bool = False
    #: The request body went past h11 (:mod:`certgate.proxy.requestbody`),
    #: complete: h11 still waits for it (see ``ClientConnection.next_cycle``).
    body_relayed: bool = False


async def _pump_body(client: Channel, conn: UpstreamConnection, plan: Plan) -> bool:
    """Copy the client's request body to the upstream, with backpressure.

    True when the body went past h11 (a Content-Length body that did not
    arrive with its head): the client's h11 state never saw it end.
    """
    # The client side is always h11 (proxy/client.py).
    http = cast(h11.Connection, client.http)
    if http.they_are_waiting_for_100_continue:
        client.send(h11.InformationalResponse(status_code=100, headers=[]))
    total = 0
    loop = asyncio.get_running_loop()
    pace = BodyPace.start(plan.body_min_rate, plan.body_rate_window, plan.read_timeout,
                          loop.time())
    try:
        if plan.body_length is not None and plan.upgrade is None:
            return await _relay_length_body(client, conn, plan, http, pace)
        while True:
            event = await client.next_body_event(pace)
            if isinstance(event, h11.Data):
                total += len(event.data)
                if plan.max_body is not None and total > plan.max_body:
                    raise BodyTooLarge
                conn.send(h11.Data(data=event.data))
                if conn.writing_paused:
                    waited_from = loop.time()
                    await _drain_upstream(conn, plan.read_timeout)
                    pace.pause(loop.time() - waited_from)
            elif isinstance(event, h11.EndOfMessage):
                conn.send(h11.EndOfMessage())
                return False
            else:  # ConnectionClosed
                raise ChannelClosed("client went away during upload")
    except BaseException:
        # Whatever stopped the upload, the upstream must not be left waiting
        # for the rest of a body that will never come.
        conn.abort()
        raise
    finally:
        client.cancel_deadline()


async def _relay_length_body(client: Channel, conn: UpstreamConnection, plan: Plan,
                             http: h11.Connection, pace: BodyPace) -> bool:
    """A Content-Length body: what h11 holds as events, the rest transport to
    transport. The length was checked against max_body at admission."""
    assert plan.body_length is not None
    left = plan.body_length
    loop = asyncio.get_running_loop()
    while True:
        event = http.next_event()  # only what h11 already holds: never waits
        if isinstance(event, h11.Data):
            left -= len(event.data)
            pace.progress(len(event.data), loop.time())
            conn.send(h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            conn.send(h11.EndOfMessage())
            return False
        elif event is h11.NEED_DATA:
            break
        else:
            raise ChannelClosed(f"unexpected {type(event).__name__} in a request body")
    if conn.http.hand_over_request_body() != left:
        # Admission copies the Content-Length: a mismatch is a bug, and
        # relaying on either count would desynchronise one side.
        raise h11.LocalProtocolError("request body lengths disagree")
    await relay_request_body(client, conn, left, pace, plan.read_timeout)
    conn.send(h11.EndOfMessage())
    return True


async def _drain_upstream(conn: UpstreamConnection, seconds: float) -> None:
    """Wait for an upstream to take more of the body, at most ``seconds``.

    An upstream that stops reading a request body mid-way (nginx's
    proxy_send_timeout case) would otherwise hold the exchange forever: the
    response-head deadline only starts once the body is sent.
    """
    try:
        async with asyncio.timeout(seconds):
            await conn.drain()
    except TimeoutError:
        raise UpstreamNotReading(f"upstream stopped reading the request body for "
                                 f"{seconds:g}s") from None


async def relay(client: Channel, plan: Plan) -> Result:
    """Send ``plan.request`` upstream and stream the answer to ``client``."""
    retryable = plan.request.method in IDEMPOTENT and not plan.has_body
    attempt = 0
    while True:
        conn = await plan.pool.acquire()
        received_before = conn.bytes_in  # a reused connection has history
        conn.send(plan.request)
        pump: asyncio.Task[bool] | None = None
        if plan.has_body:
            pump = asyncio.create_task(_pump_body(client, conn, plan))
        else:
            conn.send(h11.EndOfMessage())
        try:
            head = await _response_head(conn, plan, pump)
        except (ChannelClosed, h11.RemoteProtocolError) as exc:
            failure = await _settle_pump(pump)
            conn.abort()
            if failure is not None:
                raise failure from None
            nothing_received = conn.bytes_in == received_before
            if conn.reused and retryable and attempt == 0 and nothing_received:
                attempt += 1
                continue
            label = plan.pool.upstream.label
            if nothing_received:
                raise HTTPError(502, f"upstream {label} closed the connection without "
                                     "responding", kind="reset") from None
            # Closed too: an upstream that breaks the protocol (a 101 nobody
            # asked for, among others) may have desynchronised with certgate.
            raise HTTPError(502, f"upstream {label} sent an invalid response: {exc}",
                            close=True, kind="protocol") from None
        except ChannelTimeout:
            await _settle_pump(pump)
            conn.abort()
            raise HTTPError(504, f"upstream {plan.pool.upstream.label} did not respond within "
                                 f"{plan.read_timeout:g}s", close=True, kind="timeout") from None
        break
    return await _deliver(client, conn, plan, head, pump)


async def _settle_pump(pump: asyncio.Task[bool] | None) -> BaseException | None:
    """Stop the upload task; return a client-side failure worth reporting."""
    if pump is None:
        return None
    if not pump.done():
        pump.cancel()
    try:
        await pump
    except BodyTooLarge:
        return HTTPError(413, "request body exceeds this route's max_body", close=True)
    except UpstreamNotReading as exc:
        return HTTPError(504, str(exc), close=True, kind="timeout")
    except ChannelTimeout:
        # The pump's only deadline is the client's, between body chunks: the
        # client stalled mid-upload, which is a 408, not an upstream failure.
        return HTTPError(408, "request body not received in time", close=True)
    except BodyTooSlow as exc:
        return HTTPError(408, str(exc), close=True)
    except h11.RemoteProtocolError:
        # A broken chunked body from the client: the client's fault, a 400,
        # never a 502 that would count as (and alert on) an upstream error.
        return HTTPError(400, "malformed request body", close=True)
    except (asyncio.CancelledError, ChannelClosed):
        return None
    return None


async def _response_head(
    conn: UpstreamConnection, plan: Plan, pump: asyncio.Task[bool] | None
) -> ResponseHead:
    """Wait for the final response head (or a 101); skip other 1xx.

    The read timeout runs from the end of the request body, not from the
    request head: an upstream owes no answer before it has the whole body,
    and a multi-GB upload that keeps moving must not get a 504 (nginx's
    proxy_read_timeout likewise only counts while certgate waits to read).
    A stalled upload is caught by the pump's own per-chunk deadline.
    """
    waiting = True

    def arm(_: object = None) -> None:
        if waiting:
            conn.set_deadline(plan.read_timeout, "response head")

    if pump is not None and not pump.done():
        conn.cancel_deadline()
        pump.add_done_callback(arm)
    else:
        arm()
    try:
        return await _next_head(conn)
    finally:
        waiting = False


async def _next_head(conn: UpstreamConnection) -> ResponseHead:
    while True:
        event = await conn.next_event()
        if isinstance(event, h11.ConnectionClosed):
            raise ChannelClosed("upstream closed")
        if isinstance(event, ResponseHead):
            if event.informational and event.status_code != 101:
                continue  # 100 Continue was answered by certgate; 103 is dropped
            return event
        raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")


async def _deliver(
    client: Channel,
    conn: UpstreamConnection,
    plan: Plan,
    head: ResponseHead,
    pump: asyncio.Task[bool] | None,
) -> Result:
    headers = response_headers_for_client(head.headers)
    if head.status_code == 101:
        refusal = refuse_switch(plan.upgrade, head.headers)
        if refusal is not None or plan.upgrade is None:
            # Nothing has gone to the client yet: answer 502 and close both,
            # so no byte is ever piped through a switch certgate did not check.
            conn.abort()
            raise HTTPError(502, f"upstream {plan.pool.upstream.label} {refusal}", close=True,
                            kind="protocol")
        if pump is not None:
            await pump  # the upgrade request's (empty) body must be complete
        headers += [(b"connection", b"upgrade"), (b"upgrade", plan.upgrade.token)]
        client.send(h11.InformationalResponse(status_code=101, headers=headers,
                                              reason=head.reason))
        conn.cancel_deadline()
        await run_tunnel(client, conn, plan.tunnel_idle)
        return Result(101, reusable=False)

    # The head and body go to the client without h11 (issue #15): the
    # upstream reader checked the names and values, hop-by-hop headers are
    # gone, and client_response frames them exactly as h11 did.
    # The head is corked until the upstream has nothing more ready, so a small
    # response leaves as one TLS record; an SSE stream's head still leaves at
    # once, because next_event uncorks before it waits for upstream bytes.
    request = plan.client_request
    head_bytes, writer = start_response(request.method, request.http_version,
                                        request_keep_alive(request), head.status_code,
                                        head.reason, headers)
    client.cork()
    client.write_raw(head_bytes)
    upstream_reusable = True
    try:
        handed = conn.http.hand_over_body()
        if handed is not None:
            # Content-Length or to-the-close: chunks go straight from the
            # upstream transport to the client's (proxy/bodyrelay.py).
            conn.cancel_deadline()
            buffered, left = handed
            upstream_reusable = await relay_body(client, conn, writer, buffered, left,
                                                 plan.read_timeout)
        while handed is None:
            conn.set_deadline(plan.read_timeout, "response body")
            event = await conn.next_event(before_waiting=client)
            if isinstance(event, h11.Data):
                client.write_raw(writer.data(event.data))
                if not client.corked:
                    # A client that stops reading: bodyrelay.py's send_timeout.
                    await client.drain(plan.read_timeout)
            elif isinstance(event, h11.EndOfMessage):
                client.write_raw(writer.end())
                client.uncork()
                break
            else:
                raise ChannelClosed("upstream closed mid-body")
    except (ChannelClosed, ChannelTimeout, h11.RemoteProtocolError, h11.LocalProtocolError):
        client.uncork()
        # Headers already went out: the only honest signal left is to cut
        # the client connection so it sees a truncated response.
        metrics.METRICS.upstream_error(plan.route, "reset")
        conn.abort()
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
        client.abort()
        return Result(head.status_code, reusable=False, direct=True)
    conn.cancel_deadline()
    body_complete = True
    body_relayed = False
    if pump is not None and not pump.done():
        # The upstream answered before reading the whole body (e.g. 413):
        # stop uploading; the client connection cannot be reused.
        pump.cancel()
        body_complete = False
    if pump is not None:
        with contextlib.suppress(BaseException):
            await pump
        if body_complete:
            # A pump that failed after the response (the client went away)
            # did not read the whole body either.
            body_complete = not pump.cancelled() and pump.exception() is None
            body_relayed = body_complete and pump.result()
    if upstream_reusable:
        plan.pool.release(conn)
    else:
        conn.close()  # it sent past its Content-Length, or the close ended the body
    return Result(head.status_code, reusable=body_complete and writer.keep_alive, direct=True,
                  body_relayed=body_relayed)
