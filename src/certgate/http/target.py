"""The one request-target parser and path normaliser.

Theory of operation
-------------------
A path-based policy is only as good as the agreement between the path it
judges and the path the upstream acts on. Proxies have been bypassed many
times by spellings that the proxy and the application read differently:
``/public/..%2fadmin``, ``/%2e%2e/admin``, ``//admin``, ``/admin;x/..``,
``/admin%00``. Certgate therefore does not *compare* a policy against one
spelling and *forward* another: :func:`parse_target` produces one canonical
path, the policy judges that string, and :attr:`RequestTarget.forward` is
exactly that string (plus the untouched query) on the upstream request line.

The canonical path is built in this order:

1. Every byte must be printable ASCII; ``#`` (a fragment, which no
   request-target form of RFC 9112 s.3.2 contains), a raw backslash (Windows/IIS and some
   frameworks treat it as ``/``) and NUL are refused.
2. Percent-escapes of unreserved characters (``ALPHA DIGIT - . _ ~``) are
   decoded and all other escapes get uppercase hex: the equivalences of RFC
   3986 s.6.2.2.1 and s.6.2.2.2. Escapes that would change the *structure*
   of the path when an upstream decodes them (``%2F`` slash, ``%5C``
   backslash) or that decode to a control character (``%00``..``%1F``,
   ``%7F``) are refused, as are invalid escapes. Printable characters that
   RFC 3986 does not allow raw in a path (``" < > [ ] ^ ` { | }``) are
   percent-encoded, which is how browsers send them anyway.
3. Dot segments are removed as in RFC 3986 s.5.2.4, *after* step 2, so
   ``%2e%2e`` is ``..``. A ``..`` that would climb above the root is refused
   rather than clamped: a client that sends it is probing, and a silent clamp
   would hide a path the application might resolve differently. A segment
   that is ``.`` or ``..`` followed by ``;parameters`` is refused too: Java
   servlet containers strip path parameters *before* resolving dots, so
   ``/public/..;/admin`` reaches ``/admin`` there. The same holds for an
   encoded ``%3B``: a framework that decodes the whole path before stripping
   parameters reads ``/public/..%3B/admin`` as ``/admin``.
4. Empty segments are merged (``//a///b`` is ``/a/b``): most routers collapse
   them, so a rule on ``/a/b`` must see the same path. A trailing slash is
   kept; ``/admin`` and ``/admin/`` may be different resources.

Applying the function to its own output changes nothing (it is idempotent),
so an upstream that normalises again sees no difference.

What it does not do: decode reserved escapes (``%3B`` stays distinct from
``;``), or protect an upstream that percent-decodes *twice* (``%252e``
reaches it as ``%2e`` after one decoding, which is what RFC 3986 says it is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from certgate.errors import HTTPError
from certgate.hostnames import InvalidHost, normalise_host

__all__ = ["BadTarget", "RequestTarget", "TargetForm", "normalise_path", "parse_target"]

TargetForm = Literal["origin", "absolute", "authority", "asterisk"]

# RFC 3986 s.2.3.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 s.3.3: pchar = unreserved / pct-encoded / sub-delims / ":" / "@",
# plus "/" between segments. These may appear raw in a path and are kept.
_PATH_RAW = _UNRESERVED | frozenset(b"!$&'()*+,;=:@/")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# A path made only of these, with no empty or dot segment, is already
# canonical: the common case skips the byte loop.
_CANONICAL_FAST = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*/?")
# Where a segment's name ends and its parameters begin, raw or encoded
# (escapes are uppercase by the time dot segments are removed).
_PARAMS = re.compile(r";|%3B")
_SCHEMES = {"http", "https"}
_PRINTABLE_MIN, _PRINTABLE_MAX = 0x21, 0x7E


class BadTarget(HTTPError, ValueError):
    """A request-target certgate will not forward; answered with 400.

    ``reason`` is one line, safe to put in a response body and a log: it
    names the rule that was broken and never echoes the target itself. It is
    an :class:`~certgate.errors.HTTPError` so the client protocol maps it like
    every other request error, and a ``ValueError`` because that is what it is.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(400, reason)


@dataclass(frozen=True, slots=True)
class RequestTarget:
    """A parsed, normalised request-target (RFC 9112 s.3.2).

    ``path`` is what the policy judges and what the upstream receives. It
    starts with ``/`` for origin- and absolute-form; for asterisk-form it is
    ``*`` and for authority-form (CONNECT, which the caller refuses) it is
    empty. ``query`` is the raw text after the first ``?``, untouched (query
    syntax belongs to the application), or None when there is no ``?``.
    ``authority`` is the raw ``host[:port]`` of an absolute-form or
    authority-form target, for the caller's Host checks, else None.
    """

    path: str
    query: str | None
    form: TargetForm
    authority: str | None

    @property
    def forward(self) -> bytes:
        """The request-target to put on the upstream request line.

        Absolute-form is forwarded in origin-form (RFC 9112 s.3.2.1): the
        upstream is an origin server, and Host carries the authority.
        """
        if self.form == "authority":
            return (self.authority or "").encode("ascii")
        if self.query is None:
            return self.path.encode("ascii")
        return f"{self.path}?{self.query}".encode("ascii")


