"""One CA operation: lock, recover, commit, publish, settle.

Theory of operation
-------------------
Every mutating operation runs inside :func:`session`, which

1. takes an exclusive ``flock`` on ``STATE/ca/lock`` so two ``certgate ca``
   processes never interleave (SQLite would serialise the transactions, but
   not the files around them);
2. *recovers* whatever a crashed predecessor left: replays staging journals
   (:mod:`certgate.ca.journal`), rebuilds derived files if ``derived_stale``
   is set, and flushes queued audit entries;
3. lets the operation build everything in memory, then call
   :meth:`Session.commit` with the files to publish and a function that
   writes its rows: journal + staged files, one database transaction,
   renames;
4. *settles*: rebuilds derived files (bundle, CRL, current CA copies) when
   the transaction marked them stale, then appends the audit entries.

Read-only lookups for the proxy (``inventory_snapshot``) skip all this:
they open the database, run one SELECT and close it, never blocking on
the lock.

``CERTGATE_TEST_FAULT=<op>-after-<step>`` makes the process die with
``os._exit(1)`` at that step (no cleanup handlers run, as in a power cut),
so tests can prove the recovery claims above with real crashes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certgate.ca import audit, journal
from certgate.ca.crl import DEFAULT_NEXT_UPDATE, Revocation, build_crl, crls_to_pem
from certgate.ca.keys import PrivateKey, load_key, serial_hex
from certgate.ca.layout import CALayout
from certgate.ca.store import Authority, Store
from certgate.ca.timeutil import rfc3339, utcnow
from certgate.errors import CAError
from certgate.fsutil import atomic_write

FAULT_ENV = "CERTGATE_TEST_FAULT"


def fault_point(name: str) -> None:
    """Die here, abruptly, if the test-only fault variable names this point."""
    if os.environ.get(FAULT_ENV) == name:
        os._exit(1)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Session:
    """The store and layout of one locked operation, plus its helpers."""

    def __init__(self, layout: CALayout, store: Store) -> None:
        self.layout = layout
        self.store = store
        self.now = utcnow()

    # -- recovery and settling ---------------------------------------------------

    def recover(self) -> None:
        journal.recover(self.layout.staging_dir, self._committed)
        self.settle()

    def _committed(self, marker: str) -> bool:
        conn = self.store.conn
        for table in ("certificates", "authorities"):
            with contextlib.suppress(sqlite3.Error):  # no tables yet: aborted init
                query = f"SELECT 1 FROM {table} WHERE serial = ?"  # table names are constants
                if conn.execute(query, (marker,)).fetchone():
                    return True
        return False

    def settle(self) -> None:
        if self.store.get("derived_stale") == "1":
            self.refresh_derived()
        self.flush_audit()

    def commit(
        self,
        op: str,
        marker: int,
        outputs: Sequence[journal.Output],
        apply: Callable[[], None],
    ) -> None:
        """Stage ``outputs``, run ``apply`` in one transaction, then publish."""
        staged = journal.stage(self.layout.staging_dir, f"{serial_hex(marker)}", outputs)
        fault_point(f"{op}-after-stage")
        try:
            with self.store.transaction():
                apply()
        except BaseException:
            staged.discard()
            raise
        fault_point(f"{op}-after-commit")
        staged.publish()
        self.settle()

    # -- audit -------------------------------------------------------------------

    def audit(
        self,
        operation: str,
        *,
        name: str | None = None,
        serial: int | None = None,
        roles: Sequence[str] = (),
        not_after: datetime | None = None,
        **extra: Any,
    ) -> None:
        """Queue an audit entry; call inside the operation's transaction."""
        body: dict[str, Any] = {
            "time": rfc3339(self.now),
            "operation": operation,
            "name": name,
            "serial": None if serial is None else f"{serial_hex(serial)}",
            "roles": list(roles),
            "not_after": None if not_after is None else rfc3339(not_after),
            "actor": audit.actor(),
        }
        admin = audit.ACTING_ADMIN.get()
        if admin is not None:
            body["via"] = "console"
            body["admin"] = dict(admin)
        body.update(extra)
        self.store.queue_audit(body)

    def flush_audit(self) -> None:
        path = self.layout.audit_log
        for seq, body in self.store.audit_outbox():
            last_body, last_seq, last_hash = audit.last_entry(path)
            if last_seq == seq and last_body == body:
                # Appended before a crash, not yet recorded: record, don't repeat.
                self.store.record_audit(seq, last_hash)
                continue
            line = audit.encode_entry(body, seq, last_hash)
            audit.append(path, line)
            fault_point("audit-after-append")
            self.store.record_audit(seq, audit.line_hash(line))

    # -- CA material ---------------------------------------------------------------

    def key_for(self, authority: Authority) -> PrivateKey:
        if authority.key_file is None:
            raise CAError(
                f"the key of CA certificate {serial_hex(authority.serial)} is offline; "
                "pass it with --root-key FILE"
            )
        return load_key(self.layout.keys_dir / authority.key_file)

    def cert_of(self, authority: Authority) -> x509.Certificate:
        return x509.load_pem_x509_certificate(authority.cert_pem)

    def parent_of(self, cert: x509.Certificate) -> Authority | None:
        """The root that signed ``cert`` (None for a self-signed root)."""
        if cert.issuer == cert.subject:
            return None
        for candidate in self.store.authorities():
            if candidate.role != "root":
                continue
            with contextlib.suppress(ValueError, TypeError, InvalidSignature):
                cert.verify_directly_issued_by(self.cert_of(candidate))
                return candidate
        return None

    def ca_chain(self, issuer: Authority) -> list[x509.Certificate]:
        """The issuing CA and its root (when they differ), for chains and p12."""
        chain = [self.cert_of(issuer)]
        parent = self.parent_of(chain[0])
        if parent is not None:
            chain.append(self.cert_of(parent))
        return chain

    def live(self) -> list[Authority]:
        """Unexpired roots and intermediates, current ones first."""
        found = [
            a for a in self.store.authorities() if a.role != "cross" and a.not_after > self.now
        ]
        return sorted(found, key=lambda a: (not a.active, a.role != "root"))

    def bundle_pem(self) -> bytes:
        return b"".join(a.cert_pem for a in self.live())

    # -- derived files ---------------------------------------------------------

    def next_update(self) -> timedelta:
        seconds = self.store.get("crl_next_update")
        return timedelta(seconds=int(seconds)) if seconds else DEFAULT_NEXT_UPDATE

    def write_crl(self, *, record: bool = False) -> int:
        """Sign and publish ``crl.pem``; return the new CRL number.

        The number is committed before the file is written: a crash between
        the two skips a number (allowed) rather than reusing it for a CRL with
        different contents (not allowed, RFC 5280 5.2.3).
        """
        with self.store.transaction():
            number = int(self.store.get("crl_number", "0") or "0") + 1
            self.store.put("crl_number", str(number))
            if record:
                self.audit("crl", crl_number=number)
        crls = []
        # The current issuer's CRL first: ``openssl crl -in crl.pem`` reads
        # only the first, and it is the one an admin means.
        for authority in sorted(self.live(), key=lambda a: not (a.issuer and a.active)):
            if authority.key_file is None:
                continue
            # An issuer, past or present; or a root that issued leaves before
            # an intermediate took over (an imported single-tier CA rotated):
            # its leaves stay valid, so their revocations must stay published.
            if not authority.issuer and not self.store.has_issued(authority.serial):
                continue
            entries = [
                Revocation(serial, when, reason)
                for serial, when, reason in self.store.revoked_by_issuer(authority.serial, self.now)
            ]
            crls.append(
                build_crl(
                    self.cert_of(authority),
                    self.key_for(authority),
                    entries,
                    number=number,
                    now=self.now,
                    next_update=self.next_update(),
                )
            )
        atomic_write(self.layout.crl, crls_to_pem(crls), mode=0o644)
        return number

    def refresh_derived(self, *, record_crl: bool = False) -> int:
        """Rewrite root.crt, issuing.crt, bundle.pem and crl.pem from the store.

        The certificate files are replaced only when their bytes change (a CA
        certificate expired out of the bundle, a rotation), so a proxy that
        reloads on mtime does not reload for nothing. Returns the CRL number.
        """
        root = self.store.active("root")
        if root is None:
            return 0
        _replace_if_changed(self.layout.root_cert, root.cert_pem)
        _replace_if_changed(self.layout.issuing_cert, self.store.active_issuer().cert_pem)
        _replace_if_changed(self.layout.trust_bundle, self.bundle_pem())
        number = self.write_crl(record=record_crl)
        with self.store.transaction():
            self.store.put("derived_stale", "0")
        return number


def _replace_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    atomic_write(path, data, mode=0o644)


@contextlib.contextmanager
def session(layout: CALayout, *, create: bool = False) -> Iterator[Session]:
    """Lock the CA, open the store, recover, and hand out a :class:`Session`."""
    if not layout.ca_dir.is_dir():
        raise CAError(f"no CA in {layout.state_dir}: run 'certgate ca init' first")
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        store = Store(layout.database, create=create)
        try:
            current = Session(layout, store)
            current.recover()
            yield current
        finally:
            store.close()
    finally:
        os.close(fd)
