"""HTTP/1.1 on the upstream leg, without h11: a sans-IO writer and reader.

Theory of operation
-------------------
h11 parses what *clients* send (hostile bytes arrive there). On the upstream
leg certgate talks to an application it was configured to reach, and every
request used to pass through h11 four times: the client's request parsed,
the upstream request built and serialised, the upstream's response parsed,
the response serialised for the client. h11 was 38 % of a proxied request's
CPU (benchmarks/README.md, "Where the time goes"). This module does the two
upstream passes with a join and a few ``bytes.find`` calls instead.

It keeps the same strictness where it matters: the response head is read
against RFC 9112 and refused (:class:`h11.RemoteProtocolError`, a ``502``)
on anything ambiguous, because its names, values and reason phrase go on to
the client with h11's own validation skipped:

* status line ``HTTP/1.x SP 3DIGIT SP reason``; header names are tokens,
  values have no control bytes but HTAB, no obs-fold, no space before the
  colon (the response-splitting and smuggling shapes);
* framing as RFC 9112 s.6.3 for a response: none for HEAD, 1xx, 204 and 304;
  ``Transfer-Encoding: chunked`` (any other coding, or together with
  ``Content-Length``, is refused); one ``Content-Length`` value (repeats must
  agree); otherwise the body runs to the connection's close;
* chunk sizes are hex of bounded length, each chunk ends in CRLF, trailers
  are read (bounded) and dropped;
* a connection is reused only when both messages ended cleanly, on HTTP/1.1,
  without ``Connection: close``, and nothing followed the response.

Bare LF line ends are accepted, as h11 accepts them: what certgate forwards
is re-serialised, so a lenient line end cannot desynchronise the client.

The interface is the part of ``h11.Connection`` (client role) that
:class:`certgate.proxy.channel.Channel` and the pool use: ``send`` (a
request head, body data, end of message), ``receive_data``, ``next_event``,
``trailing_data`` and ``start_next_cycle``. Response heads come out as
:class:`ResponseHead`; bodies as ``h11.Data``, ``h11.EndOfMessage`` and
``h11.ConnectionClosed``; waiting as ``h11.NEED_DATA``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import h11

__all__ = ["MAX_HEAD", "ResponseHead", "UpstreamHTTP", "serialise_request"]

#: h11's default for an incomplete event: a response head larger than this
#: is a broken upstream (502), not something to buffer without bound.
MAX_HEAD = 64 * 1024
#: A chunk-size line (size, extensions) or one trailer line.
_MAX_LINE = 4096
#: All trailers of one response together.
_MAX_TRAILERS = 16 * 1024
#: Hex digits of a chunk size: 16 is 2**64, far past any real body.
_MAX_SIZE_DIGITS = 16

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A field value after OWS is stripped: visible bytes (and obs-text), with
# single spaces or tabs inside; no CR, LF, NUL or other control byte.
_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: (.*))?")
_DIGITS = re.compile(rb"[0-9]{1,19}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,%d}" % _MAX_SIZE_DIGITS)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A response head from the upstream; ``headers`` keep their names as sent."""

    status_code: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: bytes

    @property
    def informational(self) -> bool:
        return self.status_code < 200


def _fail(why: str) -> h11.RemoteProtocolError:
    return h11.RemoteProtocolError(why, error_status_hint=502)


