"""``ca adopt``: record leaves an imported CA issued before certgate.

A device that already holds a leaf from the imported CA keeps it. Adopting
the leaf puts it in the inventory: from then on it has a name, roles, last
seen, ``ca list``, and ``ca revoke`` puts its serial on the CRL certgate signs
for that CA.

Theory of operation
-------------------
A leaf is adopted only if one of the inventory's CA certificates verifiably
signed it (:func:`adoption_problem`): the issuer name and authorityKeyIdentifier
are the leaf's own claims, and anyone can write them. It must also pass the
proxy's client-certificate profile check, be unexpired, and have a serial no
other inventory record has: records are keyed by serial, and a CRL entry
names a serial, so a second leaf with that serial (``-set_serial 01`` twice)
could never be revoked apart from the first. Roles in the proxy bind to the
certificate's fingerprint (:mod:`certgate.roles`), so a serial twin left
unadopted gets none of the adopted leaf's roles.

Files named on the command line are all-or-nothing: one refused leaf refuses
the command. A directory is what people keep next to an openssl CA (the CA
certificate, server certificates, CSRs, keys, ``.srl`` files), so in a
directory only the certificates that qualify are adopted and the rest are
listed as skipped, each with its reason.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from certgate.ca.importing import parse_certificates
from certgate.ca.issuance import check_roles
from certgate.ca.keys import serial_hex
from certgate.ca.layout import CALayout, check_name
from certgate.ca.profiles import CLIENT_LIFETIME, san_strings
from certgate.ca.session import pem, session
from certgate.ca.store import Authority, CertRecord
from certgate.errors import UsageError
from certgate.fsutil import read_input
from certgate.tls.identity import check_client_certificate_profile

#: File names a directory scan looks at; everything else there is skipped
#: silently (keys, CSRs, serial files).
CERT_SUFFIXES = (".crt", ".pem", ".cer", ".der")
#: Certificates read from one directory at most: a scan is bounded.
MAX_DIRECTORY_FILES = 10_000


@dataclass(frozen=True, slots=True)
class Candidate:
    """One certificate offered for adoption and where it came from."""

    source: Path
    cert: x509.Certificate
    #: Found by scanning a directory (skipped when refused) rather than named.
    scanned: bool = False

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.cert.public_bytes(Encoding.DER)).hexdigest()


@dataclass(frozen=True, slots=True)
class Adopted:
    name: str
    serial: int
    roles: tuple[str, ...]
    not_after: datetime
    source: Path


@dataclass(frozen=True, slots=True)
class Skipped:
    source: Path
    reason: str


def _read(path: Path) -> list[x509.Certificate]:
    return parse_certificates(read_input(path))


def collect(paths: Sequence[Path]) -> tuple[list[Candidate], list[Skipped]]:
    """Certificates named by ``paths``, and the directory files skipped.

    A file that is not readable as certificates is an error when named; in
    a directory it is skipped with its reason.
    """
    found: list[Candidate] = []
    skipped: list[Skipped] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.iterdir()
                           if p.suffix.lower() in CERT_SUFFIXES and p.is_file())
            if len(files) > MAX_DIRECTORY_FILES:
                raise UsageError(f"{path} holds more than {MAX_DIRECTORY_FILES} certificate "
                                 "files; adopt it in parts")
            for file in files:
                try:
                    found += [Candidate(file, c, scanned=True) for c in _read(file)]
                except OSError as exc:
                    skipped.append(Skipped(file, f"cannot read it: {exc.strerror}"))
                except ValueError:
                    skipped.append(Skipped(file, "not a certificate"))
            continue
        try:
            found += [Candidate(path, c) for c in _read(path)]
        except OSError as exc:
            raise UsageError(f"{path}: cannot read it: {exc.strerror}") from None
        except ValueError:
            raise UsageError(f"{path}: not a PEM or DER certificate") from None
    return found, skipped


def _issuer_of(cert: x509.Certificate, authorities: Sequence[tuple[Authority, x509.Certificate]]
               ) -> Authority | None:
    """The inventory CA certificate whose key signed ``cert``, checked by signature."""
    for authority, ca_cert in authorities:
        with contextlib.suppress(ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            cert.verify_directly_issued_by(ca_cert)
            return authority
    return None


#: Extensions OpenSSL's verifier understands when marked critical
#: (X509_supported_extension in crypto/x509/v3_purp.c); any other critical
#: extension makes OpenSSL refuse the certificate.
_OPENSSL_CRITICAL_OK = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.NAME_CONSTRAINTS,
    ExtensionOID.POLICY_CONSTRAINTS, ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.POLICY_MAPPINGS, ExtensionOID.INHIBIT_ANY_POLICY,
    x509.ObjectIdentifier("2.16.840.1.113730.1.1"),  # Netscape cert type
    x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"),  # proxyCertInfo
    x509.ObjectIdentifier("1.3.6.1.5.5.7.1.7"),  # sbgp-ipAddrBlock
    x509.ObjectIdentifier("1.3.6.1.5.5.7.1.8"),  # sbgp-autonomousSysNum
})


def unknown_critical(cert: x509.Certificate) -> str | None:
    """The dotted OID of a critical extension OpenSSL would refuse, or None."""
    for extension in cert.extensions:
        if extension.critical and extension.oid not in _OPENSSL_CRITICAL_OK:
            return str(extension.oid.dotted_string)
    return None


def adoption_problem(
    candidate: Candidate,
    authorities: Sequence[tuple[Authority, x509.Certificate]],
    existing: CertRecord | None,
    now: datetime,
) -> str | Authority:
    """The issuing authority of an adoptable leaf, or why it cannot be adopted."""
    cert = candidate.cert
    issuer = _issuer_of(cert, authorities)
    if issuer is None:
        return ("no CA certificate of this CA signed it (checked by signature; the "
                f"issuer name {cert.issuer.rfc4514_string()!r} alone proves nothing)")
    if issuer.key_file is None:
        # An imported intermediate's root (or an offline root): certgate has
        # its certificate, not its key, so it can sign no CRL for it, and
        # 'ca revoke' would report a revocation the proxy never sees.
        return (f"the {issuer.role} {serial_hex(issuer.serial)} signed it, and certgate "
                "does not hold that CA's key: it could not revoke this certificate (no CRL "
                "of that CA); reissue this device from the current CA instead")
    profile = check_client_certificate_profile(cert)
    if profile is not None:
        return f"not a client certificate: {profile}"
    unknown = unknown_critical(cert)
    if unknown is not None:
        return (f"it has a critical extension OpenSSL does not know ({unknown}), so every "
                "handshake would refuse it")
    if cert.not_valid_after_utc <= now:
        return f"it expired on {cert.not_valid_after_utc.isoformat()}"
    if existing is not None:
        if existing.cert_pem == pem(cert):
            return f"already in the inventory as {existing.name!r}"
        return (f"serial {serial_hex(cert.serial_number)} is already in the inventory as "
                f"{existing.name!r} for another certificate: the CA gave two certificates "
                "one serial, and a CRL could not revoke one without the other; reissue "
                "this device instead")
    return issuer


def _name_taken(current: Sequence[CertRecord], leaf: str, taken: set[str]) -> str | None:
    """Why ``leaf`` cannot name one more certificate, or None.

    Role changes and revocations by name act on every valid certificate of
    that name, so a stray leaf whose CN is a device's name (an old copy,
    someone else's) would share every role that device is given later.
    ``ca issue`` refuses a taken name the same way.
    """
    if leaf in taken:
        return f"another certificate given here is adopted as {leaf!r}; give --name NAME"
    for record in current:
        if record.superseded_by is None:
            return (f"the name {leaf!r} is taken by certificate "
                    f"{serial_hex(record.serial)}; adopt this one with --name NAME")
    return None


def leaf_name(cert: x509.Certificate, given: str | None) -> str:
    """``--name``, else the subject CN, checked as every inventory name is."""
    if given is not None:
        return check_name(given)
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not names:
        raise UsageError(f"{cert.subject.rfc4514_string() or 'it'} has no commonName; "
                         "give --name NAME")
    try:
        return check_name(str(names[0].value))
    except UsageError as exc:
        raise UsageError(f"{exc}; give --name NAME") from None


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san_strings(list(ext)))


def adopt(
    layout: CALayout,
    paths: Sequence[Path],
    *,
    name: str | None,
    roles: Sequence[str],
) -> tuple[list[Adopted], list[Skipped]]:
    """Adopt the leaves in ``paths``; (adopted, skipped). Refuses (UsageError)
    if a named file's leaf cannot be adopted, writing nothing."""
    role_set = check_roles(roles)
    candidates, skipped = collect(paths)
    if name is not None and len(candidates) != 1:
        raise UsageError(f"--name names one certificate; {len(candidates)} were given")
    with session(layout) as s:
        authorities = [(a, s.cert_of(a)) for a in s.store.authorities() if a.role != "cross"]
        chosen: list[tuple[Candidate, Authority, str]] = []
        seen: dict[int, str] = {}  # serial -> fingerprint, within this command
        taken: set[str] = set()  # names adopted by this command
        for candidate in candidates:
            cert = candidate.cert
            earlier = seen.get(cert.serial_number)
            if earlier == candidate.fingerprint:
                continue  # the same certificate twice (a file and its directory)
            verdict: str | Authority
            if earlier is not None:
                verdict = "another certificate given here has the same serial"
            else:
                verdict = adoption_problem(candidate, authorities,
                                           s.store.certificate(cert.serial_number), s.now)
            leaf = ""
            if not isinstance(verdict, str):
                try:
                    leaf = leaf_name(cert, name)
                except UsageError as exc:
                    verdict = str(exc)
                else:
                    verdict = _name_taken(s.store.valid_by_name(leaf, s.now), leaf,
                                          taken) or verdict
            if isinstance(verdict, str):
                if candidate.scanned:
                    skipped.append(Skipped(candidate.source, verdict))
                    continue
                raise UsageError(f"cannot adopt {candidate.source}: {verdict}")
            seen[cert.serial_number] = candidate.fingerprint
            taken.add(leaf)
            chosen.append((candidate, verdict, leaf))
        if not chosen:
            return [], skipped
        records = [_record(c.cert, authority, leaf, role_set, s.now)
                   for c, authority, leaf in chosen]

        def apply() -> None:
            for (candidate, _authority, _leaf), record in zip(chosen, records, strict=True):
                s.store.add_certificate(record)
                s.audit(
                    "adopt",
                    name=record.name,
                    serial=record.serial,
                    roles=record.roles,
                    not_after=record.not_after,
                    subject=candidate.cert.subject.rfc4514_string(),
                    issuer=serial_hex(record.issuer_serial),
                    fingerprint=candidate.fingerprint,
                )

        s.commit("adopt", records[0].serial, [], apply)
    adopted = [Adopted(r.name, r.serial, r.roles, r.not_after, c.source)
               for (c, _a, _n), r in zip(chosen, records, strict=True)]
    return adopted, skipped


def _record(cert: x509.Certificate, issuer: Authority, name: str, roles: tuple[str, ...],
            now: datetime) -> CertRecord:
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    return CertRecord(
        serial=cert.serial_number,
        name=name,
        kind="client",
        roles=roles,
        sans=_sans(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        # What a renewal issues: the old lifetime, but never longer than
        # certgate's own default (a 10-year openssl leaf renews for a year).
        lifetime=int(min(span, CLIENT_LIFETIME, key=_seconds).total_seconds()),
        issuer_serial=issuer.serial,
        cert_pem=pem(cert),
        issued_at=now,
        superseded_by=None,
        revoked_at=None,
        revocation_reason=None,
    )


def _seconds(span: timedelta) -> float:
    return span.total_seconds()
