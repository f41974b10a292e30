"""Revocation: CRLs -> an index of revoked serials per issuer, checked per connection.

The check runs in Python after the handshake, for new and resumed sessions
alike, as a dict + frozenset lookup (O(1), well under a microsecond), instead
of OpenSSL's ``VERIFY_CRL_CHECK_LEAF``, which costs 0.5-0.8 ms per handshake
with a 10k-entry CRL and never runs for resumed sessions.

Every CRL must verify against a trusted CA whose subject is the CRL's issuer;
one that does not is refused with the file named (at start this stops
certgate; on reload the previous index stays in force). A CRL past its
nextUpdate is *stale*: clients of that issuer are refused with the reason
"stale CRL" (fail closed).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from certgate.errors import CertgateError
from certgate.tls.identity import ClientIdentity

REVOKED = "client certificate revoked"
STALE_CRL = "stale CRL: the issuer's revocation list is past its nextUpdate"


class RevocationError(CertgateError):
    """A CRL is missing, unparsable or not signed by a trusted CA."""


@dataclass(frozen=True, slots=True)
class CRLInfo:
    path: Path
    issuer_dn: str
    next_update: float | None  # POSIX time
    revoked: int
    number: int | None


class RevocationIndex:
    """Revoked serials per issuer DN, with each issuer's CRL freshness."""

    def __init__(self, revoked: dict[str, frozenset[int]], infos: Sequence[CRLInfo]) -> None:
        self._revoked = revoked
        self._next_update = {info.issuer_dn: info.next_update for info in infos}
        self.infos = tuple(infos)

    def check(self, identity: ClientIdentity, now: float | None = None) -> str | None:
        """A refusal reason for this certificate, or None when it may pass."""
        revoked = self._revoked.get(identity.issuer_dn)
        if revoked is None:
            return None
        if identity.serial in revoked:
            return REVOKED
        next_update = self._next_update.get(identity.issuer_dn)
        if next_update is not None and (now if now is not None else time.time()) > next_update:
            return STALE_CRL
        return None

    def stale(self, now: float | None = None) -> list[CRLInfo]:
        """CRLs past their nextUpdate."""
        moment = now if now is not None else time.time()
        return [info for info in self.infos
                if info.next_update is not None and moment > info.next_update]


def _issuers(trust_pem: str) -> dict[str, list[x509.Certificate]]:
    by_subject: dict[str, list[x509.Certificate]] = {}
    if not trust_pem.strip():
        return by_subject
    for cert in x509.load_pem_x509_certificates(trust_pem.encode("ascii")):
        by_subject.setdefault(cert.subject.rfc4514_string(), []).append(cert)
    return by_subject


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def parse_crls(data: bytes, path: Path) -> list[x509.CertificateRevocationList]:
    """Every CRL in a file: one DER CRL, or one or more PEM blocks.

    The built-in CA's ``crl.pem`` holds one CRL per issuing CA still in date
    after a rotation, so all blocks count, not just the first.
    """
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return [x509.load_pem_x509_crl(m.group(0)) for m in _PEM_CRL.finditer(data)]
        return [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise RevocationError(f"{path}: not a PEM or DER CRL: {exc}") from None


def load_revocation(paths: Sequence[Path], trust_pem: str) -> RevocationIndex:
    """Read and verify CRLs; raises RevocationError naming the bad file."""
    issuers = _issuers(trust_pem)
    revoked: dict[str, set[int]] = {}
    infos: list[CRLInfo] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RevocationError(f"{path}: cannot read CRL: {exc.strerror or exc}") from None
        for crl in parse_crls(data, path):
            infos.append(_index_crl(crl, path, issuers, revoked))
    return RevocationIndex({k: frozenset(v) for k, v in revoked.items()}, infos)


def _index_crl(crl: x509.CertificateRevocationList, path: Path,
               issuers: dict[str, list[x509.Certificate]],
               revoked: dict[str, set[int]]) -> CRLInfo:
    issuer_dn = crl.issuer.rfc4514_string()
    candidates = issuers.get(issuer_dn, [])
    if not candidates:
        raise RevocationError(f"{path}: CRL issuer {issuer_dn!r} is not a trusted CA")
    if not any(_signed_by(crl, cert.public_key()) for cert in candidates):
        raise RevocationError(f"{path}: CRL signature does not verify against {issuer_dn!r}")
    serials = revoked.setdefault(issuer_dn, set())
    serials.update(entry.serial_number for entry in crl)
    next_update = crl.next_update_utc
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return CRLInfo(path, issuer_dn,
                   next_update.timestamp() if next_update is not None else None,
                   len(crl), number)


def _signed_by(crl: x509.CertificateRevocationList, key: object) -> bool:
    try:
        return crl.is_signature_valid(key)  # type: ignore[arg-type]  # non-signing keys raise
    except (TypeError, ValueError):
        return False
