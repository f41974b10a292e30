"""The struct-based SNI peek (issue #15) answers exactly what the reader-based
one did (tests/support/clienthello_oracle.py, the code as it was), on any
input: the same ``complete``/``need``/``sni``/``error``, refusal texts
included.

Invariants checked here, for random bytes, structured hellos with wrong
lengths at every level, mutated real OpenSSL hellos and every split of a
hello into records: the new peek never raises, agrees with the oracle on
every prefix, and (for a well-formed hello) every strict prefix asks for
more bytes while the whole answers the same SNI however it was split.
"""

from __future__ import annotations

import ssl
import struct
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.tls.clienthello import MAX_CLIENT_HELLO, peek_client_hello

from support import clienthello_oracle as oracle


def capture_hello(server_hostname: str | None, version: ssl.TLSVersion | None = None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    outgoing = ssl.MemoryBIO()
    conn = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


T = TypeVar("T")

REAL = [capture_hello("example.test"), capture_hello(None),
        capture_hello("a.example.test", ssl.TLSVersion.TLSv1_2)]


def verdict(result: object) -> tuple[object, ...]:
    return (result.complete, result.need, result.sni, result.error)  # type: ignore[attr-defined]


def same(data: bytes) -> tuple[object, ...]:
    """Both peeks on ``data``; they must agree. Returns the verdict."""
    new = verdict(peek_client_hello(data))
    assert new == verdict(oracle.peek_client_hello(data)), data.hex()
    return new


def records(handshake: bytes, sizes: list[int]) -> bytes:
    """``handshake`` framed into records of the given sizes (cycled)."""
    out = bytearray()
    pos, n = 0, 0
    while pos < len(handshake):
        size = sizes[n % len(sizes)]
        chunk = handshake[pos : pos + size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk
        pos += size
        n += 1
    return bytes(out)


def vec(length_size: int, data: bytes, delta: int = 0) -> bytes:
    """A TLS vector whose length field may lie by ``delta`` (kept in range)."""
    length = max(0, min(len(data) + delta, 256**length_size - 1))
    return length.to_bytes(length_size, "big") + data


# -- structured hellos, each length possibly wrong ----------------------------

def mostly(good: T, *bad: T) -> st.SearchStrategy[T]:
    """``good`` about 9 times in 10, else one of ``bad``: a hello has many
    fields, and if each were often wrong, few inputs would reach the SNI."""
    return st.integers(0, 9).flatmap(lambda n: st.sampled_from(bad) if n == 0 and bad
                                     else st.just(good))


DELTA = mostly(0, -3, -2, -1, 1, 2, 3)
NAMES = st.one_of(mostly(b"example.test", b"a", b"", b"x\x00.test", b"\xc3\xa9.test",
                         b"sp ace", b"\x7f", b"A" * 255),
                  st.binary(max_size=12))


@st.composite
def server_name_ext(draw: st.DrawFn) -> bytes:
    count = draw(mostly(1, 0, 2, 3))
    entries = [(draw(mostly(0, 1, 255)), draw(NAMES), draw(DELTA)) for _ in range(count)]
    names = b"".join(bytes([t]) + vec(2, name, d) for t, name, d in entries)
    return vec(2, names, draw(DELTA)) + draw(mostly(b"", b"\x00"))


@st.composite
def hello_body(draw: st.DrawFn) -> bytes:
    out = bytes([draw(mostly(3, 2, 0))]) + b"\x03"
    out += draw(mostly(bytes(32), b"\x01" * 31))
    out += vec(1, draw(st.one_of(mostly(b"", bytes(33)), st.binary(max_size=32))), draw(DELTA))
    out += vec(2, draw(mostly(b"\x13\x01", b"\x13\x01\x13\x02", b"", b"\x13")), draw(DELTA))
    out += vec(1, draw(mostly(b"\x00", b"", b"\x00\x01")), draw(DELTA))
    if draw(mostly(True, False)):
        exts = b""
        for _ in range(draw(st.integers(0, 4))):
            ext_type = draw(st.sampled_from([0, 0, 0, 10, 16, 43, 0xFFFF]))
            data = draw(server_name_ext()) if ext_type == 0 else draw(st.binary(max_size=8))
            exts += struct.pack("!H", ext_type) + vec(2, data, draw(DELTA))
        out += vec(2, exts, draw(DELTA))
    return out + draw(mostly(b"", b"\x00", b"\x00\x00"))


@st.composite
def hellos(draw: st.DrawFn) -> bytes:
    body = draw(hello_body())
    msg_type = draw(mostly(1, 2))
    length = max(0, len(body) + draw(DELTA))
    handshake = bytes([msg_type]) + length.to_bytes(3, "big") + body
    sizes = draw(st.lists(st.integers(1, 600), min_size=1, max_size=4))
    return records(handshake, sizes) + draw(mostly(b"", b"GET / HTTP/1.1\r\n"))


@settings(max_examples=800, deadline=None)
@given(hellos())
def test_structured_hellos_agree_with_the_oracle(data: bytes) -> None:
    same(data)


@settings(max_examples=120, deadline=None)
@given(hellos())
def test_every_prefix_of_a_structured_hello_agrees(data: bytes) -> None:
    for n in range(len(data) + 1):
        same(data[:n])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=700))
