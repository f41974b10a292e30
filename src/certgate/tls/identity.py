"""The verified client identity, as policy, headers and logs see it.

OpenSSL has already verified the chain when this module runs; what it does is
turn the leaf's DER into one immutable :class:`ClientIdentity` whose fields
are exactly the strings the policy matches on, the headers carry and the
access log records, so the three can never disagree about who the client is.

Fields are *raw*: the CN of ``CN=a\\nb`` really contains a newline, because
policy must match what the certificate says. Anyone putting a field into an
HTTP header must escape it (``certgate.http.headers`` does); ``dn`` is the
RFC 4514 string, which escapes ``, + " \\ < > ;`` but not control characters.

:func:`check_client_certificate_profile` is the second gate: OpenSSL accepts
any chain that verifies, but a CA certificate or a server-only certificate
must not work as a client identity.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "IDENTITY_CACHE_SIZE",
    "NO_CLIENT_AUTH_EKU",
    "NO_DIGITAL_SIGNATURE",
    "ClientIdentity",
    "IdentityCache",
    "InvalidCertificate",
    "IssuerLookup",
    "VerifiedIssuer",
    "check_client_certificate_profile",
    "encode_san_list",
    "identity_from_der",
    "percent_encode",
]

#: Entries in an :class:`IdentityCache`. An entry is the DER (typically
#: 0.5-2 KB) plus a few short strings, so 1024 entries cost at most a few MB
#: per worker. That covers every client certificate that is actively
#: reconnecting in the deployments certgate is built for (a private CA with
#: tens to a few hundred clients). A miss only costs one parse (tens of
#: microseconds), so a cache too small is slower, never wrong; a cache without
#: a bound would let a client with many certificates grow it forever.
IDENTITY_CACHE_SIZE = 1024

_E = TypeVar("_E", bound=x509.ExtensionType)

#: Profile problems that are about what the key may be used for (the
#: ``bad_eku`` refusal label); every other profile problem is ``bad_cert``.
NO_CLIENT_AUTH_EKU = "extendedKeyUsage does not include clientAuth"
NO_DIGITAL_SIGNATURE = "keyUsage does not include digitalSignature"


class InvalidCertificate(ValueError):
    """The DER is not a certificate certgate can take an identity from."""


@dataclass(frozen=True, slots=True)
class VerifiedIssuer:
    """The trusted CA certificate whose key signed a leaf, found by its signature.

    A leaf's issuer DN and authorityKeyIdentifier are values any issuer can
    write; which key signed it is not. Built-in roles and ``issuer:`` /
    ``issuer-key:`` matchers read this, never the leaf's own claims.
    ``key_sha256`` is the lowercase hex SHA-256 of the issuer's
    SubjectPublicKeyInfo (DER); ``builtin`` says it is a certificate of
    certgate's built-in CA.
    """

    dn: str
    key_sha256: str
    builtin: bool


#: Finds the :class:`VerifiedIssuer` of a leaf among the trusted CA
#: certificates (see :class:`certgate.tls.issuers.TrustedIssuers`).
IssuerLookup = Callable[[x509.Certificate], "VerifiedIssuer | None"]


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who the client is, taken from its verified leaf certificate.

    ``cn`` is the subject commonName ("" if none; the last one if several,
    which the profile check refuses anyway). ``dn`` and ``issuer_dn`` are
    RFC 4514 strings. ``serial_hex`` is lowercase hex without leading zeros,
    ``0x`` or colons; ``fingerprint`` the lowercase hex SHA-256 of ``der``.
    ``sans`` keeps certificate order, each entry prefixed with its type as
    OpenSSL prints it: ``DNS:``, ``email:``, ``URI:``, ``IP:`` (plus the rare
    ``dirName:`` (RFC 4514 string), ``RID:`` (dotted OID) and ``otherName:``
    (its type OID only)). ``issuer_key_id`` is the authorityKeyIdentifier
    keyIdentifier (RFC 5280 s.4.2.1.1) when present, to find the issuer
    without string-comparing DNs. ``subject_attrs`` is the subject as
    (attribute name, value) pairs in certificate order, the name as RFC 4514
    spells it (``CN``, ``O``, ``OU``, ..., or a dotted OID): matchers read
    O and OU from here, never by splitting ``dn``, whose escaping (``\\,``)
    would otherwise cut one value in two. ``profile_problem`` is what
    :func:`check_client_certificate_profile` said about the certificate,
    computed once at parse time; it has no default so an identity built by
    hand cannot silently pass the profile check. ``issuer`` is the trusted
    certificate that verifiably signed the leaf (None: not found among the
    trusted certificates, or not looked up), see :class:`VerifiedIssuer`.
    """

    cn: str
    dn: str
    issuer_dn: str
    serial: int
    serial_hex: str
    fingerprint: str
    not_before: datetime
    not_after: datetime
    sans: tuple[str, ...]
    issuer_key_id: bytes | None
    der: bytes
    profile_problem: str | None
    subject_attrs: tuple[tuple[str, str], ...]
    issuer: VerifiedIssuer | None = None
    #: The X-Client-* headers already built for this certificate, per
    #: (verify, roles, forwarding) choice (see http.headers.identity_headers):
    #: an identity is cached per DER for the life of the process, and its
    #: headers only change with its roles, so they are built once, not per
    #: request. Not part of equality or the hash.
    header_cache: dict[tuple[str, tuple[str, ...], bool, bool],
                       tuple[tuple[bytes, bytes], ...]] = field(
        default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        if self.not_before.tzinfo is None or self.not_after.tzinfo is None:
            raise ValueError("certificate validity times must be timezone-aware")

    @property
    def not_after_rfc3339(self) -> str:
        """``not_after`` as RFC 3339 UTC with a ``Z``, e.g. ``2026-11-23T12:00:00Z``."""
        moment = self.not_after.astimezone(UTC).replace(tzinfo=None)
        return moment.isoformat(timespec="seconds") + "Z"

    @property
    def sans_header(self) -> str:
        """``X-Client-SAN``: the SANs in :func:`encode_san_list` form (ASCII)."""
        return encode_san_list(self.sans)


def percent_encode(text: str, safe: frozenset[int]) -> str:
    """``text`` as UTF-8 with every byte outside ``safe`` written ``%HH``.

    ``safe`` must not contain ``%``, so the result decodes back exactly with
    ``urllib.parse.unquote(result, errors="surrogatepass")``.
    """
    raw = text.encode("utf-8", "surrogatepass")
    if all(b in safe for b in raw):
        return raw.decode("ascii")
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in raw)


