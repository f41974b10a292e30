"""TLS session-ticket keys that every worker shares (issue #15).

Theory of operation
-------------------
OpenSSL gives each ``SSL_CTX`` random ticket keys. certgate runs N forked
workers on one port (``SO_REUSEPORT``), each building its own contexts, so a
ticket one worker issued could be decrypted only by that worker: with two
workers about half of resumptions failed (benchmarks scenario 3), and every
reload threw all tickets away.

So the supervisor draws one 32-byte master secret before it forks
(:func:`prepare`), and each context's 80-byte key set (16-byte key name,
32-byte HMAC key, 32-byte AES key: ``SSL_CTX_set_tlsext_ticket_keys`` in
OpenSSL 3) is derived from it with HKDF-SHA256 and a label naming the
context's client-auth class and server names. Every worker derives the same
keys for the same context, and a rebuilt context (reload, certificate swap)
gets them again.

The label keeps what per-context random keys gave before: a ticket issued
under one class (say ``off``, no client certificate) has a key name no
context of another class knows, so it can never be resumed there. Identity,
revocation and policy are re-checked on every resumed connection anyway.

What this costs: tickets stay decryptable for the supervisor's lifetime, as
with nginx when ``ssl_session_ticket_key`` is not set (one random key per
start, shared by its workers). A stolen master secret (it lives only in
memory) would decrypt recorded resumed sessions back to the last restart.
Tickets are off unless ``tls.session_tickets`` asks for them.
"""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KEY_BYTES", "context_keys", "prepare"]

#: ``SSL_CTX_set_tlsext_ticket_keys``' key length in OpenSSL 1.1 and 3.x.
KEY_BYTES = 80

_master: bytes | None = None


def prepare() -> None:
    """Draw the master secret, once per process tree; call before forking."""
    global _master
    if _master is None:
        _master = secrets.token_bytes(32)


def context_keys(label: str) -> bytes:
    """The ticket keys for the context ``label`` names (class and names)."""
    prepare()
    assert _master is not None
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"certgate session tickets\0" + label.encode("utf-8"))
    return hkdf.derive(_master)
