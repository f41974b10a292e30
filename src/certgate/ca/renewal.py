"""Renewal by the certificate itself: the CA side of ``POST /renew``.

A device holding a valid certificate of the built-in CA asks for its
successor with a CSR over a connection authenticated by that very
certificate. The CA issues the successor for the *inventory's* name, roles,
subject, SANs and lifetime (exactly what ``ca renew NAME`` would issue), for
the CSR's public key; nothing else of the CSR is read. The old certificate
becomes superseded: it keeps working until it expires, so the device can
swap its files without a gap.

Who may renew (:func:`presented_problem`, pure): the presented certificate
must be in the inventory byte for byte (a serial alone is only unique per
issuer), a client certificate, neither revoked nor expired, and the current
one of its name. The proxy has already checked the chain, the CRL and that
the built-in CA's key signed it (``identity.issuer.builtin``) before this
runs; the inventory check is the CA's own, independent of the proxy's
snapshot (a revocation a second old is seen here even if the CRL poll has
not run yet).

A lost response: the device sent its CSR, the CA issued, the answer never
arrived. The old certificate is now superseded and may not renew again;
but if the device asks again with the *same* key (``certgate renew`` keeps
its pending key until it has the certificate), the successor it already has
is returned once more, unchanged (the CSR's signature proves the key). A
superseded certificate asking with another key is refused: someone else
already renewed it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from certgate.ca import issuance
from certgate.ca.keys import DEFAULT_KEY_TYPE, serial_hex
from certgate.ca.session import Session
from certgate.ca.store import CertRecord
from certgate.errors import CAError, UsageError

if TYPE_CHECKING:
    from certgate.ca.authority import CertificateAuthority

__all__ = ["SUPERSEDED", "RenewalDenied", "Renewed", "presented_problem", "renew_presented"]

#: :func:`presented_problem`'s answer for a certificate already renewed.
SUPERSEDED = "superseded"


class RenewalDenied(CAError):
    """The presented certificate may not renew (the HTTP layer answers 403)."""


@dataclass(frozen=True, slots=True)
class Renewed:
    name: str
    serial: int
    chain_pem: bytes  # leaf, then the issuing CA when it is not the root
    not_after: datetime
    roles: tuple[str, ...]
    #: True when this is the successor issued earlier, sent again (lost response).
    repeated: bool = False


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def presented_problem(record: CertRecord | None, presented_der: bytes,
                      now: datetime) -> str | None:
    """Why the presented certificate may not renew; None when it may.

    :data:`SUPERSEDED` is returned last, so a revoked or expired certificate
    that was also superseded is reported as revoked or expired.
    """
    if record is None:
        return "the certificate is not in the built-in CA's inventory"
    stored = x509.load_pem_x509_certificate(record.cert_pem).public_bytes(Encoding.DER)
    if stored != presented_der:
        return "the certificate does not match the built-in CA's inventory"
    if record.kind != "client":
        return "only client certificates renew this way"
    if record.revoked_at is not None:
        return "the certificate is revoked"
    if record.not_after <= now:
        return "the certificate has expired"
    if record.superseded_by is not None:
        return SUPERSEDED
    return None


def renew_presented(ca: CertificateAuthority, presented_der: bytes,
                    public_key: CertificatePublicKeyTypes, client_ip: str) -> Renewed:
    """Issue the successor of the presented certificate for ``public_key``.

    One CA operation (lock, recovery, one transaction, audited). Blocking
    (SQLite, signing, fsync): call it from a thread.

    Raises:
        RenewalDenied: the certificate may not renew (see the module docstring).
        UsageError: the CSR reuses the key of the certificate it renews.
        CAError: the CA cannot issue (no issuing key, ...).
    """
    try:
        presented = x509.load_der_x509_certificate(presented_der)
    except ValueError:
        raise RenewalDenied("the client certificate cannot be parsed") from None
    with ca.session() as s:
        record = s.store.certificate(presented.serial_number)
        problem = presented_problem(record, presented_der, s.now)
        if problem == SUPERSEDED:
            assert record is not None
            return _issued_before(s, record, public_key)
        if problem is not None:
            raise RenewalDenied(problem)
        assert record is not None
        if _spki(public_key) == _spki(presented.public_key()):
            raise UsageError("the CSR reuses the key of the certificate it renews; "
                             "make a new key")
        try:
            request = issuance.renewal(s, record.name, None, DEFAULT_KEY_TYPE)
        except CAError as exc:
            raise RenewalDenied(str(exc)) from None
        if request.kind != "client" or request.supersedes != (record.serial,):
            # renewal() picks the newest unrevoked certificate of the name;
            # for the current client certificate that is this one.
            raise RenewalDenied("the certificate is not the current one of its name")
        request = dataclasses.replace(
            request, public_key=public_key,
            audit=(("via", "certificate"), ("client_ip", client_ip)))
        issued = issuance.issue(s, request, lambda _issued: [])
    return Renewed(issued.name, issued.serial, issued.chain_pem, issued.not_after,
                   issued.roles)


def _issued_before(s: Session, record: CertRecord,
                   public_key: CertificatePublicKeyTypes) -> Renewed:
    """The successor of a superseded certificate, when it is for ``public_key``."""
    assert record.superseded_by is not None
    successor = s.store.certificate(record.superseded_by)
    if successor is not None and successor.status(s.now) == "valid":
        cert = x509.load_pem_x509_certificate(successor.cert_pem)
        if _spki(cert.public_key()) == _spki(public_key):
            issuer = s.cert_of(s.store.authority(successor.issuer_serial))
            chain = successor.cert_pem
            if issuer.issuer != issuer.subject:  # two-tier: add the intermediate
                chain += issuer.public_bytes(Encoding.PEM)
            return Renewed(successor.name, successor.serial, chain, successor.not_after,
                           successor.roles, repeated=True)
    raise RenewalDenied("the certificate was already renewed (superseded by "
                        f"{serial_hex(record.superseded_by)}); use the newer one")
