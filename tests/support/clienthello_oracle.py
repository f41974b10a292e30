"""The SNI peek as it was before issue #15 made it struct-based (commit
5cbcdf6): the oracle tests/tls/test_clienthello_struct.py compares
certgate.tls.clienthello with. The code below is verbatim; do not "fix" it.
See certgate.tls.clienthello for the theory of operation.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_CLIENT_HELLO", "ClientHelloPeek", "peek_client_hello"]

#: Cap on the total bytes (record headers included) we are willing to wait
#: for. A typical ClientHello is 250-600 bytes; Chrome's with an
#: X25519MLKEM768 key share (1216 bytes of key share alone) is about 1.8 KB;
#: Envoy's has been seen at 5.4 KB (inetaf/tcpproxy#40). A resumption hello to
#: certgate also carries its session ticket, and OpenSSL tickets embed the
#: client certificate (roughly 1-2 KB more). 16 KiB leaves about 3x headroom
#: over the largest seen, matches nginx's ``preread_buffer_size`` default,
#: and is far below the default Linux receive buffer (``tcp_rmem``, 128 KiB):
#: while we only peek, nothing is consumed, so a cap above what the kernel
#: will buffer would stall the client forever instead of failing fast.
MAX_CLIENT_HELLO = 16 * 1024

#: RFC 8446 s.5.1: TLSPlaintext.length MUST NOT exceed 2**14.
MAX_RECORD_PAYLOAD = 2**14
RECORD_HEADER_SIZE = 5
HANDSHAKE_HEADER_SIZE = 4

_CONTENT_HANDSHAKE = 22  # RFC 8446 s.5.1 ContentType.handshake
_HANDSHAKE_CLIENT_HELLO = 1  # RFC 8446 s.4 HandshakeType.client_hello
_EXT_SERVER_NAME = 0  # RFC 6066 s.3 / RFC 8446 s.4.2
_NAME_TYPE_HOST_NAME = 0  # RFC 6066 s.3 NameType.host_name


@dataclass(frozen=True, slots=True)
class ClientHelloPeek:
    """The verdict on the bytes peeked so far.

    ``complete`` is True once ``sni``/``error`` are final. When it is False,
    ``need`` is the total number of buffered bytes to have before calling
    again (always more than were given); it is 0 when complete. ``sni`` is
    the ``host_name`` of the server_name extension as ASCII text, not
    normalised (see :mod:`certgate.hostnames`), or None if the client sent
    none. ``error`` is a short reason, set only when complete.
    """

    complete: bool
    need: int
    sni: str | None
    error: str | None

    def __post_init__(self) -> None:
        if self.complete:
            if self.need != 0:
                raise ValueError("a complete peek needs no more bytes")
            if self.sni is not None and self.error is not None:
                raise ValueError("a peek has an SNI or an error, not both")
        elif self.need <= 0 or self.sni is not None or self.error is not None:
            raise ValueError("an incomplete peek has only a positive need")


class _Malformed(Exception):
    """Internal: the bytes are not an acceptable ClientHello (never escapes)."""


def _error(reason: str) -> ClientHelloPeek:
    return ClientHelloPeek(complete=True, need=0, sni=None, error=reason)


def _need(total: int) -> ClientHelloPeek:
    if total > MAX_CLIENT_HELLO:
        return _error(f"ClientHello larger than {MAX_CLIENT_HELLO} bytes")
    return ClientHelloPeek(complete=False, need=total, sni=None, error=None)


def peek_client_hello(data: bytes) -> ClientHelloPeek:
    """Look for a complete ClientHello at the start of ``data``; never raises.

    Args:
        data: every byte received on the connection so far (peeked, not
            consumed), starting with the first.

    Returns:
        See :class:`ClientHelloPeek`. Errors are reported as soon as the
        bytes given prove them (the first byte of an HTTP request is enough),
        so a plaintext client is not kept waiting for bytes that never come.
    """
    handshake = bytearray()
    pos = 0
    records = 0
    while True:
        header = data[pos : pos + RECORD_HEADER_SIZE]
        problem = _check_record_header(header, first=pos == 0)
        if problem is not None:
            return _error(problem)
        if len(header) < RECORD_HEADER_SIZE:
            return _need(pos + RECORD_HEADER_SIZE)
        records += 1
        record_end = pos + RECORD_HEADER_SIZE + int.from_bytes(header[3:5], "big")
        handshake += data[pos + RECORD_HEADER_SIZE : record_end]
        if not handshake:
            return _need(record_end)
        if handshake[0] != _HANDSHAKE_CLIENT_HELLO:
            return _error(f"first handshake message is type {handshake[0]}, not ClientHello")
        if len(handshake) >= HANDSHAKE_HEADER_SIZE:
            body_length = int.from_bytes(handshake[1:4], "big")
            message_end = HANDSHAKE_HEADER_SIZE + body_length
            # The fewest bytes that could carry the message: the record
            # headers seen so far plus the whole message.
            if records * RECORD_HEADER_SIZE + message_end > MAX_CLIENT_HELLO:
                return _error(f"ClientHello larger than {MAX_CLIENT_HELLO} bytes")
            if len(handshake) >= message_end:
                return _parse_client_hello(bytes(handshake[HANDSHAKE_HEADER_SIZE:message_end]))
        if record_end > len(data):
            return _need(record_end)
        pos = record_end


def _check_record_header(header: bytes, *, first: bool) -> str | None:
    """Judge as much of a TLSPlaintext header (RFC 8446 s.5.1) as is present."""
    if not header:
        return None
    content_type = header[0]
    if content_type != _CONTENT_HANDSHAKE:
        if not first:
            return f"record of content type {content_type} inside the ClientHello"
        if content_type & 0x80:
            # RFC 5246 appendix E.2: the SSL 2.0 CLIENT-HELLO starts with a
            # two-byte length whose high bit is set. No TLS 1.2+ server
            # accepts it.
            return "SSLv2-style ClientHello is not supported"
        if 0x41 <= content_type <= 0x5A:  # "A".."Z": an HTTP method starts so
            return "plaintext (looks like HTTP) instead of a TLS handshake"
        return f"not a TLS handshake (first byte 0x{content_type:02x})"
    if len(header) >= 2 and header[1] != 3:
        # legacy_record_version is 0x03XX in every TLS version.
        return "unsupported record version"
    if len(header) >= RECORD_HEADER_SIZE:
        length = int.from_bytes(header[3:5], "big")
        if length == 0:
            # RFC 8446 s.5.1: zero-length handshake fragments MUST NOT be sent.
            return "empty handshake record"
        if length > MAX_RECORD_PAYLOAD:
            return "record longer than 2**14 bytes"
    return None


class _Reader:
    """Bounds-checked reads from one TLS vector (RFC 8446 s.3.4)."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining:
            raise _Malformed(f"truncated {what}")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, length_size: int, what: str, *, minimum: int = 0) -> _Reader:
        """A ``<minimum..2^(8*length_size)-1>`` vector, as a reader of its own."""
        length = self.uint(length_size, f"{what} length")
        if length < minimum:
            raise _Malformed(f"empty {what}" if length == 0 else f"{what} too short")
        return _Reader(self.take(length, what))

    def take_rest(self) -> bytes:
        return self.take(self.remaining, "rest")

    def expect_end(self, what: str) -> None:
        if self.remaining:
            raise _Malformed(f"{self.remaining} stray bytes after {what}")


