"""Issuing leaves: client certificates, CSRs, server certificates, renewals.

Every path ends in :func:`issue`, which checks the name, signs, and hands
the row and the files to :meth:`Session.commit`; see
:mod:`certgate.ca.journal` for why a crash leaves all of it or none.
The order inside :func:`issue` is: check (nothing written) -> key -> sign
-> stage files -> COMMIT row -> rename files -> settle (CRL, audit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from certgate.ca import p12
from certgate.ca.journal import Output
from certgate.ca.keys import (
    DEFAULT_KEY_TYPE,
    PrivateKey,
    generate_key,
    key_to_pem,
    load_key,
    serial_hex,
)
from certgate.ca.layout import CALayout, check_name
from certgate.ca.profiles import (
    LeafSpec,
    build_leaf,
    check_csr_subject,
    client_sans,
    common_name,
    csr_common_name,
    san_strings,
    server_sans,
    typed_san_strings,
)
from certgate.ca.session import Session, fault_point, pem
from certgate.ca.store import CertRecord
from certgate.errors import CAError, UsageError

# Roles are matched by the proxy's policy, never turned into paths; the
# alphabet still excludes spaces and commas so they list and parse cleanly.
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")


def check_role(role: str) -> str:
    if not _ROLE.fullmatch(role):
        raise UsageError(
            f"invalid role {role!r}: use up to 64 letters, digits and ._:@- "
            "(starting with a letter or digit)"
        )
    return role


def check_roles(roles: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(check_role(role) for role in roles))


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A freshly signed certificate; ``key_pem`` is empty for a signed CSR."""

    name: str
    serial: int
    cert_pem: bytes
    key_pem: bytes
    chain_pem: bytes
    not_after: datetime
    kind: str = "client"
    roles: tuple[str, ...] = ()
    ca_certs: tuple[x509.Certificate, ...] = ()
    files: tuple[Path, ...] = ()
    #: What was signed, as printed and audited: the RFC 4514 subject and the
    #: SANs as ``TYPE:value``.
    subject: str = ""
    sans: tuple[str, ...] = ()
    #: For a signed CSR: the subject the CSR asked for (never copied), so
    #: the operator sees what was left out.
    csr_subject: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the files of a client certificate go, and whether to add a p12."""

    out_dir: Path
    p12_password: str | None = None
    p12_profile: str = "legacy"


@dataclass(frozen=True, slots=True)
class Request:
    op: str  # audit operation and fault-point prefix
    name: str
    kind: str
    subject: x509.Name
    sans: tuple[x509.GeneralName, ...]
    lifetime: timedelta
    roles: tuple[str, ...] = ()
    public_key: CertificatePublicKeyTypes | None = None  # None: generate a key
    key_type: str = DEFAULT_KEY_TYPE
    supersedes: tuple[int, ...] = field(default=())
    #: Extra (key, value) pairs for the audit entry, e.g. how a renewal came in.
    audit: tuple[tuple[str, str], ...] = ()


Render = Callable[[IssuedCertificate], Sequence[Output]]


def client_files(delivery: Delivery) -> Render:
    """NAME.crt, NAME.chain.pem, NAME.key (0600) and optionally NAME.p12 (0600)."""

    def render(issued: IssuedCertificate) -> list[Output]:
        base = delivery.out_dir
        out = [
            Output(base / f"{issued.name}.crt", issued.cert_pem),
            Output(base / f"{issued.name}.chain.pem", issued.chain_pem),
        ]
        if issued.key_pem:
            out.append(Output(base / f"{issued.name}.key", issued.key_pem, 0o600))
            if delivery.p12_password is not None:
                bundle = p12.build_p12(
                    issued.name,
                    _key_from_pem(issued.key_pem),
                    x509.load_pem_x509_certificate(issued.cert_pem),
                    issued.ca_certs,
                    delivery.p12_password,
                    profile=delivery.p12_profile,
                )
                out.append(Output(base / f"{issued.name}.p12", bundle, 0o600))
        return out

    return render


def server_files(layout: CALayout, out_dir: Path | None) -> Render:
    """NAME.fullchain.pem and NAME.key (0600), by default in STATE/ca/servers/."""

    def render(issued: IssuedCertificate) -> list[Output]:
        if out_dir is None:
            fullchain, key = layout.server_files(issued.name)
        else:
            fullchain = out_dir / f"{issued.name}.fullchain.pem"
            key = out_dir / f"{issued.name}.key"
        return [Output(fullchain, issued.chain_pem), Output(key, issued.key_pem, 0o600)]

    return render


def _key_from_pem(data: bytes) -> PrivateKey:
    key = load_pem_private_key(data, password=None)
    if not isinstance(key, PrivateKey):  # cannot happen: we generated it
        raise CAError("unexpected private key type")
    return key


def issue(s: Session, req: Request, render: Render) -> IssuedCertificate:
    """Sign one leaf and publish it with its inventory row, atomically."""
    check_name(req.name)
    roles = check_roles(req.roles)
    for current in s.store.valid_by_name(req.name, s.now):
        if current.superseded_by is None and current.serial not in req.supersedes:
            raise CAError(
                f"a valid {current.kind} certificate named {req.name!r} already exists "
                f"(serial {serial_hex(current.serial)}); renew or revoke it first"
            )
    issuer = s.store.active_issuer()
    issuer_cert, issuer_key = s.cert_of(issuer), s.key_for(issuer)
    private_key = None
    public_key = req.public_key
    if public_key is None:
        private_key = generate_key(req.key_type)
        public_key = private_key.public_key()
    fault_point(f"{req.op}-after-key")
    spec = LeafSpec(
        kind=req.kind,
        subject=req.subject,
        public_key=public_key,
        sans=req.sans,
        not_before=s.now,
        not_after=s.now + req.lifetime,
        crl_url=s.store.get("crl_url"),
    )
    cert = build_leaf(spec, issuer_cert, issuer_key)
    ca_certs = tuple(s.ca_chain(issuer))
    chain_pem = pem(cert)
    if issuer_cert.issuer != issuer_cert.subject:  # two-tier: add the intermediate
        chain_pem += pem(issuer_cert)
    issued = IssuedCertificate(
        name=req.name,
        serial=cert.serial_number,
        cert_pem=pem(cert),
        key_pem=key_to_pem(private_key) if private_key is not None else b"",
        chain_pem=chain_pem,
        not_after=cert.not_valid_after_utc,
        kind=req.kind,
        roles=roles,
        ca_certs=ca_certs,
        subject=req.subject.rfc4514_string(),
        sans=tuple(typed_san_strings(req.sans)),
    )
    outputs = render(issued)
    record = CertRecord(
        serial=cert.serial_number,
        name=req.name,
        kind=req.kind,
        roles=roles,
        sans=tuple(san_strings(req.sans)),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        lifetime=int(req.lifetime.total_seconds()),
        issuer_serial=issuer.serial,
        cert_pem=issued.cert_pem,
        issued_at=s.now,
        superseded_by=None,
        revoked_at=None,
        revocation_reason=None,
    )

    def apply() -> None:
        s.store.add_certificate(record)
        for old in req.supersedes:
            s.store.mark_superseded(old, record.serial)
        extra: dict[str, object] = dict(req.audit)
        if req.supersedes:
            extra["supersedes"] = [serial_hex(old) for old in req.supersedes]
        s.audit(
            req.op,
            name=req.name,
            serial=record.serial,
            roles=roles,
            not_after=record.not_after,
            kind=req.kind,
            subject=issued.subject,
            sans=list(issued.sans),
            **extra,
        )

    s.commit(req.op, record.serial, outputs, apply)
    return dataclasses.replace(issued, files=tuple(out.path for out in outputs))


def renewal(s: Session, name: str, lifetime: timedelta | None, key_type: str) -> Request:
    """A request for the same identity and roles as the newest unrevoked ``name``."""
    history = s.store.certificates(name)
    unrevoked = [rec for rec in history if rec.revoked_at is None]
    if not unrevoked:
        if history:
            raise CAError(f"every certificate named {name!r} is revoked; issue a new one")
        raise CAError(f"no certificate named {name!r}")
    old = unrevoked[-1]
    cert = x509.load_pem_x509_certificate(old.cert_pem)
    sans = _sans_of(cert)
    subject = cert.subject
    if old.kind == "client":
        subject, sans = _renewable_client(name, cert)
    supersedes = tuple(
        rec.serial
        for rec in s.store.valid_by_name(name, s.now)
        if rec.superseded_by is None
    )
    if old.serial not in supersedes:
        supersedes += (old.serial,)
    return Request(
        op="renew",
        name=name,
        kind=old.kind,
        subject=subject,
        sans=sans,
        lifetime=lifetime or timedelta(seconds=old.lifetime),
        roles=old.roles,
        key_type=key_type,
        supersedes=supersedes,
    )


def _renewable_client(name: str, cert: x509.Certificate
                      ) -> tuple[x509.Name, tuple[x509.GeneralName, ...]]:
    """The subject and SANs a renewal of client ``cert`` may carry: what
    ``ca issue`` and ``ca sign`` would sign today, checked again.

    Before ``ca sign`` took its values from the command line, it copied a
    CSR's subject and SANs; a certificate signed that way (a CN with CR/LF,
    ``OU=ops`` filed under another name, a DNS SAN with ``;URI=``) must not be
    carried forward by renewals. Refused with the reason rather than
    trimmed: the admin should see what the old certificate said.
    """
    subject = cert.subject
    cn = csr_common_name(subject)
    if cn is None or len(subject) != 1:
        raise CAError(f"cannot renew {name!r}: its subject {subject.rfc4514_string()!r} is not "
                      "one commonName, which certgate no longer signs; revoke it and issue "
                      "a new certificate")
    try:
        check_csr_subject(subject)
        emails: list[str] = []
        uris: list[str] = []
        dns: list[str] = []
        for general in _sans_of(cert):
            if isinstance(general, x509.RFC822Name):
                emails.append(general.value)
            elif isinstance(general, x509.UniformResourceIdentifier):
                uris.append(general.value)
            elif isinstance(general, x509.DNSName):
                dns.append(general.value)
            else:
                raise UsageError(f"a {type(general).__name__} SAN")
        sans = client_sans(emails, uris, dns)
    except UsageError as exc:
        raise CAError(f"cannot renew {name!r}: its certificate carries a value certgate no "
                      f"longer signs ({exc}); revoke it and issue a new certificate") from None
    return common_name(cn), sans


def _sans_of(cert: x509.Certificate) -> tuple[x509.GeneralName, ...]:
    try:
        return tuple(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return ()


def server_name(host: str) -> str:
    """A file-safe inventory name for a server certificate's first host."""
    text = host.strip("[]").lower().replace("*", "wildcard").replace(":", "-")
    text = re.sub(r"[^a-z0-9._-]", "_", text).lstrip(".")
    return text[:64] or "server"


