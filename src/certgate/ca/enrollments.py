"""One-time enrollments: a link and a PIN that let one device get one certificate.

Theory of operation
-------------------
``certgate ca enroll NAME`` creates a row in the CA's inventory (table
``enrollments``, created on first use) and prints a URL with a bearer token
and, separately, a 6-digit PIN. Neither is stored: the row keeps the
token's SHA-256 (to find the row) and an HMAC-SHA256 of the PIN keyed with
the token, so a copy of the database gives no usable PIN either: trying
the 10^6 PINs needs the token, 256 bits the database does not hold.

States, and the only transitions (each in one ``BEGIN IMMEDIATE``
transaction, under the CA's lock, with its audit entry queued in the same
transaction, so two workers racing on one token cannot both win)::

    pending --right PIN + issued--> used
    pending --5th wrong PIN-------> burned
    pending --past expires--------> expired   (noticed lazily: on any access,
                                                on --list, on create)
    pending --ca enroll --cancel--> cancelled

A certificate is issued only when the device downloads (or sends a CSR),
in the same session as the transition to ``used``: the key exists only in
the response (or, for a CSR, only on the device). If issuing fails the row
goes back to ``pending`` and nothing was given out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certgate.ca.authority import CertificateAuthority
from certgate.ca.issuance import IssuedCertificate, Request, check_roles, issue
from certgate.ca.keys import serial_hex
from certgate.ca.layout import check_name
from certgate.ca.profiles import (
    CLIENT_LIFETIME,
    check_csr,
    check_csr_sans,
    check_csr_subject,
    client_sans,
    common_name,
)
from certgate.ca.session import Session
from certgate.ca.store import Store
from certgate.ca.timeutil import parse_rfc3339, rfc3339, utcnow
from certgate.errors import CAError, UsageError

# Five tries at a 6-digit PIN: a 1 in 200,000 chance for someone who has
# the link but not the PIN, and room for a person mistyping on a phone.
MAX_ATTEMPTS = 5
PIN_DIGITS = 6
DEFAULT_TTL = timedelta(minutes=15)
# An enrollment link is meant for "now": a day is already generous.
MAX_TTL = timedelta(days=7)

STATES = ("pending", "used", "burned", "expired", "cancelled")
#: Metric results (certgate_enrollments_total{result}); "downloaded" counts
#: every certificate handed out (p12, mobileconfig or CSR).
RESULTS = ("created", "downloaded", "burned", "expired", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS enrollments (
    id           TEXT PRIMARY KEY,          -- public: --list, --cancel, audit
    token_sha256 TEXT NOT NULL UNIQUE,
    pin_mac      TEXT NOT NULL,             -- HMAC-SHA256(key=token, PIN)
    name         TEXT NOT NULL,
    roles        TEXT NOT NULL,             -- JSON array
    lifetime     INTEGER NOT NULL,          -- seconds of the certificate
    created      TEXT NOT NULL,
    expires      TEXT NOT NULL,
    state        TEXT NOT NULL
                 CHECK (state IN ('pending', 'used', 'burned', 'expired', 'cancelled')),
    attempts     INTEGER NOT NULL DEFAULT 0,  -- wrong PINs
    finished     TEXT,
    method       TEXT,                      -- p12 | mobileconfig | csr
    serial       TEXT                       -- the certificate issued
);
CREATE INDEX IF NOT EXISTS enrollments_name ON enrollments(name);
"""

# A token is secrets.token_urlsafe(32); anything else cannot be one.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


class EnrollmentError(CAError):
    """An enrollment the request cannot use; ``status`` is the HTTP answer."""

    status = 400


class Gone(EnrollmentError):
    """Used, expired, burned, cancelled or never issued: 410, one line why."""

    status = 410


class WrongPin(EnrollmentError):
    status = 403

    def __init__(self, left: int) -> None:
        super().__init__(f"wrong PIN; {left} attempt{'s' if left != 1 else ''} left")
        self.left = left


class NameTaken(EnrollmentError):
    status = 409


@dataclass(frozen=True, slots=True)
class Enrollment:
    id: str
    name: str
    roles: tuple[str, ...]
    lifetime: int
    created: datetime
    expires: datetime
    state: str
    attempts: int
    finished: datetime | None
    method: str | None
    serial: int | None


@dataclass(frozen=True, slots=True)
class NewEnrollment:
    """What ``ca enroll`` prints once; ``token`` and ``pin`` are stored nowhere."""

    enrollment: Enrollment
    token: str
    pin: str