def serialise_request(method: bytes, target: bytes,
                      headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request head, one join. The names and values come from admission
    (h11-parsed, constants, or escaped), so they are not checked again."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class _Body(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # until the connection closes


class _Read(enum.Enum):
    HEAD = "head"
    BODY = "body"
    DONE = "done"
    SWITCHED = "switched"  # after a 101: the bytes are no longer HTTP
    CLOSED = "closed"


def _lines(head: bytes) -> list[bytes]:
    return [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]


def _split_tokens(values: list[bytes]) -> list[bytes]:
    return [t.strip().lower() for v in values for t in v.split(b",") if t.strip()]


def parse_head(head: bytes, method: bytes) -> tuple[ResponseHead, _Body, int, bool]:
    """A response head (without its blank line) -> (head, framing, length, keep-alive).

    Raises:
        h11.RemoteProtocolError: anything RFC 9112 does not allow, or that
            could be read two ways.
    """
    lines = _lines(head)
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise _fail("malformed status line")
    minor, code, reason = match.group(1), int(match.group(2)), match.group(3) or b""
    if not _REASON.fullmatch(reason):
        raise _fail("control characters in the reason phrase")
    headers: list[tuple[bytes, bytes]] = []
    lengths: list[bytes] = []
    codings: list[bytes] = []
    connection: list[bytes] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            # Also obs-fold (a line starting with SP/HTAB) and "Name : v".
            raise _fail("malformed header line")
        value = value.strip(b" \t")
        if not _VALUE.fullmatch(value):
            raise _fail("control characters in a header value")
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            lengths.append(value)
        elif lower == b"transfer-encoding":
            codings.append(value)
        elif lower == b"connection":
            connection.append(value)
    keep_alive = minor == b"1" and b"close" not in _split_tokens(connection)
    if codings and lengths:
        raise _fail("both Transfer-Encoding and Content-Length")
    length = -1
    if lengths:
        values = {v.strip() for item in lengths for v in item.split(b",")}
        if len(values) != 1:
            raise _fail("conflicting Content-Length values")
        (text,) = values
        if not _DIGITS.fullmatch(text):
            raise _fail("malformed Content-Length")
        length = int(text)
        if len(lengths) > 1 or text != lengths[0]:
            # One field for the client, as h11 forwards it ("5, 5" -> "5").
            first = next(i for i, (n, _) in enumerate(headers)
                         if n.lower() == b"content-length")
            name = headers[first][0]
            headers = [h for h in headers if h[0].lower() != b"content-length"]
            headers.insert(first, (name, text))
    parsed = ResponseHead(code, reason, headers, b"1." + minor)
    if method == b"HEAD" or code < 200 or code in (204, 304):
        return parsed, _Body.NONE, 0, keep_alive
    if codings:
        if _split_tokens(codings) != [b"chunked"]:
            raise _fail("unsupported transfer coding")
        return parsed, _Body.CHUNKED, 0, keep_alive
    if length >= 0:
        return parsed, _Body.LENGTH, length, keep_alive
    return parsed, _Body.CLOSE, 0, False


class UpstreamHTTP:
    """One upstream connection's HTTP/1.1 state, client side."""

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self.max_head = max_head
        self._buffer = bytearray()
        self._eof = False
        self.start_next_cycle()

    def start_next_cycle(self) -> None:
        """Ready for the next request on the same connection (the pool
        checks :attr:`reusable` first)."""
        self._method = b""
        self._sent_head = False
        self._send_framing = _Body.NONE
        self._send_left = 0
        self._sent_all = False
        self._read = _Read.HEAD
        self._body = _Body.NONE
        self._left = 0  # bytes of the body (LENGTH) or current chunk (CHUNKED)
        self._chunk_state = "size"  # size | data | crlf | trailers
        self._trailer_bytes = 0
        self._keep_alive = True

    # -- writing -----------------------------------------------------------
    def send(self, event: Any) -> bytes:
        """The bytes for one of ``h11.Request``, ``h11.Data``, ``h11.EndOfMessage``.

        Raises:
            h11.LocalProtocolError: out of order, or more or fewer body bytes
                than the request's Content-Length.
        """
        if isinstance(event, h11.Data):
            data = bytes(event.data)
            if not self._sent_head or self._sent_all:
                raise h11.LocalProtocolError("body data outside a request")
            if self._send_framing is _Body.CHUNKED:
                return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
            if len(data) > self._send_left:
                raise h11.LocalProtocolError("more body than Content-Length")
            self._send_left -= len(data)
            return data
        if isinstance(event, h11.EndOfMessage):
            if not self._sent_head or self._sent_all:
                raise h11.LocalProtocolError("end of a request never started")
            self._sent_all = True
            if self._send_framing is _Body.CHUNKED:
                return b"0\r\n\r\n"
            if self._send_left:
                raise h11.LocalProtocolError("request body shorter than Content-Length")
            return b""
        if isinstance(event, h11.Request):
            if self._sent_head:
                raise h11.LocalProtocolError("a second request before the cycle ended")
            headers = event.headers.raw_items()
            self._method = bytes(event.method).upper()
            self._sent_head = True
            self._send_framing, self._send_left = _request_framing(headers)
            if any(n.lower() == b"connection" and b"close" in _split_tokens([v])
                   for n, v in headers):
                self._keep_alive = False
            return serialise_request(event.method, event.target, headers)
        raise h11.LocalProtocolError(f"cannot send {type(event).__name__} upstream")

    def hand_over_request_body(self) -> int:
        """Let the caller write the rest of a Content-Length request body itself.

        Returns the bytes still owed and counts them as sent: the caller
        writes exactly that many straight to the transport
        (:mod:`certgate.proxy.requestbody`) before sending ``EndOfMessage``.

        Raises:
            h11.LocalProtocolError: no Content-Length request body is open.
        """
        if not self._sent_head or self._sent_all or self._send_framing is not _Body.LENGTH:
            raise h11.LocalProtocolError("no Content-Length request body to hand over")
        owed, self._send_left = self._send_left, 0
        return owed

    # -- reading -----------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Bytes from the upstream; ``b""`` means it closed its side."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received but not consumed, and whether the peer closed."""
        return bytes(self._buffer), self._eof

    @property
    def reusable(self) -> bool:
        """Both messages ended cleanly and the connection may carry another."""
        return (self._sent_all and self._read is _Read.DONE and self._keep_alive
                and not self._buffer and not self._eof)

    def next_event(self) -> Any:
        """The next event, or ``h11.NEED_DATA`` (see the module docstring).

        Raises:
            h11.RemoteProtocolError: a response this module refuses to read.
        """
        if self._read is _Read.HEAD:
            return self._next_head()
        if self._read is _Read.BODY:
            return self._next_body()
        if self._read is _Read.DONE or self._read is _Read.SWITCHED:
            if self._eof and not self._buffer:
                self._read = _Read.CLOSED
                return h11.ConnectionClosed()
            return h11.NEED_DATA
        return h11.ConnectionClosed()

    def hand_over_body(self) -> tuple[bytes, int | None] | None:
        """Let the caller relay a Content-Length or close-delimited body itself.

        Right after a final response head whose body is framed that way
        (and not empty): returns the body bytes already buffered and the
        length still owed (None: until the connection closes), and counts
        the message as read. The caller then reads the rest straight from
        the transport (:mod:`certgate.proxy.bodyrelay`) and must not reuse
        the connection unless exactly that many bytes came and no more.
        None for any other framing (chunked bodies stay on the events).
        """
        if self._read is not _Read.BODY:
            return None
        if self._body is _Body.LENGTH and self._left:
            left: int | None = self._left
        elif self._body is _Body.CLOSE and not self._eof:
            left = None
        else:
            return None
        buffered = bytes(self._buffer)
        self._buffer.clear()
        self._left = 0
        self._read = _Read.DONE
        return buffered, left

    def _next_head(self) -> Any:
        buffer = self._buffer
        end = buffer.find(b"\n\r\n")
        cut = 3
        bare = buffer.find(b"\n\n")
        if bare != -1 and (end == -1 or bare < end):
            end, cut = bare, 2
        if end == -1:
            if len(buffer) > self.max_head:
                raise _fail("response head too large")
            if self._eof:
                if buffer:
                    raise _fail("connection closed in the middle of a response head")
                self._read = _Read.CLOSED
                return h11.ConnectionClosed()
            return h11.NEED_DATA
        if end + cut > self.max_head:
            raise _fail("response head too large")
        raw = bytes(buffer[:end + 1])
        del buffer[:end + cut]
        head, body, length, keep_alive = parse_head(raw.rstrip(b"\r\n"), self._method)
        if head.informational:
            if head.status_code == 101:
                self._read = _Read.SWITCHED
            return head  # 100/103: the next head follows
        self._keep_alive = self._keep_alive and keep_alive
        self._body, self._left = body, length
        self._read = _Read.BODY
        if body is _Body.NONE or (body is _Body.LENGTH and length == 0):
            self._read = _Read.BODY  # the EndOfMessage comes next
        return head

    def _next_body(self) -> Any:
        body = self._body
        if body is _Body.NONE:
            return self._done()
        if body is _Body.LENGTH:
            if not self._left:
                return self._done()
            if not self._buffer:
                if self._eof:
                    raise _fail("connection closed before the response body ended")
                return h11.NEED_DATA
            return self._take(min(self._left, len(self._buffer)), counted=True)
        if body is _Body.CLOSE:
            if self._buffer:
                return self._take(len(self._buffer), counted=False)
            if self._eof:
                return self._done()
            return h11.NEED_DATA
        return self._next_chunked()

    def _take(self, size: int, counted: bool) -> h11.Data:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        if counted:
            self._left -= size
        return h11.Data(data=data)

    def _done(self) -> h11.EndOfMessage:
        self._read = _Read.DONE
        return h11.EndOfMessage()

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end == -1:
            if len(self._buffer) > _MAX_LINE:
                raise _fail("chunk line too long")
            if self._eof:
                raise _fail("connection closed in a chunked body")
            return None
        if end > _MAX_LINE:
            raise _fail("chunk line too long")
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _next_chunked(self) -> Any:
        while True:
            state = self._chunk_state
            if state == "data":
                if not self._left:
                    self._chunk_state = "crlf"
                    continue
                if not self._buffer:
                    if self._eof:
                        raise _fail("connection closed in a chunk")
                    return h11.NEED_DATA
                data = self._take(min(self._left, len(self._buffer)), counted=True)
                return data
            line = self._line()
            if line is None:
                return h11.NEED_DATA
            if state == "crlf":
                if line:
                    raise _fail("chunk data longer than its size")
                self._chunk_state = "size"
            elif state == "size":
                size = line.split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size):
                    raise _fail("malformed chunk size")
                self._left = int(size, 16)
                self._chunk_state = "data" if self._left else "trailers"
            else:  # trailers: read and dropped (certgate forwards none)
                if not line:
                    self._chunk_state = "size"
                    return self._done()
                self._trailer_bytes += len(line)
                if self._trailer_bytes > _MAX_TRAILERS:
                    raise _fail("response trailers too large")
                name, colon, _ = line.partition(b":")
                if not colon or not _TOKEN.fullmatch(name):
                    raise _fail("malformed trailer line")


def _request_framing(headers: list[tuple[bytes, bytes]]) -> tuple[_Body, int]:
    """How the request body is framed, from the headers admission wrote."""
    length = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"transfer-encoding":
            return _Body.CHUNKED, 0
        if lower == b"content-length":
            length = int(value)
    if length is None:
        return _Body.NONE, 0
    return _Body.LENGTH, length
