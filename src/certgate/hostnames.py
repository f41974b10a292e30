"""One normaliser for every host name certgate compares: SNI, Host, config.

Routing decides on the SNI of the handshake and again on the ``Host`` header
(or the authority of an absolute-form target) of every request; the config
names the same hosts as patterns. If those three went through different
normalisers, ``Example.COM.``, ``example.com:443`` and ``xn--...`` spellings
could select one route for the handshake and another for the request. So all
three pass through :func:`normalise_host` / :func:`normalise_pattern` here and
are then compared as plain strings.

The canonical form is: lowercase ASCII, no port, no trailing dot, non-ASCII
labels converted to punycode A-labels, IPv4 as a dotted quad, IPv6 compressed
and without brackets.

IDNA is done with the standard library's ``idna`` codec, which implements
IDNA2003 (RFC 3490 with the RFC 3491 nameprep profile), not IDNA2008 (RFC
5891). The two differ for a few code points (``ß``, ``ς``, ZWJ/ZWNJ): IDNA2003
maps ``ß`` to ``ss`` where IDNA2008 keeps it. Certgate only needs one
deterministic mapping applied on both sides of every comparison, and operators
who care can always write the A-label (``xn--...``) themselves; the result of
this module is validated as plain ASCII after the codec runs, so a quirk of
the codec can never produce a name containing a delimiter.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = [
    "HostTable",
    "InvalidHost",
    "is_ip_literal",
    "normalise_host",
    "normalise_pattern",
]

T = TypeVar("T")

#: RFC 1035 s.2.3.4: a label is at most 63 octets.
MAX_LABEL_LENGTH = 63
#: RFC 1035 s.2.3.4 limits a name to 255 octets on the wire, which is 253
#: characters in dotted text form without the trailing dot (RFC 2181 s.11).
MAX_HOST_LENGTH = 253
#: Anything longer than this cannot become a valid host even after IDNA
#: (punycode never shrinks a label below a quarter of its input), so refuse it
#: before handing it to the codec: the codec's cost grows with the input.
_MAX_RAW_LENGTH = 4 * MAX_HOST_LENGTH + 8

# After IDNA every label must consist of these. Letters, digits and hyphen are
# RFC 1123 host names; underscore is not, but appears in real deployments
# (service names such as _acme-challenge, some internal DNS), and is harmless
# because it is no delimiter in URLs, headers or certificates.
_LABEL_RE = re.compile(r"[a-z0-9_-]{1,63}")
_PORT_RE = re.compile(r"[0-9]{1,5}")
# A final label that is all digits, or hex with 0x, makes WHATWG URL parsers
# and inet_aton() treat the whole name as an IPv4 address ("1.2.3" and
# "0x7f.1" both mean an IP). Such names must be real dotted quads or nothing,
# or a name here and the address a backend resolves could disagree.
_NUMERIC_LABEL_RE = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)")
# Characters that delimit parts of a URL or authority, or that have no place
# in a name, refused before IDNA so their reason is precise.
_FORBIDDEN = frozenset("/\\@?#%*,;\"'<>`{}|^ ")


class InvalidHost(ValueError):
    """A host name (SNI, Host header, authority or config entry) that is refused.

    The message is a short reason suitable for a log line, a config problem
    or a 400 body; it never echoes the (possibly hostile) input.
    """


def _strip_port(raw: str, *, allow_port: bool) -> str:
    """Split ``host[:port]`` and return the host part, brackets removed.

    ``[v6]`` and ``[v6]:port`` are the RFC 3986 s.3.2.2 IP-literal forms. An
    unbracketed name with several colons is accepted only if it is entirely an
    IPv6 address, so that the output of :func:`normalise_host` is accepted by
    it again (idempotence), while ``::1:8443`` style ambiguity is impossible:
    a string that parses as IPv6 as a whole is taken as that address.
    """
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0:
            raise InvalidHost("unterminated '[' in IPv6 literal")
        inner, rest = raw[1:close], raw[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InvalidHost("junk after IPv6 literal")
            if not allow_port:
                raise InvalidHost("a port is not allowed here")
            _check_port(rest[1:])
        if not _is_ipv6(inner):
            raise InvalidHost("invalid IPv6 literal")
        return "[" + inner + "]"
    colons = raw.count(":")
    if colons == 0:
        return raw
    if colons == 1:
        host, _, port = raw.partition(":")
        if not allow_port:
            raise InvalidHost("a port is not allowed here")
        _check_port(port)
        return host
    if _is_ipv6(raw):
        return "[" + raw + "]"
    raise InvalidHost("IPv6 literal must be in brackets")


def _check_port(port: str) -> None:
    """RFC 3986 s.3.2.3 allows an empty port; we do not: nothing sends it."""
    if not _PORT_RE.fullmatch(port):
        raise InvalidHost("port is not a number")
    if not 0 < int(port) <= 65535:
        raise InvalidHost("port out of range")


def _is_ipv6(text: str) -> bool:
    # A zone id ("fe80::1%eth0") names an interface of *this* machine; it has
    # no meaning in a name sent by a remote client, and "%" is refused anyway.
    if "%" in text or not text.isascii():
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _normalise(raw: str, *, allow_port: bool) -> str:
    if not isinstance(raw, str):
        raise InvalidHost("host is not text")
    if not raw:
        raise InvalidHost("empty host")
    if len(raw) > _MAX_RAW_LENGTH:
        raise InvalidHost("host too long")
    for ch in raw:
        if ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            raise InvalidHost("whitespace or control character in host")
        if ch in _FORBIDDEN:
            raise InvalidHost(f"character {ch!r} not allowed in host")
    host = _strip_port(raw, allow_port=allow_port)
    if host.startswith("["):
        return ipaddress.IPv6Address(host[1:-1]).compressed
    # One trailing dot is the DNS root (an absolute name, RFC 1034 s.3.1) and
    # names the same host; two would leave an empty label.
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise InvalidHost("empty host")
    if ".." in host or host.startswith("."):
        raise InvalidHost("empty label in host")
    if host.isascii():
        ascii_host = host.lower()
    else:
        try:
            ascii_host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise InvalidHost("host is not a valid internationalised name") from None
        # nameprep may map a code point to a dot or to nothing; recheck.
        if ascii_host.endswith("."):
            ascii_host = ascii_host[:-1]
    return _check_ascii_name(ascii_host)


def _check_ascii_name(host: str) -> str:
    if not host:
        raise InvalidHost("empty host")
    if len(host) > MAX_HOST_LENGTH:
        raise InvalidHost(f"host longer than {MAX_HOST_LENGTH} characters")
    labels = host.split(".")
    if _NUMERIC_LABEL_RE.fullmatch(labels[-1]):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise InvalidHost("numeric host that is not a dotted-quad IPv4 address") from None
    for label in labels:
        if not label:
            raise InvalidHost("empty label in host")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidHost(f"label longer than {MAX_LABEL_LENGTH} characters")
        if not _LABEL_RE.fullmatch(label):
            raise InvalidHost("invalid character in host")
    return host


def normalise_host(raw: str) -> str:
    """Return the canonical form of a host name, with any port removed.

    Accepts what arrives as SNI (RFC 6066 s.3), in a ``Host`` header or an
    absolute-form authority (RFC 9110 s.7.2, RFC 3986 s.3.2.2): ``name``,
    ``name:port``, ``1.2.3.4[:port]``, ``[v6][:port]``. The port is checked
    (digits, 1..65535) and dropped: routing is by name only, the listener
    already fixed the port.

    Raises:
        InvalidHost: with a short reason, for an empty name, whitespace or
            control characters, URL delimiters (``/ @ \\ ? #``), empty labels
            (``..``), a label over 63 or a name over 253 characters, a bad
            port, a malformed IP literal, or a name IDNA refuses.
    """
    return _normalise(raw, allow_port=True)


def normalise_pattern(raw: str) -> str:
    """Normalise a host pattern from the config: a name, ``*.name`` or ``*``.

    Like :func:`normalise_host`, but a port is refused (a pattern names a
    host, not an endpoint) and a single leading ``*.`` wildcard label is
    allowed (RFC 6125 s.6.4.3: the wildcard is the whole left-most label).
    ``*`` alone is returned as is: it is the catch-all of :class:`HostTable`.
    A wildcard over an IP address (``*.0.0.1``) is refused.
    """
    if raw == "*":
        return "*"
    if raw.startswith("*."):
        rest = _normalise(raw[2:], allow_port=False)
        if is_ip_literal(rest):
            raise InvalidHost("a wildcard cannot cover an IP address")
        return "*." + rest
    if "*" in raw:
        raise InvalidHost("'*' is only allowed as the whole left-most label")
    return _normalise(raw, allow_port=False)


def is_ip_literal(host: str) -> bool:
    """True if ``host`` is an IPv4 or IPv6 address rather than a DNS name.

    Meant for normalised hosts (IPv6 without brackets) but also accepts a
    bracketed IPv6 literal. Zone ids are not addresses a client can mean.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "%" in host or not host.isascii():
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostTable(Generic[T]):
    """Map normalised host names to values: exact names, ``*.`` wildcards, ``*``.

    Lookup order is exact name, then a wildcard for the parent name, then the
    catch-all ``*`` pattern (a default for any host, including no SNI at all
    if the caller chooses to look that up). Wildcards follow RFC 6125 s.6.4.3
    restricted to a whole left-most label: ``*.example.com`` matches
    ``a.example.com`` but neither ``example.com`` nor ``a.b.example.com``,
    and never an IP address.

    Each lookup is at most three dict probes, independent of the table size:
    the table is built once per config snapshot and consulted on every
    handshake and request.
    """

    __slots__ = ("_default", "_exact", "_has_default", "_wildcards")

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        """Build the table.

        Raises:
            ValueError: if a pattern is not already in normalised form (the
                config loader must have run :func:`normalise_pattern`), or
                appears twice: two routes for one name is a config error, not
                something to resolve by order.
        """
        self._exact: dict[str, T] = {}
        self._wildcards: dict[str, T] = {}
        self._default: T | None = None
        self._has_default = False
        for pattern, value in entries:
            try:
                canonical = normalise_pattern(pattern)
            except InvalidHost as exc:
                raise ValueError(f"invalid host pattern {pattern!r}: {exc}") from None
            if canonical != pattern:
                raise ValueError(f"host pattern {pattern!r} is not normalised ({canonical!r})")
            if pattern == "*":
                if self._has_default:
                    raise ValueError("duplicate host pattern '*'")
                self._default, self._has_default = value, True
                continue
            if pattern.startswith("*."):
                table, key = self._wildcards, pattern[2:]
            else:
                table, key = self._exact, pattern
            if key in table:
                raise ValueError(f"duplicate host pattern {pattern!r}")
            table[key] = value

    def lookup(self, host: str) -> T | None:
        """Return the value for a normalised host, or None if nothing matches."""
        if host in self._exact:
            return self._exact[host]
        _, dot, parent = host.partition(".")
        if dot and parent in self._wildcards and not is_ip_literal(host):
            return self._wildcards[parent]
        return self._default if self._has_default else None

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcards) + int(self._has_default)