def _row(row: sqlite3.Row) -> Enrollment:
    return Enrollment(
        id=row["id"],
        name=row["name"],
        roles=tuple(json.loads(row["roles"])),
        lifetime=int(row["lifetime"]),
        created=parse_rfc3339(row["created"]),
        expires=parse_rfc3339(row["expires"]),
        state=row["state"],
        attempts=int(row["attempts"]),
        finished=parse_rfc3339(row["finished"]) if row["finished"] else None,
        method=row["method"],
        serial=int(row["serial"], 16) if row["serial"] else None,
    )


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def pin_mac(token: str, pin: str) -> str:
    return hmac.new(token.encode("ascii", "replace"), pin.encode("ascii", "replace"),
                    hashlib.sha256).hexdigest()


def normalise_pin(pin: str) -> str:
    """What a person typed, as compared: spaces and dashes dropped."""
    return re.sub(r"[\s-]", "", pin)[:32]


def _ensure_table(s: Session) -> None:
    # CREATE ... IF NOT EXISTS: CAs made before enrollments existed get the
    # table on first use; executescript commits, so it runs outside any
    # transaction of ours.
    s.store.conn.executescript(_SCHEMA)


def _find(s: Session, token: str) -> Enrollment | None:
    if not _TOKEN.fullmatch(token):
        return None
    row = s.store.conn.execute("SELECT * FROM enrollments WHERE token_sha256 = ?",
                               (token_hash(token),)).fetchone()
    return _row(row) if row else None


def _audit(s: Session, operation: str, e: Enrollment, serial: int | None = None,
           **extra: str | int) -> None:
    s.audit(operation, name=e.name, serial=serial, roles=e.roles, not_after=None,
            enrollment=e.id, **extra)


def _set_state(s: Session, e: Enrollment, state: str, **columns: object) -> None:
    sets = ", ".join(f"{key} = ?" for key in ("state", "finished", *columns))
    s.store.conn.execute(f"UPDATE enrollments SET {sets} WHERE id = ?",  # names are constants
                         (state, rfc3339(s.now), *columns.values(), e.id))


def _expire_due(s: Session) -> None:
    """Mark every pending enrollment past its expiry as expired (audited)."""
    rows = s.store.conn.execute(
        "SELECT * FROM enrollments WHERE state = 'pending' AND expires <= ?",
        (rfc3339(s.now),)).fetchall()
    if not rows:
        return
    with s.store.transaction():
        for row in rows:
            e = _row(row)
            _set_state(s, e, "expired")
            _audit(s, "enroll-expire", e)


_GONE = {
    "used": "this enrollment link has already been used",
    "burned": "this enrollment link is burned (too many wrong PINs)",
    "expired": "this enrollment link has expired",
    "cancelled": "this enrollment link was cancelled",
}
UNKNOWN = "unknown enrollment link (mistyped, or already removed)"


def _usable(s: Session, token: str) -> Enrollment:
    """The pending enrollment of ``token``; raises Gone (expiring it if due)."""
    e = _find(s, token)
    if e is None:
        raise Gone(UNKNOWN)
    if e.state == "pending" and e.expires <= s.now:
        with s.store.transaction():
            _set_state(s, e, "expired")
            _audit(s, "enroll-expire", e)
        raise Gone(_GONE["expired"])
    if e.state != "pending":
        raise Gone(_GONE[e.state])
    return e


def _check_pin(s: Session, token: str, pin: str, client_ip: str) -> Enrollment:
    """The enrollment if ``pin`` is right; a wrong one is counted (the 5th burns).

    One transaction reads the row and records the attempt, so concurrent
    guesses from several workers are counted exactly.
    """
    e = _usable(s, token)
    if hmac.compare_digest(pin_mac(token, normalise_pin(pin)), pin_mac_of(s, e)):
        return e
    with s.store.transaction():
        row = s.store.conn.execute("SELECT attempts, state FROM enrollments WHERE id = ?",
                                   (e.id,)).fetchone()
        if row["state"] != "pending":
            raise Gone(_GONE.get(row["state"], UNKNOWN))
        attempts = int(row["attempts"]) + 1
        s.store.conn.execute("UPDATE enrollments SET attempts = ? WHERE id = ?",
                             (attempts, e.id))
        _audit(s, "enroll-wrong-pin", e, attempts=attempts, client_ip=client_ip)
        if attempts >= MAX_ATTEMPTS:
            _set_state(s, e, "burned")
            _audit(s, "enroll-burn", e, client_ip=client_ip)
    if attempts >= MAX_ATTEMPTS:
        raise Gone(_GONE["burned"])
    raise WrongPin(MAX_ATTEMPTS - attempts)


