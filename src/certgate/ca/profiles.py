"""Certificate profiles: what every certificate this CA signs looks like.

Pure functions from keys, names and times to ``x509.Certificate``; no files,
no database. Keeping the profiles here, side by side, makes the security
properties reviewable in one place:

* roots: CA:TRUE without a path length (a cross-signed new root adds one
  non-self-issued link under the old root, RFC 5280 6.1.4 (l)), keyCertSign
  and cRLSign only;
* intermediates: CA:TRUE, pathLen 0 (they sign leaves, never other CAs);
* client leaves: CA:FALSE, digitalSignature only, clientAuth EKU only, so a
  stolen client certificate cannot impersonate a server or sign anything;
* server leaves: the same with serverAuth instead of clientAuth.

All extensions that constrain use are marked critical (RFC 5280 4.2.1.3,
4.2.1.9); key identifiers let chain building pick the right CA when old and
new CAs overlap after a rotation.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgate.ca.keys import MIN_RSA_BITS, PrivateKey, random_serial, signature_hash
from certgate.errors import CAError, UsageError

# Backdate notBefore so a device whose clock is a few minutes slow does not
# reject a certificate issued a moment ago (Let's Encrypt backdates by 1 h;
# a home network's NTP drift is far smaller).
CLOCK_SKEW = timedelta(minutes=5)

ROOT_LIFETIME = timedelta(days=3650)
INTERMEDIATE_LIFETIME = timedelta(days=730)
CLIENT_LIFETIME = timedelta(days=365)
# Matches the ACME norm so users meet renewal early and often.
SERVER_LIFETIME = timedelta(days=90)

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def ca_subject(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _ca_extensions(
    builder: x509.CertificateBuilder,
    public_key: CertificatePublicKeyTypes,
    issuer_key: PrivateKey,
    path_length: int | None,
    issuer: x509.Certificate | None = None,
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(authority_key_id(issuer, issuer_key), False)
    )


def authority_key_id(issuer: x509.Certificate | None, issuer_key: PrivateKey
                     ) -> x509.AuthorityKeyIdentifier:
    """The AKI of what ``issuer`` signs: its own subjectKeyIdentifier when it has one.

    certgate's CA certificates compute the SKI from the key (RFC 5280 method
    1), so both ways agree for them; an imported CA may use another method
    (or a random value), and a certificate's AKI must equal its issuer's SKI
    for chain building by key identifier to find the issuer.
    """
    if issuer is not None:
        with contextlib.suppress(x509.ExtensionNotFound):
            ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def build_root(key: PrivateKey, subject: x509.Name, now: datetime) -> x509.Certificate:
    """A self-signed root valid for :data:`ROOT_LIFETIME`."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_LIFETIME)
    )
    builder = _ca_extensions(builder, key.public_key(), key, None)
    return builder.sign(key, signature_hash(key))


def build_cross(
    new_root: x509.Certificate, old_root: x509.Certificate, old_key: PrivateKey, now: datetime
) -> x509.Certificate:
    """The new root's name and key, signed by the old root.

    A client that trusts only the old root can reach the new one through this
    certificate, which is what makes a root rotation gradual.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(new_root.subject)
        .issuer_name(old_root.subject)
        .public_key(new_root.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(new_root.not_valid_after_utc, old_root.not_valid_after_utc))
    )
    builder = _ca_extensions(builder, new_root.public_key(), old_key, None, old_root)
    return builder.sign(old_key, signature_hash(old_key))


def build_intermediate(
    key: PrivateKey,
    subject: x509.Name,
    root: x509.Certificate,
    root_key: PrivateKey,
    now: datetime,
) -> x509.Certificate:
    """An issuing CA (pathLen 0) that never outlives its root."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + INTERMEDIATE_LIFETIME, root.not_valid_after_utc))
    )
    builder = _ca_extensions(builder, key.public_key(), root_key, 0, root)
    return builder.sign(root_key, signature_hash(root_key))


@dataclass(frozen=True, slots=True)
class LeafSpec:
    """Everything that varies between two leaves of the same kind."""

    kind: str  # "client" or "server"
    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    sans: tuple[x509.GeneralName, ...]
    not_before: datetime
    not_after: datetime
    crl_url: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("client", "server"):
            raise ValueError(f"unknown leaf kind {self.kind!r}")
        if self.not_after <= self.not_before:
            raise ValueError("notAfter must follow notBefore")


