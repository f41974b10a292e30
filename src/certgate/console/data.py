"""Reading the CA for the console (blocking: always called in a thread).

Every page reads afresh: the inventory, enrollments and last-seen files are
the CLI's too, so what ``certgate ca revoke`` did a moment ago shows on the
next page load, and what the console did shows in ``ca list`` at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from certgate.ca import enrollments
from certgate.ca.audit import AuditError
from certgate.ca.authority import CertificateAuthority
from certgate.ca.listing import match_sightings, unknown_rows
from certgate.ca.store import CertRecord
from certgate.errors import CAError
from certgate.lastseen import Seen, read_seen

# The audit log only grows; pages read at most its last 4 MiB (tens of
# thousands of entries), so a page never costs more than that to build.
AUDIT_TAIL_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CACertificate:
    subject: str
    not_before: datetime
    not_after: datetime
    sha256: str


@dataclass(frozen=True, slots=True)
class CRLFacts:
    number: int | None
    this_update: datetime
    next_update: datetime | None
    revoked: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: datetime
    records: tuple[CertRecord, ...]
    seen: dict[str, Seen]  # record fingerprint -> sighting (ca.listing.match_sightings)
    enrollments: tuple[enrollments.Enrollment, ...]
    #: Certificates presented to the proxy that no record is (``ca list
    #: --unknown --json`` rows, newest first): an adopted CA's devices not
    #: adopted yet, or leaves nobody here knew it had signed.
    unknown: tuple[dict[str, Any], ...]


def snapshot(ca: CertificateAuthority) -> Snapshot:
    inventory = ca.certificates()
    sightings = read_seen(ca.state_dir)
    return Snapshot(inventory.now, inventory.records,
                    match_sightings(inventory.records, sightings),
                    tuple(enrollments.listing(ca)),
                    tuple(unknown_rows(inventory.records, sightings)))


def root_certificate(ca: CertificateAuthority) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.root_cert_path.read_bytes())


def _ca_certificate(path: Path) -> CACertificate:
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return CACertificate(cert.subject.rfc4514_string(), cert.not_valid_before_utc,
                         cert.not_valid_after_utc, cert.fingerprint(hashes.SHA256()).hex())


def authorities(ca: CertificateAuthority) -> tuple[CACertificate, CACertificate | None]:
    """The root, and the issuing intermediate (None for a single-tier CA)."""
    root = _ca_certificate(ca.root_cert_path)
    issuing = _ca_certificate(ca.issuing_cert_path)
    return root, (None if issuing.sha256 == root.sha256 else issuing)


def crl_facts(ca: CertificateAuthority) -> CRLFacts | None:
    try:
        crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    except (OSError, ValueError):
        return None
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return CRLFacts(number, crl.last_update_utc, crl.next_update_utc, len(list(crl)))


def audit_entries(ca: CertificateAuthority) -> list[dict[str, Any]]:
    """The audit log's entries, oldest first (its last AUDIT_TAIL_BYTES)."""
    path = ca.layout.audit_log
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - AUDIT_TAIL_BYTES))
            data = handle.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if size > AUDIT_TAIL_BYTES:
        lines = lines[1:]  # the first line is cut
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # audit verify reports it, at the top of the audit page
        if isinstance(entry, dict):
            out.append(entry)
    return out


def audit_verdict(ca: CertificateAuthority) -> tuple[bool, str]:
    """``ca audit verify``'s result: (sound, one line)."""
    try:
        count = ca.verify_audit()
    except AuditError as exc:
        return False, str(exc)
    except CAError as exc:
        return False, str(exc).splitlines()[0]
    return True, f"{count} entries, hash chain intact"