def pin_mac_of(s: Session, e: Enrollment) -> str:
    row = s.store.conn.execute("SELECT pin_mac FROM enrollments WHERE id = ?",
                               (e.id,)).fetchone()
    return str(row[0])


# -- the operations -------------------------------------------------------------------


def create(
    ca: CertificateAuthority,
    name: str,
    *,
    roles: Sequence[str] = (),
    lifetime: timedelta = CLIENT_LIFETIME,
    ttl: timedelta = DEFAULT_TTL,
) -> NewEnrollment:
    """A new pending enrollment for a certificate ``name`` with ``roles``.

    Raises:
        UsageError: a bad name, role or TTL.
        CAError: ``name`` already has a valid certificate or a pending enrollment.
    """
    check_name(name)
    roles = check_roles(roles)
    if not timedelta(seconds=1) <= ttl <= MAX_TTL:
        raise UsageError("--ttl must be between 1s and 7d")
    token = secrets.token_urlsafe(32)
    pin = f"{secrets.randbelow(10 ** PIN_DIGITS):0{PIN_DIGITS}d}"
    with ca.session() as s:
        _ensure_table(s)
        _expire_due(s)
        for rec in s.store.valid_by_name(name, s.now):
            if rec.superseded_by is None:
                raise CAError(f"a valid certificate named {name!r} exists (serial "
                              f"{serial_hex(rec.serial)}); revoke it first or pick another name")
        pending = s.store.conn.execute(
            "SELECT id FROM enrollments WHERE name = ? AND state = 'pending'", (name,)).fetchone()
        if pending is not None:
            raise CAError(f"{name!r} already has a pending enrollment ({pending[0]}); "
                          f"cancel it with: certgate ca enroll --cancel {pending[0]}")
        with s.store.transaction():
            while True:
                ident = secrets.token_hex(4)
                if s.store.conn.execute("SELECT 1 FROM enrollments WHERE id = ?",
                                        (ident,)).fetchone() is None:
                    break
            s.store.conn.execute(
                "INSERT INTO enrollments (id, token_sha256, pin_mac, name, roles, lifetime, "
                "created, expires, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                (ident, token_hash(token), pin_mac(token, pin), name, json.dumps(list(roles)),
                 int(lifetime.total_seconds()), rfc3339(s.now), rfc3339(s.now + ttl)))
            row = s.store.conn.execute("SELECT * FROM enrollments WHERE id = ?",
                                       (ident,)).fetchone()
            e = _row(row)
            _audit(s, "enroll-create", e, expires=rfc3339(e.expires))
        s.settle()
    return NewEnrollment(e, token, pin)


def listing(ca: CertificateAuthority) -> list[Enrollment]:
    """Every enrollment, oldest first (pending ones past expiry marked expired)."""
    with ca.session() as s:
        _ensure_table(s)
        _expire_due(s)
        s.settle()
        rows = s.store.conn.execute("SELECT * FROM enrollments ORDER BY created, rowid")
        return [_row(row) for row in rows]


def cancel(ca: CertificateAuthority, id_or_name: str) -> list[Enrollment]:
    """Cancel the pending enrollment with this id, or every pending one of a name."""
    with ca.session() as s:
        _ensure_table(s)
        _expire_due(s)
        rows = s.store.conn.execute(
            "SELECT * FROM enrollments WHERE state = 'pending' AND (id = ? OR name = ?)",
            (id_or_name, id_or_name)).fetchall()
        if not rows:
            raise CAError(f"no pending enrollment with id or name {id_or_name!r}")
        found = [_row(row) for row in rows]
        with s.store.transaction():
            for e in found:
                _set_state(s, e, "cancelled")
                _audit(s, "enroll-cancel", e)
        s.settle()
        return found


def open_link(ca: CertificateAuthority, token: str) -> Enrollment:
    """The pending enrollment of ``token`` (the page's GET); raises Gone."""
    with ca.session() as s:
        _ensure_table(s)
        try:
            return _usable(s, token)
        finally:
            s.settle()


