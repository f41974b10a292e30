"""certgate.http.client_response writes what h11 wrote, byte for byte.

h11 is the oracle: for a request (method, HTTP version, Connection tokens)
received by an ``h11.Connection(SERVER)``, the response (status, reason,
headers as the exchange passes them, body chunks) is sent through h11 and
through :func:`start_response`; the head, each chunk's bytes, the end, the
refusals (too much or too little for a Content-Length) and whether the
connection may be kept must all agree.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.http.client_response import Framing, request_keep_alive, start_response

TOKEN = st.text(st.sampled_from("abcxyzABC-_!#$%&'*+.^`|~0189"), min_size=1, max_size=12)
VALUE = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=20).map(
        lambda b: bytes(c if 0x21 <= c <= 0x7E or c >= 0x80 else 0x61 for c in b)),
    st.sampled_from([b"a b", b"x\ty", b"\xff\x80"]),
)
NAMES = st.one_of(TOKEN.map(str.encode),
                  st.sampled_from([b"Host", b"host", b"Content-Type", b"Server", b"Date",
                                   b"Connection", b"connection", b"Keep-Alive", b"Vary"]))


@st.composite
def response_headers(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    headers = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(NAMES)
        if name.lower() == b"connection":
            value = draw(st.sampled_from([b"close", b"keep-alive", b"Keep-Alive, foo", b"x",
                                          b"CLOSE", b", upgrade"]))
        else:
            value = draw(VALUE)
        headers.append((name, value))
    length = draw(st.one_of(st.none(), st.integers(0, 40)))
    if length is not None:
        at = draw(st.integers(0, len(headers)))
        name = draw(st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]))
        headers.insert(at, (name, str(length).encode()))
    return headers


REQUEST_CONNECTION = st.sampled_from([None, b"close", b"keep-alive", b"Close, foo", b"upgrade"])


def h11_side(method: bytes, version: bytes, connection: bytes | None, status: int,
             reason: bytes, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
             ) -> tuple[list[bytes | type[Exception]], bool, h11.Request]:
    conn = h11.Connection(h11.SERVER)
    request_headers = [(b"Host", b"example.test")]
    if connection is not None:
        request_headers.append((b"Connection", connection))
    head = b"%s / HTTP/%s\r\n" % (method, version)
    head += b"".join(b"%s: %s\r\n" % h for h in request_headers) + b"\r\n"
    conn.receive_data(head)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    out: list[bytes | type[Exception]] = [conn.send(h11.Response(
        status_code=status, headers=headers, reason=reason, http_version=b"1.1",
        _parsed=True)) or b""]
    for chunk in chunks:
        try:
            out.append(conn.send(h11.Data(data=chunk)) or b"")
        except h11.LocalProtocolError:
            out.append(h11.LocalProtocolError)
            return out, False, request
    try:
        out.append(conn.send(h11.EndOfMessage()) or b"")
    except h11.LocalProtocolError:
        out.append(h11.LocalProtocolError)
        return out, False, request
    if conn.their_state is h11.SEND_BODY:
        conn.next_event()  # the request's EndOfMessage (no body)
    return out, conn.our_state is h11.DONE, request


def ours(request: h11.Request, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
         chunks: list[bytes]) -> tuple[list[bytes | type[Exception]], bool]:
    head, writer = start_response(request.method, request.http_version,
                                  request_keep_alive(request), status, reason, headers)
    out: list[bytes | type[Exception]] = [head]
    for chunk in chunks:
        try:
            out.append(writer.data(chunk))
        except h11.LocalProtocolError:
            out.append(h11.LocalProtocolError)
            return out, False
    try:
        out.append(writer.end())
    except h11.LocalProtocolError:
        out.append(h11.LocalProtocolError)
        return out, False
    return out, writer.keep_alive


@settings(max_examples=1500, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS", b"DELETE", b"PATCH"]),
    version=st.sampled_from([b"1.1", b"1.0"]),
    connection=REQUEST_CONNECTION,
    status=st.one_of(st.sampled_from([200, 204, 206, 304, 404, 500, 502]),
                     st.integers(200, 999)),
    reason=st.sampled_from([b"OK", b"", b"Not Found", b"x\ty \xff"]),
    headers=response_headers(),
    chunks=st.lists(st.binary(max_size=30), max_size=4),
)
def test_same_bytes_as_h11(method: bytes, version: bytes, connection: bytes | None,
                           status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                           chunks: list[bytes]) -> None:
    expected, keep, request = h11_side(method, version, connection, status, reason, headers,
                                       chunks)
    got, our_keep = ours(request, status, reason, headers, chunks)
    assert got == expected
    assert our_keep == keep


def test_a_body_of_unknown_length_is_chunked_for_http11_and_closed_for_http10() -> None:
    request = h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"a")])
    head, writer = start_response(b"GET", b"1.1", True, 200, b"OK", [(b"Server", b"x")])
    assert head == b"HTTP/1.1 200 OK\r\nServer: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert writer.framing is Framing.CHUNKED
    assert writer.data(b"hello") == b"5\r\nhello\r\n"
    assert writer.data(b"") == b""
    assert writer.end() == b"0\r\n\r\n"
    assert writer.keep_alive
    head, writer = start_response(b"GET", b"1.0", False, 200, b"OK", [])
    assert head == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    assert writer.framing is Framing.CLOSE
    assert not writer.keep_alive
    assert request_keep_alive(request)


def test_content_length_is_enforced_both_ways() -> None:
    _, writer = start_response(b"GET", b"1.1", True, 200, b"OK", [(b"Content-Length", b"3")])
    assert writer.data(b"ab") == b"ab"
    with pytest.raises(h11.LocalProtocolError):
        writer.end()
    with pytest.raises(h11.LocalProtocolError):
        writer.data(b"cd")


def test_head_and_304_have_no_body_but_keep_their_headers() -> None:
    head, writer = start_response(b"HEAD", b"1.1", True, 200, b"OK",
                                  [(b"Content-Length", b"10")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    assert writer.end() == b""
    with pytest.raises(h11.LocalProtocolError):
        writer.data(b"x")
    head, writer = start_response(b"GET", b"1.1", True, 304, b"Not Modified", [(b"ETag", b"1")])
    assert head == b"HTTP/1.1 304 Not Modified\r\nETag: 1\r\n\r\n"
    assert writer.end() == b""
