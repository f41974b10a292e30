"""The inventory: one SQLite database, the CA's source of truth.

SQLite in WAL mode with ``synchronous=FULL``: a committed transaction is on
disk when COMMIT returns, and readers (the proxy polling
:meth:`Store.valid_roles`) never block the writer. Every CA operation is one
``BEGIN IMMEDIATE`` transaction, so an issue, revoke or rotate is either
fully recorded or not at all; the files around it are ordered by
:mod:`certgate.ca.journal`.

Serials are stored as lowercase hex text (128-bit values do not fit SQLite's
64-bit integers) and instants as fixed-width RFC 3339 UTC text, which sorts
correctly as text.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from certgate.ca.keys import pem_fingerprint, serial_hex
from certgate.ca.timeutil import parse_rfc3339, rfc3339
from certgate.errors import CAError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS authorities (
    serial    TEXT PRIMARY KEY,
    role      TEXT NOT NULL CHECK (role IN ('root', 'intermediate', 'cross')),
    cert_pem  BLOB NOT NULL,
    key_file  TEXT,                       -- under ca/keys/; NULL when offline
    not_after TEXT NOT NULL,
    issuer    INTEGER NOT NULL DEFAULT 0, -- 1: signs leaf certificates
    active    INTEGER NOT NULL DEFAULT 0, -- 1: the current one of its role
    created   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    serial            TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('client', 'server')),
    roles             TEXT NOT NULL,      -- JSON array
    sans              TEXT NOT NULL,      -- JSON array of SAN values
    not_before        TEXT NOT NULL,
    not_after         TEXT NOT NULL,
    lifetime          INTEGER NOT NULL,   -- seconds asked for, reused by renew
    issuer_serial     TEXT NOT NULL REFERENCES authorities(serial),
    cert_pem          BLOB NOT NULL,
    issued_at         TEXT NOT NULL,
    superseded_by     TEXT,
    revoked_at        TEXT,
    revocation_reason TEXT
);
CREATE INDEX IF NOT EXISTS certificates_name ON certificates(name);
CREATE TABLE IF NOT EXISTS audit_outbox (
    seq  INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_chain (
    seq    INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Authority:
    serial: int
    role: str
    cert_pem: bytes
    key_file: str | None
    not_after: datetime
    issuer: bool
    active: bool


@dataclass(frozen=True, slots=True)
class CertRecord:
    serial: int
    name: str
    kind: str
    roles: tuple[str, ...]
    sans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    lifetime: int
    issuer_serial: int
    cert_pem: bytes
    issued_at: datetime
    superseded_by: int | None
    revoked_at: datetime | None
    revocation_reason: str | None

    def status(self, now: datetime) -> str:
        """valid / expired / revoked / superseded, revocation taking precedence."""
        if self.revoked_at is not None:
            return "revoked"
        if self.not_after <= now:
            return "expired"
        if self.superseded_by is not None:
            return "superseded"
        return "valid"

    def is_valid(self, now: datetime) -> bool:
        """Usable for authentication: neither revoked nor expired."""
        return self.revoked_at is None and self.not_after > now


def _cert_from_row(row: sqlite3.Row) -> CertRecord:
    return CertRecord(
        serial=int(row["serial"], 16),
        name=row["name"],
        kind=row["kind"],
        roles=tuple(json.loads(row["roles"])),
        sans=tuple(json.loads(row["sans"])),
        not_before=parse_rfc3339(row["not_before"]),
        not_after=parse_rfc3339(row["not_after"]),
        lifetime=row["lifetime"],
        issuer_serial=int(row["issuer_serial"], 16),
        cert_pem=bytes(row["cert_pem"]),
        issued_at=parse_rfc3339(row["issued_at"]),
        superseded_by=int(row["superseded_by"], 16) if row["superseded_by"] else None,
        revoked_at=parse_rfc3339(row["revoked_at"]) if row["revoked_at"] else None,
        revocation_reason=row["revocation_reason"],
    )


def _authority_from_row(row: sqlite3.Row) -> Authority:
    return Authority(
        serial=int(row["serial"], 16),
        role=row["role"],
        cert_pem=bytes(row["cert_pem"]),
        key_file=row["key_file"],
        not_after=parse_rfc3339(row["not_after"]),
        issuer=bool(row["issuer"]),
        active=bool(row["active"]),
    )


class Store:
    """A connection to the inventory with the queries the CA needs."""

    def __init__(self, path: Path, *, create: bool = False, read_only: bool = False) -> None:
        if not path.exists():
            if not create:
                raise CAError(f"no CA inventory at {path}")
            # Create the file 0600 ourselves: SQLite would honour the umask,
            # and it gives the -wal/-shm files the database file's mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.path = path
        if read_only:
            # mode=ro: SQLite refuses every write (and skips the checkpoint a
            # last read-write connection runs on close), for lookups that must
            # never change the CA, such as `certgate explain`.
            self.conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True,
                                        isolation_level=None, timeout=30.0)
            self.conn.row_factory = sqlite3.Row
            return
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        if create:
            # executescript() commits any open transaction first, so the
            # script carries its own BEGIN/COMMIT to stay one transaction.
            self.conn.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}"
                f"INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');"
                "COMMIT;"
            )

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- settings ------------------------------------------------------------

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def put(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def has_ca(self) -> bool:
        try:
            row = self.conn.execute(
                "SELECT 1 FROM authorities WHERE role = 'root' AND active = 1"
            ).fetchone()
        except sqlite3.OperationalError:  # schema not created: an aborted init
            return False
        return row is not None

    # -- authorities -----------------------------------------------------------

    def add_authority(
        self,
        *,
        serial: int,
        role: str,
        cert_pem: bytes,
        key_file: str | None,
        not_after: datetime,
        issuer: bool,
        now: datetime,
    ) -> None:
        """Record a CA certificate as the new active one of its role."""
        if role != "cross":
            self.conn.execute("UPDATE authorities SET active = 0 WHERE role = ?", (role,))
        if issuer:
            self.conn.execute("UPDATE authorities SET active = 0 WHERE issuer = 1")
        self.conn.execute(
            "INSERT INTO authorities VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                serial_hex(serial),
                role,
                cert_pem,
                key_file,
                rfc3339(not_after),
                int(issuer),
                int(role != "cross"),
                rfc3339(now),
            ),
        )

    def keep_as_root(self, serial: int) -> None:
        """A root that issued leaves directly (single tier) hands issuing to an
        intermediate: still the active root, no longer the issuer. It keeps
        signing a CRL for its leaves (``has_issued``)."""
        self.conn.execute("UPDATE authorities SET issuer = 0, active = 1 WHERE serial = ?",
                          (serial_hex(serial),))

    def has_issued(self, serial: int) -> bool:
        """Whether any inventory certificate names CA ``serial`` as its issuer."""
        row = self.conn.execute("SELECT 1 FROM certificates WHERE issuer_serial = ? LIMIT 1",
                                (serial_hex(serial),)).fetchone()
        return row is not None

    def authorities(self) -> list[Authority]:
        rows = self.conn.execute("SELECT * FROM authorities ORDER BY created, rowid")
        return [_authority_from_row(row) for row in rows]

    def active(self, role: str) -> Authority | None:
        row = self.conn.execute(
            "SELECT * FROM authorities WHERE role = ? AND active = 1", (role,)
        ).fetchone()
        return _authority_from_row(row) if row else None

    def active_issuer(self) -> Authority:
        row = self.conn.execute(
            "SELECT * FROM authorities WHERE issuer = 1 AND active = 1"
        ).fetchone()
        if row is None:
            raise CAError("the inventory has no active issuing CA")
        return _authority_from_row(row)

    def authority(self, serial: int) -> Authority:
        row = self.conn.execute(
            "SELECT * FROM authorities WHERE serial = ?", (serial_hex(serial),)
        ).fetchone()
        if row is None:
            raise CAError(f"unknown CA certificate {serial_hex(serial)}")
        return _authority_from_row(row)

    # -- certificates --------------------------------------------------------------

    def add_certificate(self, record: CertRecord) -> None:
        self.conn.execute(
            "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
            (
                serial_hex(record.serial),
                record.name,
                record.kind,
                json.dumps(list(record.roles)),
                json.dumps(list(record.sans)),
                rfc3339(record.not_before),
                rfc3339(record.not_after),
                record.lifetime,
                serial_hex(record.issuer_serial),
                record.cert_pem,
                rfc3339(record.issued_at),
            ),
        )

    def certificate(self, serial: int) -> CertRecord | None:
        row = self.conn.execute(
            "SELECT * FROM certificates WHERE serial = ?", (serial_hex(serial),)
        ).fetchone()
        return _cert_from_row(row) if row else None

    def certificates(self, name: str | None = None) -> list[CertRecord]:
        """All certificates (of ``name``), oldest first."""
        if name is None:
            rows = self.conn.execute("SELECT * FROM certificates ORDER BY issued_at, rowid")
        else:
            rows = self.conn.execute(
                "SELECT * FROM certificates WHERE name = ? ORDER BY issued_at, rowid", (name,)
            )
        return [_cert_from_row(row) for row in rows]

    def valid_by_name(self, name: str, now: datetime) -> list[CertRecord]:
        return [rec for rec in self.certificates(name) if rec.is_valid(now)]

    def mark_superseded(self, serial: int, successor: int) -> None:
        self.conn.execute(
            "UPDATE certificates SET superseded_by = ? WHERE serial = ?",
            (serial_hex(successor), serial_hex(serial)),
        )

    def mark_revoked(self, serial: int, reason: str, now: datetime) -> None:
        self.conn.execute(
            "UPDATE certificates SET revoked_at = ?, revocation_reason = ? WHERE serial = ?",
            (rfc3339(now), reason, serial_hex(serial)),
        )

    def set_roles(self, serial: int, roles: tuple[str, ...]) -> None:
        self.conn.execute(
            "UPDATE certificates SET roles = ? WHERE serial = ?",
            (json.dumps(list(roles)), serial_hex(serial)),
        )

    def revoked_by_issuer(self, issuer: int, now: datetime) -> list[tuple[int, datetime, str]]:
        """Revoked, unexpired certificates of one issuer: a CRL's entries.

        Expired certificates drop off, as RFC 5280 3.3 allows; a relying
        party rejects them on their dates alone.
        """
        rows = self.conn.execute(
            "SELECT serial, revoked_at, revocation_reason FROM certificates "
            "WHERE issuer_serial = ? AND revoked_at IS NOT NULL AND not_after > ?",
            (serial_hex(issuer), rfc3339(now)),
        )
        return [
            (int(row[0], 16), parse_rfc3339(row[1]), row[2] or "unspecified") for row in rows
        ]

    def valid_roles(self, now: datetime) -> dict[str, tuple[str, ...]]:
        """Certificate fingerprint -> roles of every unrevoked, unexpired record.

        Keyed by the SHA-256 of the certificate, not its serial: inventory
        roles belong to one certificate. An adopted CA (``ca adopt``) may
        have issued two leaves with one serial (``openssl x509 -set_serial
        01``, twice); the one never adopted must not get the other's roles.
        """
        rows = self.conn.execute(
            "SELECT cert_pem, roles FROM certificates WHERE revoked_at IS NULL AND not_after > ?",
            (rfc3339(now),),
        )
        return {pem_fingerprint(bytes(row[0])): tuple(json.loads(row[1])) for row in rows}

    def valid_client_expiries(self, now: datetime) -> list[tuple[str, int, str, str]]:
        """(name, serial, not_before, not_after; RFC 3339) of every client
        certificate in use: not revoked, not superseded by a renewal, not expired."""
        rows = self.conn.execute(
            "SELECT name, serial, not_before, not_after FROM certificates WHERE kind = 'client' "
            "AND revoked_at IS NULL AND superseded_by IS NULL AND not_after > ?",
            (rfc3339(now),),
        )
        return [(str(row[0]), int(row[1], 16), str(row[2]), str(row[3])) for row in rows]

    def roles_of(self, serial: int, now: datetime) -> tuple[str, ...]:
        row = self.conn.execute(
            "SELECT roles FROM certificates "
            "WHERE serial = ? AND revoked_at IS NULL AND not_after > ?",
            (serial_hex(serial), rfc3339(now)),
        ).fetchone()
        return tuple(json.loads(row[0])) if row else ()

    # -- audit -----------------------------------------------------------------------

    def queue_audit(self, body: dict[str, Any]) -> None:
        """Queue one audit entry; call inside the operation's transaction."""
        seq = int(self.get("audit_seq", "0") or "0") + 1
        self.put("audit_seq", str(seq))
        self.conn.execute(
            "INSERT INTO audit_outbox VALUES (?, ?)", (seq, json.dumps(body, ensure_ascii=True))
        )

    def audit_outbox(self) -> list[tuple[int, dict[str, Any]]]:
        rows = self.conn.execute("SELECT seq, body FROM audit_outbox ORDER BY seq")
        return [(int(row[0]), json.loads(row[1])) for row in rows]

    def record_audit(self, seq: int, sha256: str) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO audit_chain VALUES (?, ?)", (seq, sha256))
            self.conn.execute("DELETE FROM audit_outbox WHERE seq = ?", (seq,))

    def audit_chain(self) -> dict[int, str]:
        rows = self.conn.execute("SELECT seq, sha256 FROM audit_chain")
        return {int(row[0]): str(row[1]) for row in rows}
