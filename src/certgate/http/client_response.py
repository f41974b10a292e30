"""A proxied response to the client, framed without h11: a sans-IO writer.

Theory of operation
-------------------
h11 parses every client request (hostile bytes arrive there) and still
writes certgate's own answers (refusals, built-in services, a 101). A
proxied response, though, used to go through h11 once more on its way out:
the head re-validated and re-serialised, then every body chunk passed
through h11's state machine and writer (issue #15; about a quarter of h11's
cost per keep-alive request). The head's names and values were already
checked by the upstream reader (:mod:`certgate.http.upstream_http`) and
hop-by-hop headers removed, so this module writes what h11 would have
written, directly:

* framing chosen as h11 chooses it for a server (``h11._connection``
  ``_clean_up_response_headers_for_sending`` and ``_body_framing``):
  nothing for HEAD, 204, 304 and a 2xx to CONNECT; the upstream's
  ``Content-Length`` kept; otherwise chunked to an HTTP/1.1 client, or the
  body up to the close for an HTTP/1.0 one (HEAD aside, then closed);
* ``Connection: close`` appended when the request did not allow keep-alive
  or the response has to end with the close;
* the head as h11's writer lays it out: ``HTTP/1.1 CODE REASON``, a
  ``Host`` field first if there is one, then the others in order;
* the body: exact ``Content-Length`` accounting (more or fewer bytes than
  declared is refused, as h11 refuses it, and the caller cuts the
  connection), chunks as ``SIZE CRLF data CRLF`` ending in ``0 CRLF CRLF``.

tests/http/test_client_response.py holds this to h11 byte for byte (h11
itself is the oracle) for every method, version, status and header set.
"""

from __future__ import annotations

import enum

import h11

__all__ = ["ResponseWriter", "request_keep_alive", "start_response"]


class Framing(enum.Enum):
    LENGTH = "length"  # Content-Length (0 for HEAD, 204, 304)
    CHUNKED = "chunked"
    CLOSE = "close"  # the body runs to the connection's close (HTTP/1.0 client)


def _tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """h11's ``get_comma_header``: the comma-separated, lowercased tokens."""
    return [token.strip().lower() for n, v in headers if n.lower() == name
            for token in v.split(b",") if token.strip()]


def request_keep_alive(request: h11.Request) -> bool:
    """Whether the client's request allows another one after it (as h11 decides)."""
    if request.http_version < b"1.1":
        return False
    return b"close" not in _tokens(list(request.headers.raw_items()), b"connection")


class ResponseWriter:
    """The body framing of one response, after :func:`start_response`."""

    __slots__ = ("framing", "keep_alive", "left")

    def __init__(self, framing: Framing, left: int, keep_alive: bool) -> None:
        self.framing = framing
        self.left = left  # bytes still owed under Content-Length
        #: The connection may carry another request once this response ends.
        self.keep_alive = keep_alive

    def data(self, data: bytes) -> bytes:
        """The bytes to write for one body chunk.

        Raises:
            h11.LocalProtocolError: more than the declared Content-Length.
        """
        framing = self.framing
        if framing is Framing.LENGTH:
            self.left -= len(data)
            if self.left < 0:
                raise h11.LocalProtocolError("Too much data for declared Content-Length")
            return data
        if framing is Framing.CHUNKED:
            return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        return data

    def end(self) -> bytes:
        """The bytes that end the body.

        Raises:
            h11.LocalProtocolError: fewer bytes than the declared Content-Length.
        """
        if self.framing is Framing.LENGTH:
            if self.left:
                raise h11.LocalProtocolError("Too little data for declared Content-Length")
            return b""
        if self.framing is Framing.CHUNKED:
            return b"0\r\n\r\n"
        return b""


def start_response(
    method: bytes,
    client_version: bytes,
    keep_alive: bool,
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
) -> tuple[bytes, ResponseWriter]:
    """The head to write and the writer for the body.

    Args:
        method: the client's request method.
        client_version: the client's HTTP version (``b"1.0"``, ``b"1.1"``).
        keep_alive: :func:`request_keep_alive` of the client's request.
        status: a final status (200-999; 1xx and 101 go through h11).
        reason: the upstream's reason phrase (already checked).
        headers: the response headers for the client, hop-by-hop ones
            removed (so no ``Connection`` or ``Transfer-Encoding``).
    """
    headers_method = b"GET" if method == b"HEAD" else method
    need_close = False
    if _bodiless(headers_method, status):
        length: int | None = 0
    else:
        lengths = _tokens(headers, b"content-length")
        length = int(lengths[0]) if lengths else None
    if length is None:  # no framing header: h11's "chunked" or "http/1.0"
        if client_version < b"1.1":
            need_close = method != b"HEAD"
        else:
            headers = [*headers, (b"Transfer-Encoding", b"chunked")]
    keep = keep_alive and not need_close
    if not keep:
        connection = set(_tokens(headers, b"connection"))
        connection.discard(b"keep-alive")
        connection.add(b"close")
        headers = [(n, v) for n, v in headers if n.lower() != b"connection"]
        headers += [(b"Connection", value) for value in sorted(connection)]
    elif b"close" in _tokens(headers, b"connection"):
        keep = False  # cannot happen behind the exchange (hop-by-hop is removed)
    # The body's own framing follows the real method (HEAD: no body at all).
    if _bodiless(method, status):
        writer = ResponseWriter(Framing.LENGTH, 0, keep)
    elif length is not None:
        writer = ResponseWriter(Framing.LENGTH, length, keep)
    elif client_version < b"1.1":
        writer = ResponseWriter(Framing.CLOSE, 0, keep)
    else:
        writer = ResponseWriter(Framing.CHUNKED, 0, keep)
    parts = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
    for name, value in headers:
        if name.lower() == b"host":
            parts += (name, b": ", value, b"\r\n")
    for name, value in headers:
        if name.lower() != b"host":
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), writer


def _bodiless(method: bytes, status: int) -> bool:
    """RFC 9112 s.6.3 rule 1-2, as h11's ``_body_framing`` applies them."""
    return status in (204, 304) or method == b"HEAD" or (
        method == b"CONNECT" and 200 <= status < 300)