def build_leaf(
    spec: LeafSpec, issuer: x509.Certificate, issuer_key: PrivateKey
) -> x509.Certificate:
    """Sign a client or server leaf; its notAfter is clamped to the issuer's."""
    if spec.kind == "client":
        eku = ExtendedKeyUsageOID.CLIENT_AUTH
    else:
        eku = ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(spec.subject)
        .issuer_name(issuer.subject)
        .public_key(spec.public_key)
        .serial_number(random_serial())
        .not_valid_before(spec.not_before - CLOCK_SKEW)
        .not_valid_after(min(spec.not_after, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(spec.public_key), False)
        .add_extension(authority_key_id(issuer, issuer_key), False)
    )
    if spec.sans:
        # RFC 5280 4.2.1.6: critical only when the subject is empty.
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(spec.sans)), not len(spec.subject)
        )
    if spec.crl_url:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(spec.crl_url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), False)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def common_name(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])


# RFC 5321 s.4.1.2 Dot-string (atext from RFC 5322 s.3.2.3): no space,
# quote, backslash, comma or semicolon, so an address is one token in any
# header or list it lands in. Quoted local parts are not accepted.
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# RFC 3986 s.3.1 scheme, then only unreserved, reserved and well-formed
# percent-escapes (s.2): no space, quote, backslash, control byte or
# non-ASCII, which a URI can always express as %HH.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:"
                  r"(?:[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*")


def check_email(email: str) -> str:
    """An ASCII dot-atom address with a valid DNS domain, domain lowercased."""
    local, at, domain = email.rpartition("@")
    if not at or len(local) > 64 or not _EMAIL_LOCAL.fullmatch(local):
        raise UsageError(f"--email {email!r} is not a plain ASCII e-mail address (local@domain)")
    try:
        return f"{local}@{normalize_host(domain, wildcard=False)}"
    except UsageError:
        raise UsageError(f"--email {email!r}: {domain!r} is not a valid DNS name") from None


def check_uri(uri: str) -> str:
    """An absolute RFC 3986 URI (scheme, then URI characters and %HH only)."""
    if len(uri) > 2048 or not _URI.fullmatch(uri):
        raise UsageError(
            f"--uri {uri!r} is not an absolute RFC 3986 URI "
            "(spaces, quotes, backslashes and control or non-ASCII bytes must be %-escaped)")
    return uri


def check_dns(host: str) -> str:
    try:
        return normalize_host(host, wildcard=False)
    except UsageError as exc:
        raise UsageError(f"--dns {exc}") from None


def client_sans(
    emails: Sequence[str] = (), uris: Sequence[str] = (), dns: Sequence[str] = ()
) -> tuple[x509.GeneralName, ...]:
    """SubjectAltName entries for a client certificate (--email/--uri/--dns).

    Each value is validated strictly (:func:`check_email`, :func:`check_uri`,
    :func:`normalize_host`): the proxy forwards SANs to upstreams in headers
    and matches role rules on them, so the CA never signs one that could be
    read as more than one name.
    """
    names: list[x509.GeneralName] = []
    names.extend(x509.RFC822Name(check_email(email)) for email in emails)
    names.extend(x509.UniformResourceIdentifier(check_uri(uri)) for uri in uris)
    names.extend(x509.DNSName(check_dns(host)) for host in dns)
    return tuple(names)


def normalize_host(host: str, *, wildcard: bool = True) -> str:
    """Validate a DNS name (A-labels only) and return it lowercased.

    A wildcard is allowed only as the whole leftmost label of a name with at
    least two more labels (``*.example.com``), the only form clients match
    (RFC 6125 6.4.3).
    """
    text = host.strip().rstrip(".").lower()
    labels = text.split(".")
    if wildcard and labels[0] == "*" and len(labels) >= 3:
        labels = labels[1:]
    if (
        not text
        or len(text) > 253
        or not text.isascii()
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
    ):
        raise UsageError(f"{host!r} is not a valid DNS name (use punycode for IDNs)")
    return text


def server_sans(hosts: Sequence[str]) -> tuple[x509.GeneralName, ...]:
    """SANs for a server: IP literals become iPAddress, the rest dNSName."""
    if not hosts:
        raise UsageError("a server certificate needs at least one host name")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(normalize_host(host)))
    return tuple(dict.fromkeys(names))


def san_strings(sans: Sequence[x509.GeneralName]) -> list[str]:
    """Human-readable SAN values, as stored in the inventory."""
    return [str(name.value) for name in sans]


_SAN_TYPES: tuple[tuple[type[x509.GeneralName], str, str], ...] = (
    (x509.DNSName, "DNS", "--dns"),
    (x509.RFC822Name, "email", "--email"),
    (x509.UniformResourceIdentifier, "URI", "--uri"),
    (x509.IPAddress, "IP", ""),
)


