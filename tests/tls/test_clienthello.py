"""peek_client_hello against real ClientHellos (captured from OpenSSL) and hostile bytes.

Fuzz invariant, for every input: the function returns (never raises); when
``complete`` is False, ``need > len(data)`` and ``need <= MAX_CLIENT_HELLO``;
when complete, exactly one of ``sni``/``error`` may be set and ``need == 0``.
"""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certgate.tls.clienthello import (
    MAX_CLIENT_HELLO,
    ClientHelloPeek,
    peek_client_hello,
)

VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


def capture_hello(server_hostname: str | None, version: ssl.TLSVersion | None = None) -> bytes:
    """The first flight of a real OpenSSL client: one ClientHello record."""
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


HELLO = capture_hello("example.test")
HELLO_NO_SNI = capture_hello(None)


def resplit(hello: bytes, size: int) -> bytes:
    """Re-frame the handshake bytes of a one-record hello into records of ``size``."""
    assert hello[0] == 22
    version = hello[1:3]
    payload = hello[5:]
    out = bytearray()
    for i in range(0, len(payload), size):
        chunk = payload[i : i + size]
        out += bytes([22]) + version + struct.pack("!H", len(chunk)) + chunk
    return bytes(out)


def record(payload: bytes, content_type: int = 22) -> bytes:
    return bytes([content_type, 3, 1]) + struct.pack("!H", len(payload)) + payload


def vec(length_size: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


def ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!H", ext_type) + vec(2, data)


def sni_ext(*entries: tuple[int, bytes]) -> bytes:
    return ext(0, vec(2, b"".join(bytes([t]) + vec(2, name) for t, name in entries)))


def body(
    extensions: bytes | None = b"",
    *,
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
) -> bytes:
    out = b"\x03\x03" + bytes(32) + vec(1, session_id) + vec(2, suites) + vec(1, compression)
    if extensions is not None:
        out += vec(2, extensions)
    return out


def hello_from_body(hello_body: bytes, msg_type: int = 1) -> bytes:
    return record(bytes([msg_type]) + len(hello_body).to_bytes(3, "big") + hello_body)


def check_invariants(data: bytes, result: ClientHelloPeek) -> None:
    if result.complete:
        assert result.need == 0
        assert result.sni is None or result.error is None
    else:
        assert len(data) < result.need <= MAX_CLIENT_HELLO
        assert result.sni is None
        assert result.error is None


# -- real ClientHellos --------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_real_hello_with_sni(version: ssl.TLSVersion) -> None:
    result = peek_client_hello(capture_hello("example.test", version))
    assert result == ClientHelloPeek(complete=True, need=0, sni="example.test", error=None)


@pytest.mark.parametrize("version", [*VERSIONS, None])
def test_real_hello_without_sni(version: ssl.TLSVersion | None) -> None:
    result = peek_client_hello(capture_hello(None, version))
    assert result == ClientHelloPeek(complete=True, need=0, sni=None, error=None)


def test_sni_is_not_normalised() -> None:
    assert peek_client_hello(capture_hello("Mixed.Example.TEST")).sni == "Mixed.Example.TEST"


def test_trailing_bytes_after_the_hello_are_ignored() -> None:
    assert peek_client_hello(HELLO + b"\x17\x03\x03garbage").sni == "example.test"


@pytest.mark.parametrize("hello", [HELLO, HELLO_NO_SNI], ids=["sni", "no-sni"])
def test_every_prefix_asks_for_the_header_then_the_record(hello: bytes) -> None:
    for n in range(len(hello)):
        result = peek_client_hello(hello[:n])
        expected = 5 if n < 5 else len(hello)
        assert result == ClientHelloPeek(complete=False, need=expected, sni=None, error=None), n


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_hello_split_over_records(size: int) -> None:
    data = resplit(HELLO, size)
    assert peek_client_hello(data).sni == "example.test"


def test_hello_in_100_byte_records_asks_for_each_record_in_turn() -> None:
    data = resplit(HELLO, 100)
    boundaries: list[int] = []
    pos = 0
    while pos < len(data):
        boundaries.append(pos)
        pos += 5 + int.from_bytes(data[pos + 3 : pos + 5], "big")
    assert len(boundaries) == (len(HELLO) - 5 + 99) // 100
    for n in range(len(data)):
        start = max(b for b in boundaries if b <= n)
        record_end = start + 5 + int.from_bytes(data[start + 3 : start + 5], "big")
        expected = start + 5 if n < start + 5 else record_end
        result = peek_client_hello(data[:n])
        assert not result.complete, n
        assert result.need == expected, n
    assert peek_client_hello(data).sni == "example.test"


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 600), min_size=1, max_size=40))
def test_caller_loop_feeding_need_bytes_terminates(sizes: list[int]) -> None:
    """Re-frame with random record sizes; a caller that waits for ``need`` gets the SNI."""
    payload = HELLO[5:]
    data = bytearray()
    pos, i = 0, 0
    while pos < len(payload):
        size = sizes[i % len(sizes)]
        data += record(payload[pos : pos + size])
        pos, i = pos + size, i + 1
    have = 0
    for _ in range(len(data) + 1):
        result = peek_client_hello(bytes(data[:have]))
        if result.complete:
            break
        assert result.need > have
        have = result.need
    assert result.sni == "example.test"


