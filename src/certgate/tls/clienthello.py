"""Find the SNI host name in the first bytes of a TLS connection, without I/O.

Theory of operation
-------------------
The listener must pick an ``SSLContext`` (certificate, client-auth mode)
before OpenSSL sees the connection, so it peeks (``MSG_PEEK``) at the bytes
the client sent first and feeds them to :func:`peek_client_hello`. The
function is pure: give it every byte buffered so far, and it answers one of

* ``complete=True, sni=...`` -- a whole ClientHello was parsed;
* ``complete=True, error=...`` -- these bytes are not a ClientHello we accept
  (plaintext HTTP on the TLS port, SSLv2, garbage, malformed vectors);
* ``complete=False, need=N`` -- call again once ``N`` bytes are buffered. ``N``
  is the end of the next record header (5 bytes) or of the current record,
  so the caller waits for whole records and never re-parses byte by byte.

Framing follows RFC 8446 s.5.1: the ClientHello handshake message (type 1,
RFC 8446 s.4 / RFC 5246 s.7.4) may be fragmented over several records of
content type 22 (handshake); its fragments are concatenated until the 4-byte
handshake header's length is satisfied. Any other record type before that,
an empty handshake record, or a record over 2**14 bytes is an error.

The ClientHello is parsed strictly (every vector bounds-checked against its
enclosing vector, RFC 8446 s.3.4), the extension list must be consumed
exactly, and an extension type may appear only once (RFC 8446 s.4.2). The
``server_name`` extension (RFC 6066 s.3) must hold exactly one entry, of type
``host_name``: that is what OpenSSL itself accepts, and the peek must never
see a different name than the handshake that follows. Even so, the peek only
*selects* a context: the proxy must still compare the name OpenSSL reports
after the handshake with the one peeked, and OpenSSL re-parses the whole
message authoritatively.

Bytes after the end of the ClientHello message are not looked at.
"""

from __future__ import annotations

import struct
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


# Lengths are read with precompiled structs at offsets into one bytes
# object: no reader object, no slice per field (the previous reader made
# ~46 method calls and a slice each per handshake). Every read is checked
# against the end of its enclosing vector first, and each refusal keeps the
# reason text the reader gave (tests/tls/test_clienthello_struct.py runs
# both on the same inputs).
_U16 = struct.Struct(">H").unpack_from
_U16_U16 = struct.Struct(">HH").unpack_from
# host_name bytes RFC 6066 and certgate accept: visible ASCII, 0x21-0x7E.
_PRINTABLE = bytes(range(0x21, 0x7F))


def _parse_client_hello(body: bytes) -> ClientHelloPeek:
    try:
        sni = _server_name_from_body(body)
    except _Malformed as exc:
        return _error(str(exc))
    return ClientHelloPeek(complete=True, need=0, sni=sni, error=None)


def _server_name_from_body(body: bytes) -> str | None:
    """Walk a ClientHello body (RFC 8446 s.4.1.2, RFC 5246 s.7.4.1.2)."""
    end = len(body)
    if not end:
        raise _Malformed("truncated client_version")
    if body[0] != 3:
        raise _Malformed("unsupported ClientHello version")
    pos = 1 + 1 + 32  # the version's second byte, then random
    if pos > end:
        raise _Malformed("truncated random")
    # legacy_session_id<0..32>
    if pos + 1 > end:
        raise _Malformed("truncated legacy_session_id length")
    length = body[pos]
    pos += 1 + length
    if pos > end:
        raise _Malformed("truncated legacy_session_id")
    if length > 32:
        raise _Malformed("legacy_session_id longer than 32 bytes")
    # cipher_suites<2..2^16-2>
    if pos + 2 > end:
        raise _Malformed("truncated cipher_suites length")
    (length,) = _U16(body, pos)
    if length < 2:
        raise _Malformed("empty cipher_suites" if length == 0 else "cipher_suites too short")
    pos += 2 + length
    if pos > end:
        raise _Malformed("truncated cipher_suites")
    if length % 2:
        raise _Malformed("odd-length cipher_suites")
    # legacy_compression_methods<1..2^8-1>
    if pos + 1 > end:
        raise _Malformed("truncated compression_methods length")
    length = body[pos]
    if not length:
        raise _Malformed("empty compression_methods")
    pos += 1 + length
    if pos > end:
        raise _Malformed("truncated compression_methods")
    if pos == end:
        # RFC 5246 s.7.4.1.2: a TLS 1.2 client may omit extensions entirely.
        return None
    # Extension extensions<8..2^16-1>, which must end the body exactly.
    if pos + 2 > end:
        raise _Malformed("truncated extensions length")
    (length,) = _U16(body, pos)
    pos += 2
    extensions_end = pos + length
    if extensions_end > end:
        raise _Malformed("truncated extensions")
    if extensions_end != end:
        raise _Malformed(f"{end - extensions_end} stray bytes after extensions")
    seen: set[int] = set()
    sni: str | None = None
    while pos < end:
        if pos + 4 > end:
            raise _Malformed("truncated extension type" if pos + 2 > end
                             else "truncated extension data length")
        ext_type, length = _U16_U16(body, pos)
        start = pos + 4
        pos = start + length
        if pos > end:
            raise _Malformed("truncated extension data")
        if ext_type in seen:
            raise _Malformed(f"duplicate extension {ext_type}")
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            sni = _host_name(body, start, pos)
    return sni


def _host_name(body: bytes, pos: int, end: int) -> str:
    """Decode a ServerNameList (``body[pos:end]``) holding one host_name (RFC 6066 s.3)."""
    if pos + 2 > end:
        raise _Malformed("truncated server_name list length")
    (length,) = _U16(body, pos)
    if not length:
        raise _Malformed("empty server_name list")
    pos += 2
    names_end = pos + length
    if names_end > end:
        raise _Malformed("truncated server_name list")
    if names_end != end:
        raise _Malformed(f"{end - names_end} stray bytes after server_name list")
    if body[pos] != _NAME_TYPE_HOST_NAME:  # the list is not empty: one byte at least
        raise _Malformed("server_name entry is not a host_name")
    pos += 1
    if pos + 2 > names_end:
        raise _Malformed("truncated host_name length")
    (length,) = _U16(body, pos)
    if not length:
        raise _Malformed("empty host_name")
    pos += 2
    if pos + length > names_end:
        raise _Malformed("truncated host_name")
    raw = body[pos : pos + length]
    pos += length
    if pos != names_end:
        raise _Malformed(f"{names_end - pos} stray bytes after host_name "
                         "(only one server_name entry is accepted)")
    # RFC 6066 s.3: "represented as a byte string using ASCII encoding". We
    # refuse NUL (the classic certificate-name truncation trick), controls,
    # space, DEL and anything non-ASCII rather than guess an encoding.
    if raw.translate(None, _PRINTABLE):
        raise _Malformed("host_name is not printable ASCII")
    return raw.decode("ascii")
