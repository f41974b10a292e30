"""What every client shares: the TLS context and a minimal HTTP/1.1 response reader.

Minimal on purpose: a load generator that parses like a real client (h11)
spends as much CPU per request as the proxy it measures. Responses here are
always ``Content-Length`` framed (the benchmark upstream never chunks, and
neither proxy re-chunks a framed body), so finding the end of the head and
one header is enough.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a client connects and with what (``cert`` None: plain TCP, no TLS)."""

    port: int
    cert: Path | None = None
    key: Path | None = None
    tls_version: str = "1.3"


def client_context(target: Target) -> ssl.SSLContext | None:
    """A client context that presents the client certificate and checks nothing.

    The generator does not verify the server's chain: that is two signature
    checks per handshake that would only take CPU away from the server being
    measured. The *server* still verifies the client, which is the point.
    """
    if target.cert is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[target.tls_version]
    ctx.load_cert_chain(str(target.cert), str(target.key))
    return ctx


def response_length(buf: bytes | bytearray) -> int:
    """Bytes of the first complete response in ``buf``, or 0 if it is not all there.

    Raises:
        ValueError: the head is complete but has no Content-Length.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    head = bytes(buf[:end]).lower()
    at = head.find(b"\ncontent-length:")
    if at < 0:
        raise ValueError("response without Content-Length: " + head[:80].decode("latin-1"))
    stop = head.find(b"\r\n", at + 1)
    total = end + 4 + int(head[at + 16: stop if stop >= 0 else None])
    return total if len(buf) >= total else 0


def status_of(buf: bytes | bytearray) -> int:
    """The status code of a response starting at ``buf[0]`` (0 if unreadable)."""
    try:
        return int(buf[9:12])
    except ValueError:
        return 0
