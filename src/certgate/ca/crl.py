"""Certificate revocation lists: building them and reading them back.

One CRL per issuing CA that still has unexpired certificates (after an
intermediate rotation the old one keeps signing a CRL for what it issued).
``crl.pem`` holds them concatenated, the current issuer's first, so tools
that read one CRL (``openssl crl -in``) see the one that matters most, and
``SSLContext.load_verify_locations`` (which reads every PEM block) sees all.

Every CRL carries the AuthorityKeyIdentifier and a CRLNumber (both required
by RFC 5280 5.2.1 and 5.2.3). The number is one counter for the whole CA,
bumped on every write, so it is monotonic per issuer as the RFC asks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate.ca.keys import PrivateKey, signature_hash
from certgate.ca.profiles import authority_key_id
from certgate.errors import UsageError

DEFAULT_NEXT_UPDATE = timedelta(days=7)

# CLI spelling (RFC 5280 ASN.1 names) -> cryptography flag.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}

_PEM_CRL = re.compile(
    rb"-----BEGIN X509 CRL-----\r?\n.+?-----END X509 CRL-----\r?\n?", re.DOTALL
)


def check_reason(reason: str) -> str:
    if reason not in REASONS:
        choices = ", ".join(REASONS)
        raise UsageError(f"unknown revocation reason {reason!r}; choose one of {choices}")
    return reason


@dataclass(frozen=True, slots=True)
class Revocation:
    serial: int
    revoked_at: datetime
    reason: str


def build_crl(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    revocations: Iterable[Revocation],
    *,
    number: int,
    now: datetime,
    next_update: timedelta,
) -> x509.CertificateRevocationList:
    """Sign a CRL for ``issuer`` listing ``revocations``."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), False)
        .add_extension(authority_key_id(issuer, issuer_key), False)
    )
    for item in sorted(revocations, key=lambda r: r.serial):
        entry = x509.RevokedCertificateBuilder().serial_number(item.serial).revocation_date(
            item.revoked_at
        )
        # RFC 5280 5.3.1: the reason code "unspecified" SHOULD be absent.
        if item.reason != "unspecified":
            entry = entry.add_extension(x509.CRLReason(REASONS[item.reason]), False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer_key, signature_hash(issuer_key))


def crls_to_pem(crls: Sequence[x509.CertificateRevocationList]) -> bytes:
    return b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)


def load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Parse every CRL in a PEM file such as ``crl.pem``."""
    return [x509.load_pem_x509_crl(block.group(0)) for block in _PEM_CRL.finditer(data)]
