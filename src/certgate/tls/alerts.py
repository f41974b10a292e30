"""Send the TLS alert OpenSSL wrote before a failed handshake's connection closes.

Theory of operation
-------------------
When OpenSSL refuses a client during the handshake (no certificate, an
unknown CA, an expired certificate...), it writes a fatal alert
(``certificate_required``, ``unknown_ca``, ``certificate_expired``...,
RFC 8446 s.6.2) into the outgoing memory BIO and ``do_handshake`` raises.
uvloop's SSL protocol (like asyncio's) then closes the transport at once,
without sending what is in that BIO. The client sees the TCP connection
vanish: Chromium says "site can't be reached", curl "Empty reply from
server", and nobody learns that a certificate was the problem.

:class:`AlertingSSLObject` is set as the listener contexts'
``sslobject_class``. When ``do_handshake`` fails, it records the error and
raises ``SSLWantReadError`` instead, which makes uvloop do what it does
while a handshake is in progress: flush the outgoing BIO (the alert) to the
socket and wait for more data. Then it lingers, as nginx's lingering close
does: a client often sends more right behind its Finished (Chromium sends
its HTTP request), and closing with those bytes unread makes the kernel
send a reset that can overtake the alert, so the browser shows "site can't
be reached" after all. While lingering, what arrives is read and dropped
(``SSLWantReadError`` again, up to :data:`LINGER_READS` reads); the client
closing, the read budget running out or :data:`LINGER_SECONDS` passing (the
read side is then shut down) ends the connection with the recorded error.
Nothing is weakened: the handshake never completes, no application data is
read, and the listener reports the recorded error (not the end-of-file)
for logs and metrics.

The socket and the place to record the error reach the SSL object through a
context variable set by the listener around ``connect_accepted_socket``:
uvloop creates the transport, and so runs every handshake step, in a copy
of the calling task's context. Without it (another caller of these
contexts), a failure is raised as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
import ssl
from dataclasses import dataclass

__all__ = ["CURRENT", "LINGER_READS", "LINGER_SECONDS", "AlertingSSLObject", "HandshakeWatch"]

#: How long a refused client may keep sending after the alert before the
#: read side is shut (nginx lingers up to 30 s, lingering_time; a client
#: that got a fatal alert closes within a round trip, so 2 s is plenty).
LINGER_SECONDS = 2.0
#: Reads dropped while lingering (uvloop reads up to 256 KiB at a time into
#: the SSL object's memory BIO, so at most about 2 MB held per refusal).
LINGER_READS = 8


@dataclass(slots=True)
class HandshakeWatch:
    """One connection's handshake, as the listener sees it."""

    sock: socket.socket
    #: The error OpenSSL raised, once the handshake has failed.
    error: ssl.SSLError | None = None


CURRENT: contextvars.ContextVar[HandshakeWatch | None] = contextvars.ContextVar(
    "certgate_handshake", default=None)


class AlertingSSLObject(ssl.SSLObject):
    """An SSLObject that lets the alert of a failed handshake go out first."""

    _certgate_failed: ssl.SSLError | None = None
    _certgate_lingered = 0

    def do_handshake(self) -> None:
        if self._certgate_failed is not None:
            self._certgate_lingered += 1
            if self._certgate_lingered > LINGER_READS:
                # A new exception: raising the stored one would give it a
                # traceback whose frames hold this object (a cycle that keeps
                # OpenSSL's per-connection memory until a full GC).
                raise ssl.SSLError("TLS handshake refused") from None
            raise ssl.SSLWantReadError("handshake failed; lingering after the alert")
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            watch = CURRENT.get()
            if watch is None:
                raise
            # Kept without its traceback: the frames in it hold this object,
            # and the cycle would keep OpenSSL's memory until a full GC.
            exc.__traceback__ = None
            self._certgate_failed = watch.error = exc
            # uvloop flushes the outgoing BIO (the alert) for the "want
            # read" below, then keeps reading: the lingering close.
            asyncio.get_running_loop().call_later(LINGER_SECONDS, _stop_reading, watch.sock)
            raise ssl.SSLWantReadError("handshake failed; sending the alert") from None


def _stop_reading(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