def host_set_name(hosts: Sequence[str]) -> str:
    """The inventory name for an automatic server certificate of ``hosts``.

    One name per host set, so two routes with different hosts never
    supersede each other's certificate back and forth.
    """
    canonical = ",".join(sorted(san_strings(server_sans(hosts))))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    return check_name(f"{server_name(hosts[0])[:55]}-{digest}")


def server_request(s: Session, hosts: Sequence[str], name: str, validity: timedelta) -> Request:
    """A server certificate request that supersedes the current one of ``name``."""
    current = [r for r in s.store.valid_by_name(name, s.now) if r.superseded_by is None]
    if any(r.kind != "server" for r in current):
        raise CAError(f"the name {name!r} belongs to a client certificate; pick another --name")
    return Request(
        op="issue-server",
        name=name,
        kind="server",
        subject=common_name(hosts[0].strip("[]")),
        sans=server_sans(hosts),
        lifetime=validity,
        supersedes=tuple(r.serial for r in current),
    )


def covers(sans: Sequence[str], host: str) -> bool:
    """Would a client accept a certificate with ``sans`` for ``host``?

    Exact match, or a ``*.`` wildcard standing for exactly one leftmost label
    (RFC 6125 6.4.3); IP literals only match iPAddress entries.
    """
    try:
        wanted_ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        wanted = host.rstrip(".").lower()
        if wanted in sans:
            return True
        label, _, rest = wanted.partition(".")
        return bool(label) and label != "*" and bool(rest) and f"*.{rest}" in sans
    return str(wanted_ip) in sans


