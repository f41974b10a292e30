"""Fuzz target: upstream response bytes -> certgate's reader (issue #15).

Run on demand (from the repository root)::

    python3 -m tests.fuzz.upstream_response -max_total_time=600 /tmp/ur \
        tests/fuzz/corpus/upstream_response

``tests/fuzz/test_fuzz.py`` runs it for ``CERTGATE_FUZZ_SECONDS``.

Input layout: byte 0 bit 0 chooses the request method the response answers
(GET or HEAD); the rest is what the upstream sent, followed by EOF.

Invariant checked for every input (anything else is a crash):

1. The only exception is ``h11.RemoteProtocolError`` (the client gets 502).
2. Whatever the reader accepts is safe to forward with h11's checks
   skipped: the status is 100-999, every header name is an RFC 9110 token,
   no value or reason phrase holds CR, LF, NUL or another control byte but
   HTAB, and no Data comes after the EndOfMessage.
3. Feeding the same bytes one at a time gives the same events as feeding
   them at once (no state depends on how the bytes were split).
4. Where h11 reads the same bytes as a complete response without error,
   certgate's reader either refuses them (it is stricter: no obs-fold, no
   Content-Length with Transfer-Encoding) or reads the same status, headers
   and body.
5. Where the reader hands a body over to be relayed transport to transport
   (``hand_over_body``, :mod:`certgate.proxy.bodyrelay`), the bytes it
   hands over, cut at the count it gives, are the body its events give.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import h11

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _instrumented() -> Any:
    if __name__ != "__main__":
        from certgate.http import upstream_http
        return upstream_http
    import atheris

    with atheris.instrument_imports(include=["certgate.http.upstream_http"]):
        from certgate.http import upstream_http
    return upstream_http


upstream_http = _instrumented()


def _events(data: bytes, method: bytes, split: bool) -> list[Any] | None:
    """Every event until the end of the response (or None if refused)."""
    reader = upstream_http.UpstreamHTTP()
    reader.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"u")]))
    reader.send(h11.EndOfMessage())
    pieces = [data[i:i + 1] for i in range(len(data))] if split else [data]
    pieces.append(b"")  # EOF
    out: list[Any] = []
    try:
        for piece in pieces:
            reader.receive_data(piece)
            for _ in range(len(data) + 8):
                event = reader.next_event()
                if event is h11.NEED_DATA:
                    break
                out.append(event)
                if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return out
                if isinstance(event, upstream_http.ResponseHead) and event.status_code == 101:
                    return out
            else:
                raise AssertionError("the reader made no progress")
    except h11.RemoteProtocolError:
        return None
    return out


def _field(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    # h11 lower-cases Transfer-Encoding values as it reads them ("chUnked");
    # certgate never forwards that hop-by-hop field, so either spelling is right.
    return name, value.lower() if name.lower() == b"transfer-encoding" else value


def _summary(events: list[Any]) -> tuple[Any, ...]:
    """Heads, the joined body, and whether it ended: independent of splitting."""
    heads = tuple((e.status_code, e.reason, tuple(_field(*h) for h in e.headers))
                  for e in events if isinstance(e, upstream_http.ResponseHead))
    body = b"".join(e.data for e in events if isinstance(e, h11.Data))
    ended = any(isinstance(e, h11.EndOfMessage) for e in events)
    return heads, body, ended


def _h11_reading(data: bytes, method: bytes) -> tuple[Any, ...] | None:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"u")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    heads = []
    body = b""
    try:
        for _ in range(len(data) + 8):
            event = conn.next_event()
            if isinstance(event, (h11.Response, h11.InformationalResponse)):
                heads.append((event.status_code, event.reason,
                              tuple(_field(*h) for h in event.headers.raw_items())))
                if event.status_code == 101:
                    return None  # h11 stops there; nothing to compare
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return tuple(heads), body, True
            else:
                return None
    except h11.RemoteProtocolError:
        return None
    return None


def _handed(data: bytes, method: bytes) -> tuple[Any, ...] | None:
    """The response as the body relay reads it: events up to the final head,
    then ``hand_over_body`` and its count. None where nothing is handed over."""
    reader = upstream_http.UpstreamHTTP()
    reader.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"u")]))
    reader.send(h11.EndOfMessage())
    reader.receive_data(data)
    heads = []
    try:
        for _ in range(len(data) + 8):
            event = reader.next_event()
            if not isinstance(event, upstream_http.ResponseHead):
                return None
            heads.append((event.status_code, event.reason,
                          tuple(_field(*h) for h in event.headers)))
            if event.informational:
                if event.status_code == 101:
                    return None
                continue
            handed = reader.hand_over_body()
            if handed is None:
                return None
            buffered, left = handed
            if left is None:  # to the close: the EOF that follows ends it
                return tuple(heads), buffered, True
            return tuple(heads), buffered[:left], len(buffered) >= left
    except h11.RemoteProtocolError:
        return None
    return None


def check(data: bytes) -> None:
    if not data:
        return
    method = b"HEAD" if data[0] & 1 else b"GET"
    body = data[1:]
    whole = _events(body, method, split=False)
    if whole is None:
        assert _events(body, method, split=True) is None, "refused whole, read in pieces"
        return
    ended = False
    for event in whole:
        if isinstance(event, upstream_http.ResponseHead):
            assert 100 <= event.status_code <= 999
            assert not CONTROL.search(event.reason), event.reason
            for name, value in event.headers:
                assert TOKEN.fullmatch(name), name
                assert not CONTROL.search(value), value
        elif isinstance(event, h11.Data):
            assert not ended, "Data after EndOfMessage"
        elif isinstance(event, h11.EndOfMessage):
            ended = True
    pieces = _events(body, method, split=True)
    assert pieces is not None, "read whole, refused in pieces"
    assert _summary(pieces) == _summary(whole), "splitting changed the reading"
    handed = _handed(body, method)
    if handed is not None:
        assert handed == _summary(whole), ("hand-over disagrees", handed, _summary(whole))
    theirs = _h11_reading(body, method)
    if theirs is not None and _summary(whole)[2]:
        assert _summary(whole) == theirs, (whole, theirs)


def main(argv: list[str]) -> None:
    import atheris

    atheris.Setup(argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