# -- not TLS at all -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", "HTTP"),
        (b"G", "HTTP"),
        (b"PRI * HTTP/2.0\r\n", "HTTP"),
        # SSLv2-compatible CLIENT-HELLO (RFC 5246 appendix E.2).
        (bytes.fromhex("802e0103010015000000100300800700c0"), "SSLv2"),
        (b"\x00\x00\x00\x00\x00", "not a TLS handshake"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "HTTP"),  # any plaintext banner, really
        (bytes.fromhex("15030300020228"), "not a TLS handshake"),  # alert record
        (bytes.fromhex("1603"), None),  # truncated but plausible: not an error
        (bytes.fromhex("1602"), "record version"),
        (bytes.fromhex("1604"), "record version"),
        (bytes.fromhex("1603010000"), "empty handshake record"),
        (bytes.fromhex("1603014001"), "2**14"),
        (bytes.fromhex("160301000102"), "not ClientHello"),  # ServerHello type
    ],
)
def test_non_tls_and_bad_framing(data: bytes, fragment: str | None) -> None:
    result = peek_client_hello(data)
    if fragment is None:
        assert not result.complete
        assert result.need == 5
        return
    assert result.complete
    assert result.error is not None
    assert fragment in result.error


def test_empty_input_asks_for_a_header() -> None:
    assert peek_client_hello(b"") == ClientHelloPeek(False, 5, None, None)


def test_wrong_handshake_type_in_real_hello() -> None:
    data = bytearray(HELLO)
    data[5] = 2
    result = peek_client_hello(bytes(data))
    assert result.error is not None
    assert "type 2" in result.error


def test_other_record_type_inside_fragmented_hello() -> None:
    data = resplit(HELLO, 100)
    first = 5 + 100
    ccs = bytes.fromhex("140303000101")
    result = peek_client_hello(data[:first] + ccs + data[first:])
    assert result.error == "record of content type 20 inside the ClientHello"


def test_declared_length_over_the_cap_fails_without_waiting() -> None:
    result = peek_client_hello(bytes.fromhex("160301000401ffffff"))
    assert result.complete
    assert result.error is not None
    assert "larger than" in result.error


def test_large_hello_below_cap_is_accepted_and_above_is_refused() -> None:
    names = sni_ext((0, b"big.example"))
    padding = ext(21, bytes(12000))  # RFC 7685 padding extension
    hello_body = body(names + padding)
    message = bytes([1]) + len(hello_body).to_bytes(3, "big") + hello_body
    framed = b"".join(record(message[i : i + 4000]) for i in range(0, len(message), 4000))
    assert len(framed) <= MAX_CLIENT_HELLO
    assert peek_client_hello(framed).sni == "big.example"

    huge = body(names + ext(21, bytes(MAX_CLIENT_HELLO)))
    message = bytes([1]) + len(huge).to_bytes(3, "big") + huge
    framed = b"".join(record(message[i : i + 2**14]) for i in range(0, len(message), 2**14))
    for n in (5, 6, 9, 100, len(framed)):
        result = peek_client_hello(framed[:n])
        check_invariants(framed[:n], result)
        if n >= 9:
            assert result.error is not None


def test_record_that_would_end_past_the_cap_is_refused() -> None:
    """The message fits the cap, but the next record's declared length does not."""
    message_start = bytes([1]) + (10000).to_bytes(3, "big") + bytes(4996)
    first = record(message_start)
    second_header = bytes([22, 3, 1]) + struct.pack("!H", 2**14)
    assert peek_client_hello(first) == ClientHelloPeek(False, len(first) + 5, None, None)
    result = peek_client_hello(first + second_header)
    assert result.error == f"ClientHello larger than {MAX_CLIENT_HELLO} bytes"


# -- strict parsing of the ClientHello body -----------------------------------