def issuing_not_after(layout: CALayout) -> datetime:
    """When the CA certificate that signs new certificates expires: nothing it
    issues runs longer (profiles cap leaves at it). Raises OSError or
    ValueError for a missing or unreadable certificate."""
    return x509.load_pem_x509_certificate(layout.issuing_cert.read_bytes()).not_valid_after_utc


def reusable_server(s: Session, hosts: Sequence[str], min_left: timedelta) -> CertRecord | None:
    """The newest stored server certificate for exactly ``hosts`` with time to
    spare, or one that already runs until the issuing CA's own end: a new
    one could not run longer (profiles cap a leaf at its issuer's
    not-after), so an imported CA with under ``min_left`` to live would
    otherwise get a new server certificate at every start and every hour."""
    try:
        issuer_end: datetime | None = issuing_not_after(s.layout)
    except (OSError, ValueError):
        issuer_end = None
    return newest_server(s.store.certificates(), s.layout, hosts, s.now, min_left,
                         issuer_end=issuer_end)


def newest_server(records: Sequence[CertRecord], layout: CALayout, hosts: Sequence[str],
                  now: datetime, min_left: timedelta, *,
                  issuer_end: datetime | None = None) -> CertRecord | None:
    """The newest valid server certificate whose SANs are exactly ``hosts``,
    with more than ``min_left`` to run (or running until ``issuer_end``,
    when given) and its files intact in the state dir.

    Exactly, not "covers": a certificate for a.test and b.test covers a.test,
    but serving it for a.test would tell every client about b.test (issue
    #12), and an install upgraded from one combined certificate must move to
    one certificate per host rather than keep the combined one.
    """
    wanted = set(san_strings(server_sans(hosts)))
    for rec in reversed(records):
        if rec.kind != "server" or rec.status(now) != "valid":
            continue
        if set(rec.sans) != wanted:
            continue
        if rec.not_after - now <= min_left and (issuer_end is None
                                                 or rec.not_after < issuer_end):
            continue
        fullchain, key = layout.server_files(rec.name)
        try:
            leaf = x509.load_pem_x509_certificate(fullchain.read_bytes())
            load_key(key)
        except (OSError, ValueError, CAError):
            continue
        if leaf.serial_number == rec.serial:
            return rec
    return None
