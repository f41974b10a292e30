"""The upstream leg's HTTP/1.1 writer and reader (issue #15), fed bytes.

Unit cases for each framing and each refusal, then property tests: a
response generated from parts reads back to those parts however its bytes
are split, and h11 (the oracle) reads the same thing.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.http.upstream_http import ResponseHead, UpstreamHTTP, serialise_request

GET = h11.Request(method=b"GET", target=b"/x?y=1", headers=[(b"Host", b"app"),
                                                            (b"X-Client-CN", b"alice")])


def _reader(method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None
            ) -> UpstreamHTTP:
    reader = UpstreamHTTP()
    reader.send(h11.Request(method=method, target=b"/", headers=headers or [(b"host", b"u")]))
    reader.send(h11.EndOfMessage())
    return reader


def _read(data: bytes, method: bytes = b"GET", eof: bool = False,
          reader: UpstreamHTTP | None = None) -> list[Any]:
    reader = reader or _reader(method)
    reader.receive_data(data)
    if eof:
        reader.receive_data(b"")
    events: list[Any] = []
    for _ in range(1000):
        event = reader.next_event()
        if event is h11.NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return events
    raise AssertionError("no progress")


def _body(events: list[Any]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, h11.Data))


# -- writing ------------------------------------------------------------------

def test_the_request_head_is_written_as_given() -> None:
    assert serialise_request(b"GET", b"/x?y=1", [(b"Host", b"app"), (b"X-A", b"1")]) == \
        b"GET /x?y=1 HTTP/1.1\r\nHost: app\r\nX-A: 1\r\n\r\n"
    assert UpstreamHTTP().send(GET) == \
        b"GET /x?y=1 HTTP/1.1\r\nHost: app\r\nX-Client-CN: alice\r\n\r\n"


def test_a_chunked_request_body_is_framed() -> None:
    writer = UpstreamHTTP()
    writer.send(h11.Request(method=b"POST", target=b"/", headers=[
        (b"host", b"u"), (b"transfer-encoding", b"chunked")]))
    assert writer.send(h11.Data(data=b"hello")) == b"5\r\nhello\r\n"
    assert writer.send(h11.Data(data=b"")) == b""
    assert writer.send(h11.EndOfMessage()) == b"0\r\n\r\n"


def test_a_content_length_body_must_match() -> None:
    writer = UpstreamHTTP()
    writer.send(h11.Request(method=b"POST", target=b"/", headers=[
        (b"host", b"u"), (b"content-length", b"3")]))
    assert writer.send(h11.Data(data=b"ab")) == b"ab"
    with pytest.raises(h11.LocalProtocolError):
        writer.send(h11.Data(data=b"cd"))
    with pytest.raises(h11.LocalProtocolError):
        writer.send(h11.EndOfMessage())  # one byte short


# -- reading: framings ----------------------------------------------------------

def test_content_length() -> None:
    reader = _reader()
    events = _read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello", reader=reader)
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert (head.status_code, head.reason, head.headers) == (
        200, b"OK", [(b"Content-Length", b"5"), (b"X-A", b"b")])
    assert _body(events) == b"hello"
    assert isinstance(events[-1], h11.EndOfMessage)
    assert reader.reusable


def test_chunked_with_extensions_and_trailers() -> None:
    reader = _reader()
    events = _read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5;a=b\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n", reader=reader)
    assert _body(events) == b"hello!"
    assert isinstance(events[-1], h11.EndOfMessage)
    assert reader.reusable


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
def test_no_body_whatever_the_length_says(method: bytes, status: int) -> None:
    reader = _reader(method)
    events = _read(b"HTTP/1.1 %d X\r\nContent-Length: 1000\r\n\r\n" % status, reader=reader)
    assert _body(events) == b""
    assert isinstance(events[-1], h11.EndOfMessage)
    assert reader.reusable


def test_close_delimited_body_and_http_1_0_are_not_reused() -> None:
    reader = _reader()
    events = _read(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", eof=True, reader=reader)
    assert _body(events) == b"until the end"
    assert not reader.reusable
    reader = _reader()
    _read(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", reader=reader)
    assert not reader.reusable


def test_connection_close_and_extra_bytes_are_not_reused() -> None:
    reader = _reader()
    _read(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive, close\r\n\r\n",
          reader=reader)
    assert not reader.reusable
    reader = _reader()
    _read(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", reader=reader)
    assert not reader.reusable  # "b" would be read as the next response
    reader = _reader(headers=[(b"host", b"u"), (b"connection", b"close")])
    _read(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", reader=reader)
    assert not reader.reusable


def test_informational_heads_come_first_and_101_switches() -> None:
    events = _read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                   b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [e.status_code for e in events if isinstance(e, ResponseHead)] == [100, 103, 200]
    reader = _reader()
    reader.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00")
    assert reader.next_event().status_code == 101
    assert reader.next_event() is h11.NEED_DATA  # what follows is not HTTP
    assert reader.trailing_data == (b"\x81\x00", False)


def test_repeated_content_length_is_one_field() -> None:
    events = _read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n"
                   b"content-length: 2, 2\r\n\r\nok")
    assert events[0].headers == [(b"Content-Length", b"2"), (b"X", b"y")]
    assert _body(events) == b"ok"


def test_bytes_split_anywhere_read_the_same() -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    reader = _reader()
    events: list[Any] = []
    for i in range(len(data)):
        reader.receive_data(data[i:i + 1])
        while (event := reader.next_event()) is not h11.NEED_DATA:
            events.append(event)
            if isinstance(event, h11.EndOfMessage):
                break
    assert _body(events) == b"abcde"
    assert isinstance(events[-1], h11.EndOfMessage)


def test_the_connection_ends_cleanly_between_responses() -> None:
    assert isinstance(_read(b"", eof=True)[-1], h11.ConnectionClosed)


# -- reading: refusals -----------------------------------------------------------

@pytest.mark.parametrize(("data", "why"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer coding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "transfer coding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "conflicting"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", "malformed Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", "malformed Content-Length"),
    (b"HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n", "malformed header line"),  # obs-fold
    (b"HTTP/1.1 200 OK\r\nX-A: b\x00c\r\n\r\n", "control characters"),
    (b"HTTP/1.1 200 OK\r\nX-A: b\rSet-Cookie: x\r\n\r\n", "control characters"),
    (b"HTTP/1.1 200 O\x01K\r\n\r\n", "reason phrase"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
    (b"HTTP/2 200 OK\r\n\r\n", "status line"),
    (b"ICY 200 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", "longer than"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 17 + b"\r\n",
     "chunk size"),
])
def test_ambiguous_or_unsafe_responses_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(h11.RemoteProtocolError, match=why) as info:
        _read(data)
    assert info.value.error_status_hint == 502


def test_a_head_past_the_limit_is_refused() -> None:
    reader = UpstreamHTTP(max_head=1024)
    reader.send(GET)
    reader.send(h11.EndOfMessage())
    reader.receive_data(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200)
    with pytest.raises(h11.RemoteProtocolError, match="too large"):
        reader.next_event()


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
])
def test_a_response_cut_short_is_refused(data: bytes) -> None:
    with pytest.raises(h11.RemoteProtocolError):
        _read(data, eof=True)


# -- properties --------------------------------------------------------------------

_names = st.sampled_from([b"X-A", b"Content-Type", b"ETag", b"Cache-Control", b"x-b",
                          b"Set-Cookie"])
_values = st.binary(max_size=20).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E) or b"v")


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[bytes, bytes]], bytes]:
    status = draw(st.sampled_from([200, 201, 206, 404, 500]))
    headers = draw(st.lists(st.tuples(_names, _values), max_size=6))
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        framed = [*headers, (b"Content-Length", str(len(body)).encode())]
        payload = body
    else:
        framed = [*headers, (b"Transfer-Encoding", b"chunked")]
        sizes = draw(st.lists(st.integers(1, 50), max_size=10))
        chunks, rest = [], body
        for size in sizes:
            if not rest:
                break
            chunks.append(rest[:size])
            rest = rest[size:]
        if rest:
            chunks.append(rest)
        payload = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = b"HTTP/1.1 %d Reason\r\n" % status + b"".join(
        n + b": " + v + b"\r\n" for n, v in framed) + b"\r\n"
    return head + payload, status, framed, body


@settings(max_examples=200, deadline=None)
@given(responses(), st.lists(st.integers(1, 64), max_size=20))
def test_any_split_reads_the_response_and_agrees_with_h11(
        generated: tuple[bytes, int, list[tuple[bytes, bytes]], bytes], cuts: list[int]) -> None:
    data, status, headers, body = generated
    reader = _reader()
    events: list[Any] = []
    position = 0
    for cut in [*cuts, len(data)]:
        reader.receive_data(data[position:position + cut])
        position += cut
        while (event := reader.next_event()) is not h11.NEED_DATA:
            events.append(event)
            if isinstance(event, h11.EndOfMessage):
                break
        if position >= len(data):
            break
    assert isinstance(events[-1], h11.EndOfMessage)
    head = events[0]
    assert (head.status_code, head.headers) == (status, headers)
    assert _body(events) == body
    assert reader.reusable
    # The oracle: h11 reads the same status, fields and body.
    oracle = h11.Connection(h11.CLIENT)
    oracle.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"u")]))
    oracle.send(h11.EndOfMessage())
    oracle.receive_data(data)
    theirs = oracle.next_event()
    assert (theirs.status_code, list(theirs.headers.raw_items())) == (status, headers)
    got = b""
    while isinstance(event := oracle.next_event(), h11.Data):
        got += event.data
    assert got == body
