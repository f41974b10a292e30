"""One client TLS connection: read requests, admit or refuse them, relay.

The connection keeps the runtime snapshot it started with, so a reload never
changes the rules under a request in flight. Each request goes through:

1. the head, under a hard deadline (``limits.header_timeout``; between
   requests the idle ``keepalive_timeout`` applies until the first byte);
2. framing checks h11 does not make strictly enough (CL+TE, several
   Content-Lengths, a Transfer-Encoding other than chunked): 400 and close,
   so a smuggled request pipelined behind never reaches an upstream;
3. admission (:mod:`certgate.proxy.admission`): host, 421 guard, route,
   policy, body limit; refusals are answered here;
4. the relay (:mod:`certgate.proxy.exchange`), or the built-in whoami or
   enrollment service (:mod:`certgate.enroll`).

An idle keep-alive connection has no task and no h11 state:
:meth:`ClientConnection.serve` returns once a response is out and nothing
more has arrived, leaving only a ``keepalive_timeout`` timer that closes the
connection; the next bytes (or the client's close) start a new task. A
coroutine parked between requests held its frames, a future, the last
request and its context alive on every idle connection (issue #15, idle
memory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import h11

# Documented among h11's states (its docs' state machine), yet left out of
# h11.__all__; mypy --strict wants the defining module.
from h11._state import MIGHT_SWITCH_PROTOCOL

from certgate import memtrim, metrics
from certgate.enroll.service import MAX_BODY, EnrollRequest, EnrollResponse
from certgate.errors import HTTPError
from certgate.http import certpage
from certgate.http.responses import REASONS, plain_response
from certgate.matchers import Kind as MatcherKind
from certgate.proxy.admission import Admitted, admit, check_framing
from certgate.proxy.channel import Channel, ChannelClosed, ChannelTimeout
from certgate.proxy.exchange import Plan, relay
from certgate.proxy.info import ConnectionInfo
from certgate.proxy.pace import BodyPace, BodyTooSlow
from certgate.tls.identity import ClientIdentity
from certgate.tls.verify import Refusal
from certgate.whoami import whoami_response

if TYPE_CHECKING:
    from certgate.runtime import Runtime

log = logging.getLogger("certgate.proxy")


class ClientConnection(Channel):
    http: h11.Connection  # the client side is parsed by h11

    def __init__(self, runtime: Runtime, info: ConnectionInfo) -> None:
        super().__init__(new_h11(runtime))
        self.runtime = runtime
        #: The last response was written without h11 (proxy/exchange.py).
        self._answered_directly = False
        #: The last request's body went past h11, complete (proxy/requestbody.py).
        self._body_relayed = False
        self.info = info
        self.identity: ClientIdentity | None = None
        self.refusal: Refusal | None = None  # set when the certificate must not be honoured
        #: The task serving requests; None while the connection is idle.
        self.task: asyncio.Task[None] | None = None
        #: Set while idle (no task): closes the connection after keepalive_timeout.
        self._idle_timer: asyncio.TimerHandle | None = None
        #: True while a request is being served (shutdown waits for these).
        self.busy = False
        #: Of ``bytes_in``, the bytes already logged with a request (:meth:`_take_bytes_in`).
        self._bytes_taken = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.identity, self.refusal = self.runtime.check_peer(der)
        recorder = metrics.METRICS
        if recorder.enabled:
            recorder.handshake(self.info.listener, None if self.refusal is None
                               else self.refusal.label)
            recorder.connection_opened(self.info.listener)
        self.runtime.connections.add(self)
        memtrim.note_opened()
        self.task = self._loop.create_task(self.serve(first=True))

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._idle_timer is not None:
            self._wake()

    def eof_received(self) -> bool | None:
        keep_open = super().eof_received()
        if self._idle_timer is not None:
            self._wake()  # the new task reads the close and ends the connection
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_idle()
        super().connection_lost(exc)
        metrics.METRICS.connection_closed()
        self.runtime.connection_closed(self)

    # -- idle between requests -------------------------------------------
    def _go_idle(self) -> None:
        """No task until bytes arrive; close after ``keepalive_timeout``.

        The h11 connection goes too (~0.8 KiB per idle connection): it holds
        nothing between requests that a fresh one would not (no bytes are
        past the last request, or the task would not end), and only a task
        reads it; :meth:`_wake` builds the next one.
        """
        self.task = None
        del self.http
        self._idle_timer = self._loop.call_later(
            self.runtime.config.limits.keepalive_timeout, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _wake(self) -> None:
        self._cancel_idle()
        self.http = new_h11(self.runtime)
        self.task = self._loop.create_task(self.serve(first=False))

    def _idle_expired(self) -> None:
        self._idle_timer = None
        log.debug("client connection ended: keep-alive idle")
        self.close()

    # ------------------------------------------------------------------
    async def serve(self, first: bool) -> None:
        """Serve requests until the connection closes or goes idle.

        ``first``: the connection's first request (started by the
        handshake); otherwise bytes or a close arrived on an idle connection.
        """
        limits = self.runtime.config.limits
        idle = False
        try:
            while not self.runtime.draining:
                self.set_deadline(limits.header_timeout, "request head")
                started = time.monotonic()
                try:
                    event = await self.next_event()
                except ChannelTimeout:
                    if self.http.their_state is h11.IDLE and not self.has_buffered_data \
                            and not self.http.trailing_data[0] and first is False:
                        return
                    await self._refuse(HTTPError(408, "request head not received in time",
                                                 close=True), None, started)
                    return
                except h11.RemoteProtocolError as exc:
                    status = exc.error_status_hint
                    await self._refuse(HTTPError(status, malformed_reason(exc), close=True),
                                       None, started)
                    return
                finally:
                    self.cancel_deadline()
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed between requests
                first = False
                self.busy = True
                try:
                    if not await self._handle(event, started):
                        return
                finally:
                    self.busy = False
                if not self.next_cycle():
                    return
                if self.has_buffered_data or self.http.trailing_data[0]:
                    continue  # pipelined: the next request is already here
                if self.at_eof or self.lost:
                    return
                idle = not self.runtime.draining
                return
        except (ChannelClosed, ConnectionError) as exc:
            log.debug("client connection ended: %r", exc, exc_info=True)
        except Exception:
            log.exception("internal error on a client connection")
        finally:
            if idle:
                self._go_idle()
            else:
                self.close()

    def next_cycle(self) -> bool:
        """Ready h11 for the next request; False when the connection must close.

        After a proxied response, which went out without h11, h11 still
        waits to send one: a fresh h11 connection takes over what the client
        has sent past its request (pipelined bytes, or its close). The
        request must have ended on its keep-alive terms (not MUST_CLOSE)
        either way; the response's own terms are in the relay's
        ``reusable``.
        """
        http = self.http
        direct, self._answered_directly = self._answered_directly, False
        relayed, self._body_relayed = self._body_relayed, False
        if not direct:
            if http.our_state is h11.DONE and http.their_state is h11.DONE:
                http.start_next_cycle()
                return True
            return False
        # A request that offered an upgrade (an Upgrade header certgate did
        # not forward) waits in MIGHT_SWITCH_PROTOCOL for the answer; a final
        # response refuses the switch, as h11 itself would have concluded.
        # A body relayed past h11 leaves it in SEND_BODY, and only then.
        if http.our_state is not h11.SEND_RESPONSE or not (
                http.their_state in (h11.DONE, MIGHT_SWITCH_PROTOCOL)
                or (relayed and http.their_state is h11.SEND_BODY)):
            return False
        fresh = new_h11(self.runtime)
        data, closed = http.trailing_data
        if data:
            fresh.receive_data(data)
        if closed:
            fresh.receive_data(b"")
        self.http = fresh
        return True

    async def _handle(self, request: h11.Request, started: float) -> bool:
        """Serve one request; False when the connection must close."""
        try:
            admitted = admit(self.runtime, self.info, self.identity, self.refusal, request)
        except HTTPError as exc:
            return await self._refuse(exc, request, started)
        route = admitted.route
        if not admitted.has_body:
            self._skip_empty_body()
        if route.upstream.is_whoami:
            return await self._whoami(admitted, request, started)
        if route.upstream.is_enroll or route.upstream.is_console:
            return await self._service(admitted, request, started)
        plan = Plan(
            pool=self.runtime.pool_for(route),
            request=admitted.upstream_request,
            has_body=admitted.has_body,
            max_body=route.max_body,
            read_timeout=route.timeouts.read,
            tunnel_idle=route.timeouts.tunnel_idle,
            upgrade=admitted.upgrade,
            client_request=request,
            route=route.name,
            body_min_rate=route.timeouts.body_min_rate,
            body_rate_window=route.timeouts.body_rate_window,
            body_length=admitted.body_length,
        )
        out_before = self.bytes_out
        try:
            result = await relay(self, plan)
        except HTTPError as exc:
            return await self._refuse(exc, request, started, admitted)
        self._answered_directly = result.direct
        self._body_relayed = result.body_relayed
        self._record(request, admitted, result.status, self.bytes_out - out_before, started)
        return result.reusable and not self.lost

    def _take_bytes_in(self, closing: bool) -> int:
        """The bytes of the request being logged, as the client sent them:
        request line, headers and body (chunked framing and trailers
        included), like nginx's ``$request_length``.

        That is what was received and taken since the previous request's
        line: bytes still unread (a pipelined request behind this one)
        belong to the next. ``closing``: a refusal that ends the connection,
        whose unread rest (body, malformed or pipelined bytes) no later
        line will count, so this one does. Once per request (a few integer
        operations, :attr:`unread_bytes`), nothing per read; a body relayed
        past h11 is counted in ``data_received`` like any other byte.
        """
        upto = self.bytes_in if closing else self.bytes_in - self.unread_bytes
        taken = upto - self._bytes_taken
        self._bytes_taken = upto
        return taken

    def _record(self, request: h11.Request | None, admitted: Admitted | None, status: int,
                bytes_out: int, started: float, error: HTTPError | None = None,
                closing: bool = False) -> None:
        """One finished request: the access-log line and the metrics."""
        seconds = time.monotonic() - started
        bytes_in = self._take_bytes_in(closing)
        identity = self.identity
        recorder = self.runtime.last_seen
        if recorder is not None and identity is not None and self.refusal is None \
                and identity.issuer is not None and identity.issuer.builtin:
            # Last seen (certgate.lastseen): one dict assignment; a refused
            # certificate (revoked, expired) was not "used".
            recorder.note(identity, self.info.peer_ip, request,
                          admitted.route.name if admitted is not None else
                          (error.route if error is not None and error.route else "-"))
        self.runtime.access_log.request(self.info, self.identity, request, admitted, status,
                                        bytes_in, bytes_out, seconds,
                                        reason=error.reason if error else None)
        metric = metrics.METRICS
        if not metric.enabled:
            return
        route = admitted.route.name if admitted is not None else \
            (error.route if error is not None and error.route else "-")
        metric.request(route, status, seconds, bytes_in, bytes_out)
        if error is not None and error.kind:
            if status >= 500:
                metric.upstream_error(route, error.kind)
            else:
                metric.denial(route, error.kind)

    def _skip_empty_body(self) -> None:
        """Take the EndOfMessage h11 yields for a request without a body.

        Only called when the framing headers say there is no body, so h11
        produces the event without needing more bytes; without this the
        request never reaches DONE and keep-alive could not continue.
        """
        if self.http.their_state is h11.SEND_BODY:
            event = self.http.next_event()
            if not isinstance(event, h11.EndOfMessage):
                raise ChannelClosed("expected an empty request body")

    async def _read_body(self, admitted: Admitted, request: h11.Request, started: float,
                         limit: int) -> bytes | bool:
        """The request body of a built-in upstream, under the same pace as a
        proxied body (both are reachable anonymously); at most ``limit``
        bytes are kept (more: 413). A bool when it was refused or the client
        went away: what :meth:`_handle` returns."""
        timeouts = admitted.route.timeouts
        pace = BodyPace.start(timeouts.body_min_rate, timeouts.body_rate_window, timeouts.read,
                              self._loop.time())
        body = bytearray()
        while self.http.their_state is h11.SEND_BODY:
            try:
                event = await self.next_body_event(pace)
            except ChannelTimeout:
                return await self._refuse(HTTPError(408, "request body not received in time",
                                                    close=True), request, started, admitted)
            except BodyTooSlow as exc:
                return await self._refuse(HTTPError(408, str(exc), close=True), request,
                                          started, admitted)
            except h11.RemoteProtocolError:
                return await self._refuse(HTTPError(400, "malformed request body", close=True),
                                          request, started, admitted)
            if isinstance(event, h11.ConnectionClosed):
                return False
            if isinstance(event, h11.Data) and limit:
                body += event.data
                if len(body) > limit:
                    return await self._refuse(HTTPError(413, f"request body larger than {limit} "
                                                        "bytes", close=True),
                                              request, started, admitted)
        return bytes(body)

    async def _whoami(self, admitted: Admitted, request: h11.Request, started: float) -> bool:
        # Read and discard any body so the connection can be reused.
        body = await self._read_body(admitted, request, started, 0)
        if isinstance(body, bool):
            return body
        response, payload = whoami_response(self.identity, admitted)
        return await self._answer(admitted, request, started, response, payload)

    def _builtin_request(self, admitted: Admitted, request: h11.Request,
                         body: bytes) -> EnrollRequest:
        return EnrollRequest(
            method=request.method.decode("ascii", "replace").upper(),
            path=admitted.path,
            headers=tuple(request.headers.raw_items()),
            body=body,
            identity=self.identity,
            peer_ip=self.info.peer_ip,
            host=admitted.host,
            prefix=admitted.route.path,
        )

    async def _service(self, admitted: Admitted, request: h11.Request, started: float) -> bool:
        """The built-in enrollment service (:mod:`certgate.enroll`) or the CA's
        console (:mod:`certgate.console`): certgate answers itself."""
        upstream = admitted.route.upstream
        body = await self._read_body(admitted, request, started, MAX_BODY)
        if isinstance(body, bool):
            return body
        built = self._builtin_request(admitted, request, body)
        if upstream.is_enroll and self.runtime.enroll is not None:
            answer = await self.runtime.enroll.handle(built)
        elif upstream.is_console and self.runtime.console is not None:
            roles = self.runtime.roles_for(self.identity) if self.identity is not None else ()
            allowed = frozenset(m.value for m in admitted.route.allow
                                if m.kind is MatcherKind.ROLE)
            query = request.target.partition(b"?")[2].decode("ascii", "replace")
            answer = await self.runtime.console.handle(built, query, roles, allowed)
        else:  # cannot happen: the runtime makes a service for each such route
            return await self._refuse(HTTPError(503, f"{upstream.label} is not available"),
                                      request, started, admitted)
        return await self._builtin_answer(admitted, request, started, answer)

    async def _builtin_answer(self, admitted: Admitted, request: h11.Request, started: float,
                              answer: EnrollResponse) -> bool:
        headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode("ascii"))]
        response = h11.Response(status_code=answer.status, headers=headers,
                                reason=REASONS.get(answer.status, b""))
        return await self._answer(admitted, request, started, response, answer.body,
                                  note=answer.note)

    async def _answer(self, admitted: Admitted, request: h11.Request, started: float,
                      response: h11.Response, body: bytes, note: str | None = None) -> bool:
        """Send a built-in upstream's whole response; log and count it."""
        out_before = self.bytes_out
        self.send(response)
        if request.method != b"HEAD":
            self.send(h11.Data(data=body))
        self.send(h11.EndOfMessage())
        await self.drain(admitted.route.timeouts.read)
        error = HTTPError(response.status_code, note) if note else None
        self._record(request, admitted, response.status_code, self.bytes_out - out_before,
                     started, error)
        return True

    async def _refuse(self, error: HTTPError, request: h11.Request | None, started: float,
                      admitted: Admitted | None = None) -> bool:
        """Answer ``error``; False when the connection must close afterwards."""
        if request is not None and not error.close and self.http.their_state is h11.SEND_BODY:
            # A refused request without a body can still keep the connection.
            length, chunked = check_framing(list(request.headers.raw_items()))
            if not chunked and not length:
                self._skip_empty_body()
        close = error.close or self.http.their_state is not h11.DONE
        if self.http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.abort()
            return False
        if error.status == certpage.STATUS:
            response, body = certpage.page_response(self.runtime.trust_pem, close=close)
        else:
            response, body = plain_response(error.status, error.reason, close=close)
        out_before = self.bytes_out
        try:
            self.send(response)
            self.send(h11.Data(data=body))
            self.send(h11.EndOfMessage())
            # A client that never reads its refusals must not pin the connection.
            await self.drain(admitted.route.timeouts.read if admitted is not None
                             else self.runtime.config.limits.header_timeout)
        except (h11.LocalProtocolError, ChannelClosed):
            close = True
        self._record(request, admitted, error.status, self.bytes_out - out_before, started,
                     error, closing=close)
        if close:
            self.close()
        return not close


