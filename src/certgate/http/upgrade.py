"""Which protocol upgrades certgate forwards, and whether a 101 answers one.

Theory of operation. After ``101 Switching Protocols`` certgate pipes raw
bytes (:mod:`certgate.proxy.tunnel`) and judges nothing more: the upgrade
request is the only request ever judged on that connection. So a switch is
safe only to a protocol that cannot carry further HTTP requests to other
paths. WebSocket (RFC 6455) is such a protocol, and the one certgate's users
need (Home Assistant's ``/api/websocket``, Immich's socket.io). ``h2c``
(RFC 7540 s.3.2) is the opposite: an HTTP/2 connection on which the client
opens streams to any path; stock Hypercorn and Go's h2c handler switch on it.
``TLS/1.x`` (RFC 2817) and unknown tokens are refused for the same reason:
certgate cannot know what they carry.

The rules, decided here without I/O:

* ``Connection: upgrade`` with an ``Upgrade`` naming ``websocket`` must be a
  well-formed WebSocket opening handshake (RFC 6455 s.4.1): HTTP/1.1, a GET
  without a body, ``Sec-WebSocket-Version: 13``, and one ``Sec-WebSocket-Key``
  that is base64 of 16 bytes. Anything else is a 400: a client that says
  WebSocket and gets it wrong is broken or probing, and a forwarded
  half-handshake would leave the upstream to decide.
* Any other upgrade (``h2c``, ``TLS/1.2``, unknown tokens), or ``Upgrade``
  without ``Connection: upgrade``: the ``Upgrade`` header and the ``upgrade``
  connection token are dropped and the request is forwarded as the plain
  request it also is, as nginx does unless told to pass ``Upgrade``.
  ``HTTP2-Settings`` is hop-by-hop (RFC 7540 s.3.2.1) and never forwarded.
* The upstream's 101 must answer the WebSocket upgrade certgate forwarded:
  ``Upgrade: websocket`` and the ``Sec-WebSocket-Accept`` derived from the
  client's key. Any other 101 closes both connections without a tunnel.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from certgate.errors import HTTPError

WEBSOCKET = b"websocket"
# RFC 6455 s.1.3: the GUID appended to the key before hashing.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True, slots=True)
class WebSocketUpgrade:
    """A checked WebSocket handshake: what certgate forwards and expects back."""

    key: bytes  # the client's Sec-WebSocket-Key, as sent

    @property
    def token(self) -> bytes:
        return WEBSOCKET

    @property
    def accept(self) -> bytes:
        """The ``Sec-WebSocket-Accept`` a 101 answering this handshake carries."""
        return base64.b64encode(hashlib.sha1(self.key + _GUID).digest())


def _tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [t.strip().lower() for n, v in headers if n.lower() == name
            for t in v.split(b",") if t.strip()]


def _values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v.strip() for n, v in headers if n.lower() == name]


def _bad(reason: str) -> HTTPError:
    return HTTPError(400, f"malformed WebSocket handshake: {reason}", close=True)


def requested_upgrade(
    method: bytes,
    http_version: bytes,
    headers: list[tuple[bytes, bytes]],
    connection_tokens: set[bytes],
    has_body: bool,
) -> WebSocketUpgrade | None:
    """The upgrade to forward, or None to forward a plain request.

    Raises:
        HTTPError: 400 when the request asks for WebSocket but its
            handshake is not the one RFC 6455 s.4.1 requires.
    """
    if b"upgrade" not in connection_tokens:
        return None
    if WEBSOCKET not in _tokens(headers, b"upgrade"):
        return None  # h2c, TLS/1.x, unknown: stripped, forwarded as a plain request
    if http_version != b"1.1":
        raise _bad("needs HTTP/1.1")
    if method != b"GET":
        raise _bad("the method must be GET")
    if has_body:
        raise _bad("a handshake has no body")
    versions = _tokens(headers, b"sec-websocket-version")
    if versions != [b"13"]:
        raise _bad("Sec-WebSocket-Version must be 13 (the only version certgate relays)")
    keys = _values(headers, b"sec-websocket-key")
    if len(keys) != 1:
        raise _bad("exactly one Sec-WebSocket-Key is needed")
    try:
        nonce = base64.b64decode(keys[0], validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != 16:
        raise _bad("Sec-WebSocket-Key must be base64 of 16 bytes")
    return WebSocketUpgrade(keys[0])


def refuse_switch(upgrade: WebSocketUpgrade | None,
                  headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a 101 with ``headers`` does not answer ``upgrade``; None when it does."""
    if upgrade is None:
        return "switched protocols without being asked"
    items = list(headers)
    if _tokens(items, b"upgrade") != [upgrade.token]:
        return "101 does not name the websocket upgrade that was forwarded"
    if b"upgrade" not in _tokens(items, b"connection"):
        return "101 without Connection: upgrade"
    if _values(items, b"sec-websocket-accept") != [upgrade.accept]:
        return "101 without the Sec-WebSocket-Accept for the client's key"
    return None
