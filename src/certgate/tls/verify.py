"""The checks after every handshake, in one pure place.

Theory of operation
-------------------
OpenSSL verifies the chain during the handshake (trust, signatures, purpose,
key strength, path length, critical extensions). What it does not do, or
does not do again on a resumed session, certgate checks here, in this order:

1. the leaf parses and has a client profile
   (:func:`certgate.tls.identity.check_client_certificate_profile`);
2. it is inside its validity period *now* (a resumed session is not
   re-verified by OpenSSL, and a ticket can outlive the certificate);
3. it is not revoked, and its issuer's CRL is not stale unless
   ``client_auth.stale_crl: allow``.

:func:`verify_peer` is used by the listener (``Runtime.check_peer``, new and
resumed sessions alike) and by ``certgate explain``, so the two cannot
disagree. A refusal is a typed :class:`Refusal` that carries its own metric
label and the TLS alert that names it, instead of text that later code has
to guess a label from.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from certgate.revocation import REVOKED, STALE_CRL
from certgate.tls.identity import (
    NO_CLIENT_AUTH_EKU,
    NO_DIGITAL_SIGNATURE,
    ClientIdentity,
    InvalidCertificate,
)

__all__ = [
    "Refusal",
    "RefusalKind",
    "RevocationCheck",
    "refuse_unparsable",
    "validity_problem",
    "verify_peer",
]


class RefusalKind(enum.Enum):
    """Why a certificate that passed the handshake is still refused.

    The value is the ``reason`` label of ``certgate_tls_handshakes_total`` /
    ``certgate_denied_total``; ``alert`` is the TLS alert (RFC 8446 s.6.2)
    that describes it.
    """

    REVOKED = ("revoked", "certificate_revoked")
    STALE_CRL = ("stale_crl", "certificate_unknown")
    EXPIRED = ("expired", "certificate_expired")
    BAD_EKU = ("bad_eku", "unsupported_certificate")
    BAD_CERT = ("bad_cert", "bad_certificate")

    def __init__(self, label: str, alert: str) -> None:
        self.label = label
        self.alert = alert


@dataclass(frozen=True, slots=True)
class Refusal:
    """A certificate refusal: ``reason`` is the one line logged and answered
    (403 body); ``kind`` gives the metric label and the TLS alert."""

    reason: str
    kind: RefusalKind

    @property
    def label(self) -> str:
        return self.kind.label

    def __str__(self) -> str:
        return self.reason


class RevocationCheck(Protocol):
    def check(self, identity: ClientIdentity, now: float | None = None) -> str | None: ...


def validity_problem(identity: ClientIdentity, now: datetime | None = None) -> str | None:
    """Expiry re-checked in Python: OpenSSL does not re-verify a resumed session."""
    moment = now or datetime.now(UTC)
    if moment > identity.not_after:
        return "client certificate expired"
    if moment < identity.not_before:
        return "client certificate not yet valid"
    return None


def refuse_unparsable(exc: InvalidCertificate) -> Refusal:
    """OpenSSL accepted a certificate certgate cannot read: refuse (fail closed)."""
    return Refusal(f"client certificate could not be parsed: {exc}", RefusalKind.BAD_CERT)


def revocation_refusal(identity: ClientIdentity, revocation: RevocationCheck,
                       allow_stale: bool, on_stale_admitted: Callable[[ClientIdentity], None]
                       | None = None, now: datetime | None = None) -> Refusal | None:
    """Revoked, or a stale CRL unless ``allow_stale``; None to admit."""
    reason = revocation.check(identity, now.timestamp() if now is not None else None)
    if reason is None:
        return None
    if reason == STALE_CRL:
        if allow_stale:
            if on_stale_admitted is not None:
                on_stale_admitted(identity)
            return None
        return Refusal(reason, RefusalKind.STALE_CRL)
    if reason == REVOKED:
        return Refusal(reason, RefusalKind.REVOKED)
    # Any other reason a revocation source gives is a refusal too (fail closed).
    return Refusal(reason, RefusalKind.BAD_CERT)


def verify_peer(identity: ClientIdentity, revocation: RevocationCheck, *,
                allow_stale: bool,
                on_stale_admitted: Callable[[ClientIdentity], None] | None = None,
                now: datetime | None = None) -> Refusal | None:
    """Every post-handshake check on a parsed leaf; None when it may pass."""
    problem = identity.profile_problem
    if problem is not None:
        kind = RefusalKind.BAD_EKU if problem in (NO_CLIENT_AUTH_EKU, NO_DIGITAL_SIGNATURE) \
            else RefusalKind.BAD_CERT
        return Refusal(problem, kind)
    problem = validity_problem(identity, now)
    if problem is not None:
        return Refusal(problem, RefusalKind.EXPIRED)
    return revocation_refusal(identity, revocation, allow_stale, on_stale_admitted, now)
