"""Identity matchers: the ``KIND:VALUE`` strings of allow/deny lists and role rules.

One parser (:func:`parse_matcher`) serves the config loader, which reports a
bad matcher as ``FILE:LINE: key.path: reason`` at load time, and the policy,
which only ever sees :class:`Matcher` objects the loader built. A matcher is
judged against a :class:`~certgate.tls.identity.ClientIdentity` whose chain
OpenSSL has already verified; matchers say *which* verified certificates,
never whether a certificate is genuine.

The kinds, and how each compares:

``any``
    any verified certificate (never a client without one).
``role:NAME``
    NAME is among the roles the certificate holds (built-in CA inventory
    and config role rules, see :mod:`certgate.roles`).
``cn:VALUE``
    the subject commonName. ``*`` matches any run of characters.
``san:TYPE:VALUE``
    a subjectAltName of that type: ``DNS`` (compared case-insensitively,
    RFC 4343), ``email``, ``URI`` (SPIFFE IDs are URIs:
    ``san:URI:spiffe://example.org/ns/ops/*``) with ``*`` as a wildcard,
    or ``IP`` (exact address, compared as an address so ``::1`` and
    ``0:0::1`` are one). The type is required: a bare value that could
    match a SAN of another type is a guess.
``o:VALUE`` / ``ou:VALUE``
    one of the subject's organizationName / organizationalUnitName
    attributes, exactly. Read from the parsed subject, so a value with an
    escaped comma (``O=Acme\\, Inc.``) is one value, not two.
``issuer-key:HEX``
    the SHA-256 of the issuing CA's public key (SubjectPublicKeyInfo, 64 hex
    digits, colons allowed): ``openssl x509 -in CA.pem -noout -pubkey |
    openssl pkey -pubin -outform DER | sha256sum``. Matches only when the
    leaf's signature verifies under a trusted CA certificate with that key.
    This is the form to pin an issuer with: a key cannot be copied.
``issuer:DN``
    the issuer's distinguished name in RFC 4514 form, exactly as
    ``openssl x509 -noout -issuer -nameopt RFC2253`` prints it (most specific
    RDN first, no spaces after commas: ``CN=Step CA,O=Example``). Parsed at
    load time, so a malformed DN is a config error rather than a rule that
    never matches. A DN is a value any CA can write into a certificate, so
    this matches only when the leaf's signature verifies under a *trusted*
    CA certificate whose subject is that DN (see :mod:`certgate.tls.issuers`):
    a leaf from another trusted CA that reuses the DN does not match, and
    neither does a leaf signed by an intermediate that no trusted CA file
    contains (put the intermediate in the file). Prefer ``issuer-key:``.
``fingerprint:HEX``
    the SHA-256 fingerprint of the certificate (64 hex digits, colons allowed).
``serial:HEX``
    the serial number in hex (colons allowed). Serials are only unique per
    issuer: pair it with ``issuer:`` when several CAs are trusted.

``*`` is the only wildcard and it matches anything, ``/`` and ``.``
included; everything else is literal (a URI's ``?`` or ``[`` is not a
pattern), and the whole value must match.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from cryptography import x509

from certgate.tls.identity import ClientIdentity

__all__ = ["ANY", "Kind", "Matcher", "MatcherError", "check_role_name", "parse_matcher"]


class MatcherError(ValueError):
    """A matcher string that cannot be used; ``str(exc)`` is the one-line reason."""


class Kind(enum.Enum):
    ANY = "any"
    ROLE = "role"
    CN = "cn"
    SAN = "san"
    O = "o"  # noqa: E741 - the X.500 attribute's own name
    OU = "ou"
    ISSUER = "issuer"
    ISSUER_KEY = "issuer-key"
    FINGERPRINT = "fingerprint"
    SERIAL = "serial"


_KIND_NAMES = ", ".join(f"{k.value}:" for k in Kind if k is not Kind.ANY)
# How OpenSSL (and X-Client-SAN) spell the SAN types; config may use any case.
_SAN_TYPES = {"dns": "DNS", "email": "email", "uri": "URI", "ip": "IP"}
_HEX = frozenset("0123456789abcdefABCDEF")
# Roles travel comma-separated in X-Client-Roles, and a role name in a log
# line or a 403 must stay one token.
_ROLE_MAX = 64


def check_role_name(name: str) -> str:
    """Return ``name`` if it can be a role, else raise MatcherError."""
    if not name:
        raise MatcherError("a role name must not be empty")
    if len(name) > _ROLE_MAX:
        raise MatcherError(f"a role name is at most {_ROLE_MAX} characters")
    if any(ch.isspace() or ch == "," or not ch.isprintable() for ch in name):
        raise MatcherError(f"role name {name!r} must not contain spaces, commas or "
                           "control characters (roles are sent comma-separated)")
    return name


@dataclass(frozen=True, slots=True)
class Matcher:
    """One parsed matcher. ``text`` is how the config wrote it (for logs and explain)."""

    kind: Kind
    text: str
    # The canonical value compared: a role, a CN, "TYPE:value" for a SAN, an
    # RFC 4514 DN, a lowercase fingerprint, a serial as lowercase hex.
    value: str = ""
    serial: int | None = field(default=None, compare=False)
    pattern: re.Pattern[str] | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return self.text

    def matches(self, identity: ClientIdentity | None, roles: Collection[str] = ()) -> bool:
        """Whether ``identity`` (None: no certificate) satisfies this matcher."""
        if identity is None:
            return False
        kind = self.kind
        if kind is Kind.ANY:
            return True
        if kind is Kind.ROLE:
            return self.value in roles
        if kind is Kind.CN:
            return self._value_matches(identity.cn, self.value)
        if kind is Kind.SAN:
            return any(self._san_matches(san) for san in identity.sans)
        if kind is Kind.O or kind is Kind.OU:
            name = "O" if kind is Kind.O else "OU"
            return any(k == name and v == self.value for k, v in identity.subject_attrs)
        if kind is Kind.ISSUER:
            return identity.issuer is not None and identity.issuer.dn == self.value
        if kind is Kind.ISSUER_KEY:
            return identity.issuer is not None and identity.issuer.key_sha256 == self.value
        if kind is Kind.FINGERPRINT:
            return identity.fingerprint == self.value
        if kind is Kind.SERIAL:
            return identity.serial == self.serial
        raise AssertionError(kind)  # pragma: no cover - every Kind is handled above

    def _value_matches(self, value: str, want: str) -> bool:
        if self.pattern is not None:
            return self.pattern.fullmatch(value) is not None
        return value == want

    def _san_matches(self, san: str) -> bool:
        san_type, _, value = san.partition(":")
        want_type, _, want = self.value.partition(":")
        if san_type != want_type:
            return False
        if san_type == "DNS":
            value = value.lower()
        elif san_type == "IP":
            return _ip(value) == want
        return self._value_matches(value, want)


ANY = Matcher(Kind.ANY, "any")


def _glob(value: str) -> re.Pattern[str] | None:
    """A compiled pattern when ``value`` has a ``*``, else None (exact compare)."""
    if "*" not in value:
        return None
    regex = ".*".join(re.escape(part) for part in value.split("*"))
    return re.compile(regex, re.DOTALL)


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _hex(value: str, what: str) -> str:
    digits = value.replace(":", "")
    if not digits or not set(digits) <= _HEX:
        raise MatcherError(f"{what} must be hex digits (colons allowed), got {value!r}")
    return digits.lower()


def parse_matcher(text: str, *, allow_roles: bool = True) -> Matcher:
    """Parse one matcher string.

    Args:
        text: e.g. ``role:ops`` or ``san:URI:spiffe://example.org/ns/ops/*``.
        allow_roles: False where roles are being *assigned* (a role rule may
            not depend on roles).

    Raises:
        MatcherError: naming what is wrong, for the loader to place.
    """
    if text == "any":
        return ANY
    name, sep, value = text.partition(":")
    try:
        kind = Kind(name.lower()) if sep else None
    except ValueError:
        kind = None
    if kind is None or kind is Kind.ANY:
        raise MatcherError(f"expected any or one of {_KIND_NAMES} followed by a value, "
                           f"got {text!r}")
    if not value:
        raise MatcherError(f"{kind.value}: needs a value")
    if value != value.strip():
        raise MatcherError(f"{kind.value}: value has leading or trailing spaces: {value!r}")
    if kind is Kind.ROLE:
        if not allow_roles:
            raise MatcherError("role: cannot be used here (a role rule cannot depend on roles)")
        return Matcher(kind, text, check_role_name(value))
    if kind is Kind.CN:
        return Matcher(kind, text, value, pattern=_glob(value))
    if kind is Kind.SAN:
        return _parse_san(text, value)
    if kind in (Kind.O, Kind.OU):
        return Matcher(kind, text, value)
    if kind is Kind.ISSUER:
        try:
            name_ = x509.Name.from_rfc4514_string(value)
        except ValueError:
            raise MatcherError(
                f"issuer: not an RFC 4514 DN, got {value!r}: write it as `openssl x509 -noout "
                "-issuer -nameopt RFC2253` prints it, e.g. CN=Step CA,O=Example") from None
        if not list(name_):
            raise MatcherError("issuer: the DN is empty")
        return Matcher(kind, text, name_.rfc4514_string())
    if kind is Kind.FINGERPRINT or kind is Kind.ISSUER_KEY:
        digits = _hex(value, f"{kind.value}:")
        if len(digits) != 64:
            raise MatcherError(f"{kind.value}: must be a SHA-256 fingerprint (64 hex digits), "
                               f"got {len(digits)} digits")
        return Matcher(kind, text, digits)
    assert kind is Kind.SERIAL
    digits = _hex(value, "serial:")
    serial = int(digits, 16)
    if serial <= 0:
        raise MatcherError("serial: must be positive (RFC 5280 s.4.1.2.2)")
    return Matcher(kind, text, format(serial, "x"), serial=serial)


def _parse_san(text: str, value: str) -> Matcher:
    san_type, sep, san_value = value.partition(":")
    canonical = _SAN_TYPES.get(san_type.lower())
    if not sep or canonical is None:
        raise MatcherError(f"san: needs a type: san:DNS:NAME, san:email:ADDRESS, san:URI:URI "
                           f"or san:IP:ADDRESS, got {text!r}")
    if not san_value:
        raise MatcherError(f"san:{canonical}: needs a value")
    if canonical == "IP":
        address = _ip(san_value)
        if address is None:
            raise MatcherError(f"san:IP: expects an IP address (no wildcards), got {san_value!r}")
        return Matcher(Kind.SAN, text, f"IP:{address}")
    if canonical == "DNS":
        san_value = san_value.lower()
    return Matcher(Kind.SAN, text, f"{canonical}:{san_value}",
                   pattern=_glob(san_value))
