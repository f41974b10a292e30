"""UpstreamHTTP.hand_over_body: what the body relay (proxy/bodyrelay.py)
takes over from the reader, and what it leaves to the reader's events.

Invariant: right after a final head with a Content-Length (> 0) or
close-delimited body, the hand-over gives the body bytes already buffered
and the length still owed (None: to the close), however the head and body
were split on arrival; the reader then counts the response as read (so the
pool may reuse the connection only if the relay saw exactly that length).
Every other framing (chunked, HEAD, 1xx, 204, 304, an empty body) stays on
the events: the hand-over answers None and changes nothing.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.http.upstream_http import ResponseHead, UpstreamHTTP


def reader_after_head(data: bytes, method: bytes = b"GET") -> UpstreamHTTP:
    reader = UpstreamHTTP()
    reader.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"u")]))
    reader.send(h11.EndOfMessage())
    reader.receive_data(data)
    assert isinstance(reader.next_event(), ResponseHead)
    return reader


@settings(max_examples=300, deadline=None)
@given(body=st.binary(min_size=1, max_size=300), cut=st.integers(0, 400),
       extra=st.binary(max_size=20))
def test_content_length_hand_over_under_any_split(body: bytes, cut: int, extra: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    arrived = (body + extra)[:cut]
    reader = reader_after_head(head + arrived)
    handed = reader.hand_over_body()
    assert handed == (arrived, len(body))
    assert reader.trailing_data == (b"", False)
    assert reader.reusable  # the relay, not the reader, decides from here
    assert reader.hand_over_body() is None  # once


def test_close_delimited_hand_over() -> None:
    reader = reader_after_head(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert reader.hand_over_body() == (b"abc", None)
    assert not reader.reusable  # a body to the close ends the connection


@pytest.mark.parametrize(("method", "response"), [
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
    (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
])
def test_other_framings_stay_on_the_events(method: bytes, response: bytes) -> None:
    reader = reader_after_head(response, method)
    before = reader.trailing_data
    assert reader.hand_over_body() is None
    assert reader.trailing_data == before
    assert not isinstance(reader.next_event(), ResponseHead)


def test_no_hand_over_before_the_head_or_after_an_informational_one() -> None:
    reader = UpstreamHTTP()
    reader.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"u")]))
    reader.send(h11.EndOfMessage())
    assert reader.hand_over_body() is None
    reader.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert isinstance(reader.next_event(), ResponseHead)
    assert reader.hand_over_body() is None