def _parse_client_hello(body: bytes) -> ClientHelloPeek:
    try:
        sni = _server_name_from_body(_Reader(body))
    except _Malformed as exc:
        return _error(str(exc))
    return ClientHelloPeek(complete=True, need=0, sni=sni, error=None)


def _server_name_from_body(reader: _Reader) -> str | None:
    """Walk a ClientHello body (RFC 8446 s.4.1.2, RFC 5246 s.7.4.1.2)."""
    if reader.uint(1, "client_version") != 3:
        raise _Malformed("unsupported ClientHello version")
    reader.take(1 + 32, "random")
    session_id = reader.vector(1, "legacy_session_id")
    if session_id.remaining > 32:
        raise _Malformed("legacy_session_id longer than 32 bytes")
    suites = reader.vector(2, "cipher_suites", minimum=2)
    if suites.remaining % 2:
        raise _Malformed("odd-length cipher_suites")
    reader.vector(1, "compression_methods", minimum=1)
    if not reader.remaining:
        # RFC 5246 s.7.4.1.2: a TLS 1.2 client may omit extensions entirely.
        return None
    extensions = reader.vector(2, "extensions")
    reader.expect_end("extensions")
    seen: set[int] = set()
    sni: str | None = None
    while extensions.remaining:
        ext_type = extensions.uint(2, "extension type")
        ext_data = extensions.vector(2, "extension data")
        if ext_type in seen:
            raise _Malformed(f"duplicate extension {ext_type}")
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            sni = _host_name(ext_data)
    return sni


def _host_name(ext: _Reader) -> str:
    """Decode a ServerNameList holding one host_name (RFC 6066 s.3)."""
    names = ext.vector(2, "server_name list", minimum=1)
    ext.expect_end("server_name list")
    if names.uint(1, "server_name type") != _NAME_TYPE_HOST_NAME:
        raise _Malformed("server_name entry is not a host_name")
    raw = names.vector(2, "host_name", minimum=1).take_rest()
    names.expect_end("host_name (only one server_name entry is accepted)")
    # RFC 6066 s.3: "represented as a byte string using ASCII encoding". We
    # refuse NUL (the classic certificate-name truncation trick), controls,
    # space, DEL and anything non-ASCII rather than guess an encoding.
    if any(not 0x21 <= byte <= 0x7E for byte in raw):
        raise _Malformed("host_name is not printable ASCII")
    return raw.decode("ascii")