@pytest.mark.parametrize(
    ("hello_body", "expected"),
    [
        (body(sni_ext((0, b"a.example"))), "a.example"),
        (body(None), None),  # TLS 1.2 without any extensions
        (body(b""), None),
        (body(ext(0xAAAA, b"") + sni_ext((0, b"x.test")) + ext(0xBABA, b"\x00")), "x.test"),
        (body(sni_ext((0, b"example.com."))), "example.com."),
    ],
)
def test_synthetic_hellos(hello_body: bytes, expected: str | None) -> None:
    result = peek_client_hello(hello_from_body(hello_body))
    assert result == ClientHelloPeek(True, 0, expected, None)


@pytest.mark.parametrize(
    ("hello_body", "fragment"),
    [
        (body(sni_ext((0, b"a\x00.example"))), "printable ASCII"),
        (body(sni_ext((0, "café.example".encode()))), "printable ASCII"),
        (body(sni_ext((0, b"a b"))), "printable ASCII"),
        (body(sni_ext((0, b"a\nb"))), "printable ASCII"),
        (body(sni_ext((0, b""))), "empty host_name"),
        (body(ext(0, vec(2, b""))), "empty server_name list"),
        (body(ext(0, b"")), "truncated server_name list length"),
        (body(sni_ext((1, b"a.example"))), "not a host_name"),
        (body(sni_ext((0, b"a.example"), (0, b"b.example"))), "only one"),
        (body(sni_ext((0, b"a.example")) + sni_ext((0, b"b.example"))), "duplicate extension 0"),
        (body(ext(16, b"") + ext(16, b"")), "duplicate extension 16"),
        (body(ext(0, vec(2, b"\x00\x00\x05ab"))), "truncated host_name"),
        (body(ext(0, vec(2, b"\x00\x00\x02ab") + b"x")), "stray bytes after server_name list"),
        (body(b"", session_id=bytes(33)), "legacy_session_id longer"),
        (body(b"", suites=b"\x13"), "cipher_suites too short"),
        (body(b"", suites=b"\x13\x01\x13"), "odd-length"),
        (body(b"", compression=b""), "empty compression_methods"),
        (body(b"") + b"\x00", "stray bytes after extensions"),
        (body(None) + b"\x00", "truncated extensions length"),
        (body(None) + b"\x00\x05\x00\x00", "truncated extensions"),
        (body(None) + b"\x00\x03\x00\x00\x00", "truncated extension data length"),
        (b"\x03\x03" + bytes(10), "truncated random"),
        (b"\x02\x00" + bytes(40), "ClientHello version"),
        (b"", "truncated client_version"),
    ],
)
def test_malformed_hellos(hello_body: bytes, fragment: str) -> None:
    result = peek_client_hello(hello_from_body(hello_body))
    assert result.complete
    assert result.sni is None
    assert result.error is not None
    assert fragment in result.error


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_outer_lengths(delta: int) -> None:
    """The handshake length disagreeing with the content is caught either way."""
    inner = body(sni_ext((0, b"a.example")))
    message = bytes([1]) + (len(inner) + delta).to_bytes(3, "big") + inner
    result = peek_client_hello(record(message))
    if delta > 0:  # claims more than the record holds: wait for a next record
        assert result == ClientHelloPeek(False, len(record(message)) + 5, None, None)
    else:  # the last byte of extensions is cut off
        assert result.error is not None


# -- fuzzing ------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_invariants(data, peek_client_hello(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_behind_a_plausible_header(tail: bytes) -> None:
    data = bytes.fromhex("16030100") + bytes([min(len(tail), 255)]) + tail
    check_invariants(data, peek_client_hello(data))


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from([HELLO, HELLO_NO_SNI, resplit(HELLO, 100)]),
    edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 2000),
)
def test_fuzz_mutated_real_hello(base: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(base)
    for index, value in edits:
        data[index % len(data)] = value
    for candidate in (bytes(data), bytes(data[: cut % (len(data) + 1)])):
        check_invariants(candidate, peek_client_hello(candidate))


@settings(max_examples=200, deadline=None)
@given(
    base=st.sampled_from([HELLO, resplit(HELLO, 100)]),
    index=st.integers(0, 2000),
    insert=st.binary(min_size=0, max_size=8),
    delete=st.integers(0, 8),
)
def test_fuzz_insert_delete(base: bytes, index: int, insert: bytes, delete: int) -> None:
    i = index % len(base)
    data = base[:i] + insert + base[i + delete :]
    check_invariants(data, peek_client_hello(data))


def test_every_prefix_of_every_single_byte_mutation_of_the_header_region() -> None:
    """Exhaustive over the framing bytes: 9 positions x 256 values x prefixes."""
    for index in range(9):
        for value in range(256):
            data = bytearray(HELLO)
            data[index] = value
            for n in (index + 1, 9, 50, len(data)):
                check_invariants(bytes(data[:n]), peek_client_hello(bytes(data[:n])))