#: Bytes an X-Client-SAN entry keeps raw: visible ASCII except ``%`` (the
#: escape itself) and ``,`` (the list separator). Space, control bytes, DEL
#: and non-ASCII are escaped, so an entry never contains the separator, no
#: trimming by an HTTP parser can change it, and the header is one line.
_SAN_SAFE = frozenset(range(0x21, 0x7F)) - {ord("%"), ord(",")}


def encode_san_list(sans: Iterable[str]) -> str:
    """The ``X-Client-SAN`` form of ``sans`` (``TYPE:value`` strings).

    Entries are joined with ``", "``; inside an entry, ``%``, ``,``, space,
    control bytes, DEL and non-ASCII are percent-escaped (UTF-8). Read it
    back by splitting on ``,``, trimming spaces and percent-decoding each
    entry: one entry per SAN, always, so a DNS name containing
    ``", URI:spiffe://..."`` cannot read as a second SAN. Ordinary names
    (LDH DNS names, e-mail addresses, SPIFFE IDs) contain none of the
    escaped bytes and read as before.
    """
    return ", ".join(percent_encode(san, _SAN_SAFE) for san in sans)


def _text(value: str | bytes) -> str:
    # Attribute values are str for every string type; only bit-string
    # attributes (x500UniqueIdentifier) come back as bytes.
    return value if isinstance(value, str) else value.hex()


def _general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return "DNS:" + name.value
    if isinstance(name, x509.RFC822Name):
        return "email:" + name.value
    if isinstance(name, x509.UniformResourceIdentifier):
        return "URI:" + name.value
    if isinstance(name, x509.IPAddress):
        return "IP:" + str(name.value)
    if isinstance(name, x509.DirectoryName):
        return "dirName:" + name.value.rfc4514_string()
    if isinstance(name, x509.RegisteredID):
        return "RID:" + name.value.dotted_string
    if isinstance(name, x509.OtherName):
        return "otherName:" + name.type_id.dotted_string
    return "unknown:"  # pragma: no cover - cryptography defines no other GeneralName