def parse_target(raw: bytes, method: bytes) -> RequestTarget:
    """Parse and normalise the request-target of one request.

    Args:
        raw: the target exactly as on the request line (h11's ``target``).
        method: the request method; methods are case-sensitive (RFC 9110
            s.9.1), so only ``CONNECT`` and ``OPTIONS`` are special.

    Returns:
        The normalised target; see :class:`RequestTarget`.

    Raises:
        BadTarget: with a one-line reason, for anything this module refuses.
    """
    if not raw:
        raise BadTarget("empty request target")
    for byte in raw:
        if not _PRINTABLE_MIN <= byte <= _PRINTABLE_MAX:
            raise BadTarget("non-printable or non-ASCII byte in request target")
    text = raw.decode("ascii")
    if "#" in text:
        raise BadTarget("fragment in request target")

    if method == b"CONNECT":
        return _authority_form(text)
    if text == "*":
        if method != b"OPTIONS":
            raise BadTarget("'*' target is only allowed with OPTIONS")
        return RequestTarget(path="*", query=None, form="asterisk", authority=None)
    if text.startswith("/"):
        path, query = _split_query(text)
        return RequestTarget(normalise_path(path), query, "origin", None)
    return _absolute_form(text)


def _split_query(text: str) -> tuple[str, str | None]:
    path, sep, query = text.partition("?")
    return path, (query if sep else None)


def _absolute_form(text: str) -> RequestTarget:
    """RFC 9112 s.3.2.2; only the ``http`` and ``https`` schemes (RFC 9110 s.4.2)."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise BadTarget("request target is not origin-form or an http(s) absolute URI")
    end = len(rest)
    for delimiter in "/?":
        found = rest.find(delimiter)
        if 0 <= found < end:
            end = found
    authority, remainder = rest[:end], rest[end:]
    if not authority:
        # RFC 9110 s.4.2.1: an http URI with an empty host is invalid.
        raise BadTarget("absolute URI without a host")
    if "@" in authority:
        # RFC 9110 s.4.2.4: userinfo is deprecated, and a classic way to make
        # a URL look like it points somewhere else.
        raise BadTarget("userinfo in request target")
    _check_host(authority)
    path, query = _split_query(remainder)
    return RequestTarget(normalise_path(path or "/"), query, "absolute", authority)


def _authority_form(text: str) -> RequestTarget:
    """RFC 9112 s.3.2.3: CONNECT carries ``uri-host ":" port`` and nothing else."""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if not sep or not host or not port or (":" in host and not bracketed):
        raise BadTarget("CONNECT target must be host:port")
    _check_host(text)
    return RequestTarget(path="", query=None, form="authority", authority=text)


def _check_host(authority: str) -> None:
    try:
        normalise_host(authority)
    except InvalidHost as exc:
        raise BadTarget(f"invalid host in request target: {exc}") from None


def normalise_path(path: str) -> str:
    """Return the canonical form of an absolute path (no query).

    The steps, and why each is there, are in the module docstring.

    Raises:
        BadTarget: for a path that is not absolute, has an invalid or
            forbidden escape, a backslash, or climbs above the root.
    """
    if not path.startswith("/"):
        raise BadTarget("path must start with '/'")
    if _CANONICAL_FAST.fullmatch(path):
        return path
    return _remove_dot_segments(_normalise_escapes(path))


def _normalise_escapes(path: str) -> str:
    if not path.isascii():
        raise BadTarget("non-ASCII character in path")
    data = path.encode("ascii")
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte == 0x25:  # "%"
            digits = data[i + 1 : i + 3]
            if len(digits) != 2 or digits[0] not in _HEX or digits[1] not in _HEX:
                raise BadTarget("invalid percent-escape in path")
            value = int(digits, 16)
            if value in (0x2F, 0x5C):
                raise BadTarget("encoded slash or backslash in path")
            if value < 0x20 or value == 0x7F:
                raise BadTarget("encoded control character in path")
            out.append(chr(value) if value in _UNRESERVED else "%" + digits.decode().upper())
            i += 3
            continue
        if byte in _PATH_RAW:
            out.append(chr(byte))
        elif byte == 0x5C:
            raise BadTarget("backslash in path")
        elif _PRINTABLE_MIN <= byte <= _PRINTABLE_MAX:
            out.append(f"%{byte:02X}")
        else:
            raise BadTarget("non-printable byte in path")
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if not kept:
                raise BadTarget("path climbs above the root")
            kept.pop()
        elif segment and segment != ".":
            # "%3B" counts as ";": a framework that decodes the path before
            # stripping parameters reads "..%3B" as "..;" and then "..".
            name = _PARAMS.split(segment, 1)[0]
            if name in (".", ".."):
                raise BadTarget("dot segment with parameters in path")
            kept.append(segment)
    # "/a/", "/a/." and "/a/b/.." all name a directory: keep the slash.
    trailing = segments[-1] in ("", ".", "..")
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if trailing else "")
