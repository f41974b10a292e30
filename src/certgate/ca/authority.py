"""``CertificateAuthority``: the one object the CLI and the proxy talk to.

A thin facade: each method opens a :func:`~certgate.ca.session.session`
(lock, recovery), delegates to the module that owns the job, and returns
plain data. The proxy's polling lookups (:meth:`inventory_snapshot`,
:meth:`roles_for_serial`) bypass the lock and read the database directly;
WAL mode lets them run while an operation writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from certgate.ca import audit, issuance, lifecycle
from certgate.ca.adoption import Adopted, Skipped, adopt
from certgate.ca.crl import check_reason
from certgate.ca.importing import ImportPlan, import_ca
from certgate.ca.issuance import Delivery, IssuedCertificate, Request
from certgate.ca.keys import DEFAULT_KEY_TYPE, parse_serial, serial_hex
from certgate.ca.layout import CALayout, check_name
from certgate.ca.profiles import (
    CLIENT_LIFETIME,
    SERVER_LIFETIME,
    check_csr,
    check_csr_sans,
    check_csr_subject,
    client_sans,
    common_name,
    csr_common_name,
    server_sans,
)
from certgate.ca.session import Session, session
from certgate.ca.store import CertRecord, Store
from certgate.ca.timeutil import lifetime, parse_rfc3339, utcnow
from certgate.errors import CAError, UsageError

# ensure_server_certificate replaces a stored server certificate once it has
# 30 days or less left: a third of the 90-day lifetime, as ACME clients do.
SERVER_RENEW_BEFORE = timedelta(days=30)


def _many(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True, slots=True)
class Inventory:
    """Every issued certificate and the instant the statuses refer to."""

    records: tuple[CertRecord, ...]
    now: datetime


class CertificateAuthority:
    """The private CA kept under ``STATE/ca/``."""

    def __init__(self, layout: CALayout) -> None:
        self.layout = layout

    # -- lifecycle ---------------------------------------------------------------

    @staticmethod
    def exists(state_dir: Path) -> bool:
        layout = CALayout(Path(state_dir))
        if not layout.database.is_file():
            return False
        store = Store(layout.database)
        try:
            return store.has_ca()
        finally:
            store.close()

    @classmethod
    def init(
        cls,
        state_dir: Path,
        *,
        name: str = "certgate CA",
        key_type: str = "ecdsa-p256",
        offline_root: Path | None = None,
        single_tier: bool = False,
        crl_url: str | None = None,
        next_update: timedelta | None = None,
    ) -> CertificateAuthority:
        """Create a new CA; refuses (CAError) if one exists in ``state_dir``."""
        layout = CALayout(Path(state_dir))
        lifecycle.init_ca(
            layout,
            name=name,
            key_type=key_type,
            offline_root=offline_root,
            single_tier=single_tier,
            crl_url=crl_url,
            next_update=next_update,
        )
        return cls(layout)

    @classmethod
    def import_existing(cls, state_dir: Path, plan: ImportPlan, *,
                        name: str | None = None) -> CertificateAuthority:
        """Make the CA ``plan`` describes the CA of ``state_dir`` (``ca import``);
        refuses (CAError) if one exists there."""
        layout = CALayout(Path(state_dir))
        import_ca(layout, plan, name=name)
        return cls(layout)

    @classmethod
    def open(cls, state_dir: Path) -> CertificateAuthority:
        if not cls.exists(state_dir):
            raise CAError(f"no CA in {state_dir}: run 'certgate ca init --state {state_dir}' first")
        return cls(CALayout(Path(state_dir)))

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with session(self.layout) as current:
            yield current

    # -- paths -------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.layout.state_dir

    @property
    def trust_bundle_path(self) -> Path:
        return self.layout.trust_bundle

    @property
    def crl_path(self) -> Path:
        return self.layout.crl

    @property
    def root_cert_path(self) -> Path:
        return self.layout.root_cert

    @property
    def issuing_cert_path(self) -> Path:
        return self.layout.issuing_cert

    # -- issuance ----------------------------------------------------------------

    def issue_client(
        self,
        name: str,
        *,
        roles: Sequence[str] = (),
        days: int | None = None,
        hours: int | None = None,
        email: str | Sequence[str] | None = None,
        uri: str | Sequence[str] | None = None,
        dns: str | Sequence[str] | None = None,
        key_type: str = DEFAULT_KEY_TYPE,
        delivery: Delivery | None = None,
    ) -> IssuedCertificate:
        """Issue a client certificate with a fresh key.

        Nothing is written inside the state directory but the inventory row;
        with ``delivery`` the files go to ``delivery.out_dir``, published in
        the same all-or-nothing step as the row.
        """
        request = Request(
            op="issue",
            name=check_name(name),
            kind="client",
            subject=common_name(name),
            sans=client_sans(_many(email), _many(uri), _many(dns)),
            lifetime=lifetime(days, hours, CLIENT_LIFETIME),
            roles=tuple(roles),
            key_type=key_type,
        )
        render = issuance.client_files(delivery) if delivery else lambda _issued: []
        with self.session() as s:
            return issuance.issue(s, request, render)

    def sign_csr(
        self,
        csr_data: bytes,
        *,
        name: str | None = None,
        roles: Sequence[str] = (),
        days: int | None = None,
        hours: int | None = None,
        out_dir: Path | None = None,
        email: str | Sequence[str] | None = None,
        uri: str | Sequence[str] | None = None,
        dns: str | Sequence[str] | None = None,
    ) -> IssuedCertificate:
        """Sign a client CSR (PEM or DER) for the CSR's key, on the CA's terms.

        The CA decides what the certificate says, exactly as for
        :meth:`issue_client`: the subject is ``CN=<name>`` (``name``, by
        default the CSR's common name, must pass :func:`check_name`) and the
        SANs are those of ``email``/``uri``/``dns``, validated as for
        ``ca issue``. The CSR contributes its key only. A CSR SAN that the
        command line does not name exactly, or a subject with control
        characters, refuses the CSR (nothing is written); other subject
        attributes are not copied and are reported in ``csr_subject``.

        Raises:
            CAError: unparsable CSR, bad signature, or rights it may not have.
            UsageError: a hostile or not-allowed subject, name or SAN.
        """
        try:
            if b"-----BEGIN" in csr_data:
                csr = x509.load_pem_x509_csr(csr_data)
            else:
                csr = x509.load_der_x509_csr(csr_data)
        except ValueError as exc:
            raise CAError(f"not a certificate signing request: {exc}") from None
        contents = check_csr(csr)
        check_csr_subject(contents.subject)
        chosen = name or csr_common_name(contents.subject)
        if not chosen:
            raise UsageError("the CSR has no common name; give --name")
        sans = client_sans(_many(email), _many(uri), _many(dns))
        check_csr_sans(contents.sans, sans)
        request = Request(
            op="sign",
            name=check_name(chosen),
            kind="client",
            subject=common_name(chosen),
            sans=sans,
            lifetime=lifetime(days, hours, CLIENT_LIFETIME),
            roles=tuple(roles),
            public_key=contents.public_key,
        )
        render = issuance.client_files(Delivery(out_dir)) if out_dir else lambda _issued: []
        with self.session() as s:
            issued = issuance.issue(s, request, render)
        return dataclasses.replace(issued, csr_subject=contents.subject.rfc4514_string())

    def issue_server(
        self,
        hosts: Sequence[str],
        *,
        name: str | None = None,
        days: int | None = None,
        hours: int | None = None,
        out_dir: Path | None = None,
    ) -> IssuedCertificate:
        """Issue a server certificate; an older one of the same name is superseded.

        Files go to ``STATE/ca/servers/`` (where the proxy finds them) unless
        ``out_dir`` is given.
        """
        chosen = check_name(name or issuance.server_name(hosts[0]))
        validity = lifetime(days, hours, SERVER_LIFETIME)
        with self.session() as s:
            request = issuance.server_request(s, hosts, chosen, validity)
            return issuance.issue(s, request, issuance.server_files(self.layout, out_dir))

    def ensure_server_certificate(self, hosts: Sequence[str]) -> tuple[Path, Path]:
        """(fullchain, key) in the state dir for a certificate naming exactly ``hosts``.

        Reuses a stored one with more than 30 days left; otherwise issues one.
        """
        server_sans(hosts)  # validate before taking the lock
        with self.session() as s:
            found = issuance.reusable_server(s, hosts, SERVER_RENEW_BEFORE)
            if found is not None:
                return self.layout.server_files(found.name)
            name = issuance.host_set_name(hosts)
            request = issuance.server_request(s, hosts, name, SERVER_LIFETIME)
            issuance.issue(s, request, issuance.server_files(self.layout, None))
        return self.layout.server_files(name)

    def issuing_not_after(self) -> datetime:
        """When the CA certificate that signs new certificates expires: no
        certificate it issues runs longer (profiles cap leaves at it)."""
        return issuance.issuing_not_after(self.layout)

    def served_server_files(self, hosts: Sequence[str]) -> tuple[Path, Path] | None:
        """(fullchain, key) of the certificate :meth:`ensure_server_certificate`
        last settled on for ``hosts`` (the newest valid one naming exactly
        them), or None; read-only, for the scrape-time inventory."""
        store = Store(self.layout.database)
        try:
            found = issuance.newest_server(store.certificates(), self.layout, hosts, utcnow(),
                                           timedelta(0))
        finally:
            store.close()
        return self.layout.server_files(found.name) if found is not None else None

    def renew(
        self,
        name: str,
        *,
        days: int | None = None,
        hours: int | None = None,
        key_type: str = DEFAULT_KEY_TYPE,
        delivery: Delivery | None = None,
        out_dir: Path | None = None,
    ) -> IssuedCertificate:
        """A fresh key and certificate for ``name``; the old one becomes superseded.

        Keeps the subject, SANs and roles; the lifetime defaults to the old
        one's, so short-lived (hours) certificates renew as short-lived.
        Client files go by ``delivery`` (or to ``out_dir``); server files to
        ``out_dir`` or, by default, ``STATE/ca/servers/``.
        """
        validity = None
        if days is not None or hours is not None:
            validity = lifetime(days, hours, CLIENT_LIFETIME)
        with self.session() as s:
            request = issuance.renewal(s, check_name(name), validity, key_type)
            if request.kind == "server":
                render = issuance.server_files(self.layout, out_dir)
            elif delivery is not None:
                render = issuance.client_files(delivery)
            else:
                render = issuance.client_files(Delivery(out_dir)) if out_dir else (lambda _i: [])
            return issuance.issue(s, request, render)

    # -- revocation and roles ----------------------------------------------------

    def _select(self, s: Session, name_or_serial: str) -> list[CertRecord]:
        """Valid certificates named ``name_or_serial``, else the one with that serial."""
        by_name = s.store.certificates(name_or_serial)
        if by_name:
            return [rec for rec in by_name if rec.is_valid(s.now)] or [by_name[-1]]
        serial = parse_serial(name_or_serial)
        record = s.store.certificate(serial) if serial is not None else None
        if record is None:
            raise CAError(f"no certificate with name or serial {name_or_serial!r}")
        return [record]

    def revoke(self, name_or_serial: str, reason: str = "unspecified") -> list[CertRecord]:
        """Revoke by serial, or every valid certificate of a name; rewrite the CRL."""
        check_reason(reason)
        with self.session() as s:
            targets = self._select(s, name_or_serial)
            for rec in targets:
                if rec.revoked_at is not None:
                    raise CAError(
                        f"certificate {rec.name} ({serial_hex(rec.serial)}) is already revoked "
                        f"({rec.revocation_reason})"
                    )

            def apply() -> None:
                for rec in targets:
                    s.store.mark_revoked(rec.serial, reason, s.now)
                    s.audit(
                        "revoke",
                        name=rec.name,
                        serial=rec.serial,
                        roles=rec.roles,
                        not_after=rec.not_after,
                        reason=reason,
                    )
                s.store.put("derived_stale", "1")

            s.commit("revoke", targets[0].serial, (), apply)
            return [s.store.certificate(rec.serial) or rec for rec in targets]

    def adopt(self, paths: Sequence[Path], *, name: str | None = None,
              roles: Sequence[str] = ()) -> tuple[list[Adopted], list[Skipped]]:
        """Record leaves this CA issued before certgate (``ca adopt``)."""
        return adopt(self.layout, paths, name=name, roles=roles)

    def write_crl(self, next_update: timedelta | None = None) -> int:
        """Re-sign ``crl.pem`` (number incremented); return the CRL number.

        Meant for a daily timer. It also drops CA certificates that have
        expired since from ``bundle.pem`` (the file is untouched otherwise).
        """
        with self.session() as s:
            if next_update is not None:
                self._store_next_update(s, next_update)
            return s.refresh_derived(record_crl=True)

    @staticmethod
    def _store_next_update(s: Session, next_update: timedelta) -> None:
        with s.store.transaction():
            s.store.put("crl_next_update", str(int(next_update.total_seconds())))

    def set_next_update(self, next_update: timedelta) -> None:
        with self.session() as s:
            self._store_next_update(s, next_update)

    def change_role(self, name_or_serial: str, role: str, *, add: bool) -> list[CertRecord]:
        """Add or remove ``role`` on the valid certificates of a name (or one serial)."""
        role = issuance.check_role(role)
        with self.session() as s:
            targets = [r for r in self._select(s, name_or_serial) if r.is_valid(s.now)]
            if not targets:
                raise CAError(f"{name_or_serial!r} has no valid certificate to change")
            for rec in targets:
                if add == (role in rec.roles):
                    state = "already has" if add else "does not have"
                    raise CAError(
                        f"certificate {rec.name} ({serial_hex(rec.serial)}) {state} role {role!r}"
                    )
            with s.store.transaction():
                for rec in targets:
                    roles = (*rec.roles, role) if add else tuple(r for r in rec.roles if r != role)
                    s.store.set_roles(rec.serial, roles)
                    s.audit(
                        "role-add" if add else "role-remove",
                        name=rec.name,
                        serial=rec.serial,
                        roles=roles,
                        not_after=rec.not_after,
                        role=role,
                    )
            s.settle()
            return [s.store.certificate(rec.serial) or rec for rec in targets]

    def rotate(
        self,
        *,
        root: bool = False,
        root_key: Path | None = None,
        offline_root: Path | None = None,
    ) -> lifecycle.RotationResult:
        return lifecycle.rotate(
            self.layout, new_root=root, root_key_file=root_key, offline_root=offline_root
        )

    # -- queries -----------------------------------------------------------------

    def certificates(self) -> Inventory:
        with self.session() as s:
            return Inventory(tuple(s.store.certificates()), s.now)

    def bundle_pem(self) -> bytes:
        with self.session() as s:
            return s.bundle_pem()

    def verify_audit(self) -> int:
        """Entries in a sound audit log; raises AuditError at the first bad line."""
        with self.session() as s:
            try:
                data = self.layout.audit_log.read_bytes()
            except FileNotFoundError:
                data = b""
            return audit.verify(data, s.store.audit_chain())

    def inventory_snapshot(self) -> dict[str, tuple[str, ...]]:
        """fingerprint -> roles for every valid (unrevoked, unexpired) certificate.

        Read-only and lock-free, for the proxy to poll.
        """
        store = Store(self.layout.database)
        try:
            return store.valid_roles(utcnow())
        finally:
            store.close()

    def client_expiries(self) -> list[tuple[str, int, datetime, datetime]]:
        """(name, serial, not_before, not_after) of every client certificate in
        use (neither revoked, superseded nor expired); read-only."""
        store = Store(self.layout.database)
        try:
            rows = store.valid_client_expiries(utcnow())
        finally:
            store.close()
        return [(name, serial, parse_rfc3339(start), parse_rfc3339(end))
                for name, serial, start, end in rows]

    def roles_for_serial(self, serial: int) -> tuple[str, ...]:
        """Roles of a valid certificate; () for unknown, revoked or expired ones."""
        store = Store(self.layout.database)
        try:
            return store.roles_of(serial, utcnow())
        finally:
            store.close()