def test_random_bytes_agree(data: bytes) -> None:
    same(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bodies_in_a_valid_frame_agree(body: bytes) -> None:
    """Random ClientHello bodies behind a correct record and handshake header:
    every refusal of the body parser is reached with its own text."""
    same(records(b"\x01" + len(body).to_bytes(3, "big") + body, [16384]))
    same(records(b"\x01" + len(body).to_bytes(3, "big") + b"\x03\x03" + bytes(32) + body,
                 [16384]))


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(REAL),
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_real_hellos_agree_on_every_prefix(base: bytes, edits: list[tuple[int, int]]
                                                   ) -> None:
    data = bytearray(base)
    for index, value in edits:
        data[index % len(data)] = value
    for n in range(0, len(data) + 1, 3):
        same(bytes(data[:n]))
    same(bytes(data))


@settings(max_examples=200, deadline=None)
@given(base=st.sampled_from(REAL), sizes=st.lists(st.integers(1, 700), min_size=1, max_size=6))
def test_any_split_of_a_real_hello_reads_the_same(base: bytes, sizes: list[int]) -> None:
    """However a well-formed hello is cut into records: every strict prefix
    asks for more (and no more than the cap), the whole gives the same SNI."""
    expected = verdict(peek_client_hello(base))
    assert expected[0]
    assert expected[3] is None
    data = records(base[5:], sizes)
    for n in range(len(data)):
        complete, need, _, _ = same(data[:n])
        assert not complete
        assert n < need <= MAX_CLIENT_HELLO
    assert same(data) == expected


def test_every_refusal_text_of_the_body_parser_is_reached() -> None:
    """The differential tests above are only as good as the refusals they
    reach: each of the body parser's texts must come out of some input."""
    seen: set[str] = set()
    cases = {
        "truncated client_version": b"",
        "unsupported ClientHello version": b"\x02",
        "truncated random": b"\x03\x03",
        "truncated legacy_session_id length": b"\x03" + bytes(33),
        "truncated legacy_session_id": b"\x03" + bytes(33) + b"\x05",
        "legacy_session_id longer than 32 bytes": b"\x03" + bytes(33) + vec(1, bytes(33)),
        "truncated cipher_suites length": b"\x03" + bytes(33) + b"\x00\x00",
        "empty cipher_suites": b"\x03" + bytes(33) + b"\x00\x00\x00",
        "cipher_suites too short": b"\x03" + bytes(33) + b"\x00\x00\x01\x13",
        "truncated cipher_suites": b"\x03" + bytes(33) + b"\x00\x00\x04\x13\x01",
        "odd-length cipher_suites": b"\x03" + bytes(33) + b"\x00" + vec(2, b"\x13\x01\x13"),
    }
    prefix = b"\x03" + bytes(33) + b"\x00" + vec(2, b"\x13\x01")
    cases |= {
        "truncated compression_methods length": prefix,
        "empty compression_methods": prefix + b"\x00",
        "truncated compression_methods": prefix + b"\x02\x00",
    }
    prefix += b"\x01\x00"
    sni = b"\x00\x00"
    cases |= {
        "truncated extensions length": prefix + b"\x00",
        "truncated extensions": prefix + b"\x00\x05",
        "2 stray bytes after extensions": prefix + b"\x00\x00\x00\x00",
        "truncated extension type": prefix + vec(2, b"\x00"),
        "truncated extension data length": prefix + vec(2, b"\x00\x0a\x00"),
        "truncated extension data": prefix + vec(2, b"\x00\x0a\x00\x05"),
        "duplicate extension 10": prefix + vec(2, b"\x00\x0a\x00\x00" * 2),
        "truncated server_name list length": prefix + vec(2, sni + vec(2, b"\x00")),
        "empty server_name list": prefix + vec(2, sni + vec(2, b"\x00\x00")),
        "truncated server_name list": prefix + vec(2, sni + vec(2, b"\x00\x05\x00")),
        "1 stray bytes after server_name list": prefix + vec(
            2, sni + vec(2, vec(2, b"\x00" + vec(2, b"a")) + b"\x00")),
        "server_name entry is not a host_name": prefix + vec(
            2, sni + vec(2, vec(2, b"\x01" + vec(2, b"a")))),
        "truncated host_name length": prefix + vec(2, sni + vec(2, vec(2, b"\x00\x00"))),
        "empty host_name": prefix + vec(2, sni + vec(2, vec(2, b"\x00\x00\x00"))),
        "truncated host_name": prefix + vec(2, sni + vec(2, vec(2, b"\x00\x00\x05a"))),
        "4 stray bytes after host_name (only one server_name entry is accepted)": prefix + vec(
            2, sni + vec(2, vec(2, b"\x00" + vec(2, b"a") + b"\x00" + vec(2, b"b")))),
        "host_name is not printable ASCII": prefix + vec(
            2, sni + vec(2, vec(2, b"\x00" + vec(2, b"a b")))),
    }
    for reason, body in cases.items():
        data = records(b"\x01" + len(body).to_bytes(3, "big") + body, [16384])
        complete, need, sni_seen, error = same(data)
        assert (complete, need, sni_seen, error) == (True, 0, None, reason), reason
        seen.add(reason)
    assert len(seen) == len(cases)