def new_h11(runtime: Runtime) -> h11.Connection:
    """The client side's HTTP state machine, for a connection or its next request."""
    return h11.Connection(h11.SERVER,
                          max_incomplete_event_size=runtime.config.limits.max_header_bytes)


# h11's messages quote the offending bytes (``illegal request line:
# bytearray(b'...')``); a response or a log line must not echo what the
# client sent, so each is mapped to a fixed reason by its constant prefix.
_MALFORMED = (
    ("illegal request line", "malformed request line"),
    ("illegal header line", "malformed header line"),
    ("continuation line", "malformed header line"),
    ("Illegal header", "invalid header name or value"),
    ("Missing mandatory Host", "no Host header"),
    ("Found multiple Host", "more than one Host header"),
    ("conflicting Content-Length", "conflicting Content-Length values"),
    ("bad Content-Length", "invalid Content-Length"),
    ("Only Transfer-Encoding", "only Transfer-Encoding: chunked is accepted"),
    ("multiple Transfer-Encoding", "more than one Transfer-Encoding header"),
)


def malformed_reason(exc: h11.RemoteProtocolError) -> str:
    """A fixed one-line reason for a request head h11 could not parse."""
    if exc.error_status_hint == 431:
        return "request header too large"
    text = str(exc)
    for prefix, reason in _MALFORMED:
        if text.startswith(prefix):
            return reason
    return "malformed request head"