def _extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def identity_from_der(der: bytes, issuers: IssuerLookup | None = None) -> ClientIdentity:
    """Parse a leaf certificate (DER, as ``getpeercert(binary_form=True)``).

    ``issuers`` finds the trusted certificate that signed it (a signature
    check, done here once per certificate so the cached identity carries it).

    Raises:
        InvalidCertificate: if the DER does not parse (trailing bytes, bad
            encoding, duplicate extensions) or the serial number is not
            positive (RFC 5280 s.4.1.2.2).
    """
    der = bytes(der)
    try:
        cert = x509.load_der_x509_certificate(der)
        serial = cert.serial_number
        common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        san = _extension(cert, x509.SubjectAlternativeName)
        aki = _extension(cert, x509.AuthorityKeyIdentifier)
        identity = ClientIdentity(
            cn=_text(common_names[-1].value) if common_names else "",
            dn=cert.subject.rfc4514_string(),
            issuer_dn=cert.issuer.rfc4514_string(),
            serial=serial,
            serial_hex=format(serial, "x"),
            fingerprint=hashlib.sha256(der).hexdigest(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            sans=tuple(_general_name(n) for n in san) if san is not None else (),
            issuer_key_id=aki.key_identifier if aki is not None else None,
            der=der,
            profile_problem=_profile_problem(cert),
            subject_attrs=tuple((attr.rfc4514_attribute_name, _text(attr.value))
                                for attr in cert.subject),
            issuer=issuers(cert) if issuers is not None else None,
        )
    # A non-positive serial makes cryptography warn; under warnings-as-errors
    # (the test suite) the warning arrives as an exception of its own class.
    except (
        ValueError,
        x509.DuplicateExtension,
        x509.InvalidVersion,
        x509.UnsupportedGeneralNameType,
        CryptographyDeprecationWarning,
    ) as exc:
        raise InvalidCertificate(f"unparsable certificate: {exc}") from None
    if serial <= 0:
        raise InvalidCertificate("certificate serial number is not positive")
    return identity


def _profile_problem(cert: x509.Certificate) -> str | None:
    bc = _extension(cert, x509.BasicConstraints)
    if bc is not None and bc.ca:
        # A CA key must not double as a client; RFC 5280 s.4.2.1.9.
        return "certificate is a CA (basicConstraints CA:TRUE)"
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        # RFC 5280 s.4.2.1.12: with the extension present, the key may only
        # be used for the listed purposes. anyExtendedKeyUsage alone is
        # refused as well: the CA/Browser Forum forbids it in subscriber
        # certificates and OpenSSL's own "sslclient" purpose rejects it.
        return NO_CLIENT_AUTH_EKU
    ku = _extension(cert, x509.KeyUsage)
    if ku is not None and not ku.digital_signature:
        # TLS client authentication is a signature (RFC 8446 s.4.4.3,
        # RFC 5246 s.7.4.8), so keyUsage must allow digitalSignature
        # (RFC 5280 s.4.2.1.3).
        return NO_DIGITAL_SIGNATURE
    if len(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)) > 1:
        # Policy matches on one CN; which of several a rule meant is a guess.
        return "subject has more than one commonName"
    return None


def check_client_certificate_profile(
    identity_or_cert: ClientIdentity | x509.Certificate,
) -> str | None:
    """Why a chain-verified leaf must still be refused as a client, or None.

    OpenSSL's verification proves the chain; it does not prove the leaf was
    meant for TLS client authentication (and a context's purpose setting can
    be changed or skipped on resumption), so certgate checks after every
    handshake, resumed ones included. Refused: basicConstraints CA:TRUE; an
    extendedKeyUsage extension without clientAuth (anyExtendedKeyUsage does
    not count); a keyUsage extension without digitalSignature; more than one
    subject commonName. A certificate with no EKU or keyUsage at all is
    acceptable (RFC 5280: absent means unrestricted).
    """
    if isinstance(identity_or_cert, ClientIdentity):
        return identity_or_cert.profile_problem
    return _profile_problem(identity_or_cert)


class IdentityCache:
    """A bounded LRU of parsed identities keyed by the exact DER bytes.

    A client that reconnects (or resumes) presents the same DER each time;
    re-parsing it per connection is wasted work. The key is the DER itself,
    so a hit requires byte-for-byte equality: a hash collision can cost a
    probe, never return another client's identity. Failed parses are not
    cached. Not thread-safe: one cache per event loop.
    """

    __slots__ = ("_capacity", "_entries", "_issuers", "hits", "misses")

    def __init__(self, capacity: int = IDENTITY_CACHE_SIZE,
                 issuers: IssuerLookup | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._issuers = issuers
        self._entries: OrderedDict[bytes, ClientIdentity] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_parse(self, der: bytes) -> ClientIdentity:
        """Return the identity for ``der``, parsing it on a miss.

        Raises:
            InvalidCertificate: as :func:`identity_from_der`.
        """
        key = bytes(der)
        identity = self._entries.get(key)
        if identity is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return identity
        self.misses += 1
        identity = identity_from_der(key, self._issuers)
        self._entries[key] = identity
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return identity

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