def san_label(name: x509.GeneralName) -> str:
    """``TYPE:value`` as OpenSSL (and the proxy's X-Client-SAN) spell it."""
    for kind, label, _flag in _SAN_TYPES:
        if isinstance(name, kind):
            return f"{label}:{name.value}"
    return f"{type(name).__name__}:{name.value}"


def typed_san_strings(sans: Sequence[x509.GeneralName]) -> list[str]:
    """SANs as ``TYPE:value``, for output and the audit log."""
    return [san_label(name) for name in sans]


def has_control_characters(text: str) -> bool:
    """C0 controls, DEL or C1 controls: bytes that end or rewrite a line."""
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in text)


def check_csr_sans(
    asked: Sequence[x509.GeneralName], allowed: Sequence[x509.GeneralName]
) -> None:
    """Refuse a CSR SAN that the command line did not name exactly.

    The CA decides what a certificate says: a SAN is signed because the
    operator typed it (``--dns``, ``--email``, ``--uri``, validated as for
    ``ca issue``), never because a device asked. A CSR SAN equal to one of
    those is fine; any other one refuses the whole CSR, so the operator
    sees what the device wanted instead of a certificate that silently
    differs from the request.

    Raises:
        UsageError: naming the first SAN that was not allowed.
    """
    for name in asked:
        if name in allowed:
            continue
        flag = next((f for kind, _l, f in _SAN_TYPES if isinstance(name, kind)), "")
        hint = (f"to sign it, name it with {flag}" if flag
                else "certgate does not put that SAN type in client certificates")
        raise UsageError(f"the CSR asks for SAN {san_label(name)!r}, which the command line "
                         f"does not allow; {hint}")


@dataclass(frozen=True, slots=True)
class CSRContents:
    """What a CSR may contribute to a certificate: subject, SANs, the key."""

    subject: x509.Name
    sans: tuple[x509.GeneralName, ...]
    public_key: CertificatePublicKeyTypes


def check_csr(csr: x509.CertificateSigningRequest) -> CSRContents:
    """Verify a CSR and refuse anything beyond a client certificate's rights.

    A CSR is a request, not an instruction: only its subject, its SANs and
    its public key are used. Still, a CSR that asks for CA rights or server
    authentication signals a confused (or hostile) requester, so it is
    refused outright with a message naming what was asked rather than
    silently trimmed.

    Raises:
        CAError: bad signature, unsupported key, or forbidden rights asked.
    """
    if not csr.is_signature_valid:
        raise CAError("the CSR signature does not verify; it was altered or corrupted")
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CAError(f"the CSR has a {key.key_size}-bit RSA key; at least 2048 is needed")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CAError(f"the CSR key uses curve {key.curve.name}; use P-256 or P-384")
    else:
        raise CAError("the CSR key is neither RSA nor ECDSA P-256/P-384")
    try:
        extensions = csr.extensions
    except ValueError as exc:
        raise CAError(f"the CSR extensions cannot be parsed: {exc}") from None
    asked: list[str] = []
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            asked.append("CA rights (basicConstraints CA:TRUE)")
        elif isinstance(value, x509.ExtendedKeyUsage):
            if ExtendedKeyUsageOID.SERVER_AUTH in value:
                asked.append("server authentication (extendedKeyUsage serverAuth)")
            if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in value:
                asked.append("any extended key usage (anyExtendedKeyUsage)")
        elif isinstance(value, x509.KeyUsage):
            if value.key_cert_sign:
                asked.append("certificate signing (keyUsage keyCertSign)")
            if value.crl_sign:
                asked.append("CRL signing (keyUsage cRLSign)")
    if asked:
        raise CAError("refusing to sign: the CSR asks for " + " and ".join(asked))
    sans: tuple[x509.GeneralName, ...] = ()
    for ext in extensions:
        if isinstance(ext.value, x509.SubjectAlternativeName):
            sans = tuple(ext.value)
    return CSRContents(subject=csr.subject, sans=sans, public_key=key)


def check_csr_subject(subject: x509.Name) -> None:
    """Refuse a CSR whose subject carries control characters.

    The subject of a signed CSR is never copied (it is ``CN=<name>``), but a
    request with CR, LF or other control bytes in its name is an attack on
    whatever logs or headers it was meant for, not a device's honest
    request, so it is refused rather than quietly replaced.

    Raises:
        UsageError: naming the subject, escaped onto one line.
    """
    for attr in subject:
        value = attr.value if isinstance(attr.value, str) else ""
        if has_control_characters(value):
            raise UsageError(f"the CSR subject {subject.rfc4514_string()!r} contains control "
                             "characters; refusing to sign it")


def csr_common_name(subject: x509.Name) -> str | None:
    attrs = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None
