"""What the listener knows about a connection before any request: a leaf module.

Admission, the access log, explain and the runtime all read it; keeping it
here, with no imports from the proxy, lets them depend on it without
depending on :mod:`certgate.proxy.client` (which depends on all of them).
"""

from __future__ import annotations

from dataclasses import dataclass

from certgate.config.schema import ClientAuth

__all__ = ["ConnectionInfo"]


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the listener learnt before and during the handshake."""

    listener: str
    peer_ip: str
    sni: str | None  # normalised, or None when absent/invalid
    mode: ClientAuth  # the handshake class of the context used