def check_pin(ca: CertificateAuthority, token: str, pin: str, client_ip: str) -> Enrollment:
    """The enrollment when ``pin`` is right (nothing is used up); raises
    WrongPin (403) or Gone (410, also for the wrong PIN that burns it)."""
    with ca.session() as s:
        _ensure_table(s)
        try:
            return _check_pin(s, token, pin, client_ip)
        finally:
            s.settle()


Issue = Callable[[Session, Enrollment], IssuedCertificate]


def redeem(ca: CertificateAuthority, token: str, pin: str, client_ip: str, method: str,
           make: Issue) -> tuple[Enrollment, IssuedCertificate]:
    """Check the PIN, use the enrollment up and issue its certificate, once.

    The transition to ``used`` commits before issuing (a second request for
    the same token, in any worker, now finds it used); should issuing fail,
    the row returns to ``pending``.
    """
    with ca.session() as s:
        _ensure_table(s)
        try:
            e = _check_pin(s, token, pin, client_ip)
            with s.store.transaction():
                claimed = s.store.conn.execute(
                    "UPDATE enrollments SET state = 'used', finished = ?, method = ? "
                    "WHERE id = ? AND state = 'pending'", (rfc3339(s.now), method, e.id))
                if claimed.rowcount != 1:
                    raise Gone(_GONE["used"])
            try:
                issued = make(s, e)
            except BaseException:
                with s.store.transaction():
                    s.store.conn.execute(
                        "UPDATE enrollments SET state = 'pending', finished = NULL, "
                        "method = NULL WHERE id = ?", (e.id,))
                raise
            with s.store.transaction():
                s.store.conn.execute("UPDATE enrollments SET serial = ? WHERE id = ?",
                                     (serial_hex(issued.serial), e.id))
                _audit(s, "enroll-download", e, serial=issued.serial, method=method,
                       client_ip=client_ip)
        finally:
            s.settle()
    return e, issued


def _request(e: Enrollment, op: str,
             public_key: CertificatePublicKeyTypes | None = None) -> Request:
    return Request(
        op=op,
        name=e.name,
        kind="client",
        subject=common_name(e.name),
        sans=client_sans((), (), ()),
        lifetime=timedelta(seconds=e.lifetime),
        roles=e.roles,
        public_key=public_key,
    )


def _checked_issue(s: Session, request: Request) -> IssuedCertificate:
    try:
        return issue(s, request, lambda _issued: [])
    except CAError as exc:
        if "already exists" in str(exc):
            raise NameTaken(f"a valid certificate named {request.name!r} exists already; "
                            "ask for a new enrollment link") from None
        raise


def issue_with_key(s: Session, e: Enrollment) -> IssuedCertificate:
    """A fresh ECDSA P-256 key and its certificate, in memory only (the key
    goes into the response, encrypted, and nowhere else)."""
    return _checked_issue(s, _request(e, "enroll"))


def csr_issuer(csr_pem: bytes) -> Issue:
    """Issue for a CSR's key: the enrollment decides name and roles; the CSR
    gives its public key only (refused if it asks for more, as ``ca sign``).

    The CSR is read after the link and PIN are checked, so a used or burned
    link answers 410 whatever is sent; a refused CSR puts the enrollment
    back to pending (see :func:`redeem`).
    """

    def make(s: Session, e: Enrollment) -> IssuedCertificate:
        from cryptography import x509

        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise EnrollmentError("not a PEM certificate signing request") from None
        try:
            contents = check_csr(csr)
            check_csr_subject(contents.subject)
            check_csr_sans(contents.sans, ())
        except (CAError, UsageError) as exc:
            raise EnrollmentError(f"CSR refused: {exc}") from None
        return _checked_issue(s, _request(e, "enroll-csr", contents.public_key))

    return make


def counts(database: Path) -> dict[str, int]:
    """result -> how many, for ``certgate_enrollments_total`` (read-only).

    Rows are never deleted, so each count only grows: a counter. A pending
    row past its expiry counts as expired already (nobody may have looked).
    """
    out = dict.fromkeys(RESULTS, 0)
    store = Store(database, read_only=True)
    try:
        now = rfc3339(utcnow())
        rows = store.conn.execute(
            "SELECT CASE WHEN state = 'pending' AND expires <= ? THEN 'expired' "
            "ELSE state END, count(*) FROM enrollments GROUP BY 1", (now,)).fetchall()
    except sqlite3.OperationalError:  # no enrollment yet: no table
        return out
    finally:
        store.close()
    for state, number in rows:
        out["created"] += int(number)
        result = "downloaded" if state == "used" else str(state)
        if result in out:
            out[result] += int(number)
    return out
