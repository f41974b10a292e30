"""Dispatch for the built-in ``enroll`` upstream: a small path -> handler table.

The proxy (:meth:`certgate.proxy.client.ClientConnection._enroll`) reads the
request body (at most :data:`MAX_BODY` bytes), builds an
:class:`EnrollRequest` and awaits :meth:`EnrollService.handle`; it writes
the :class:`EnrollResponse` back and logs it with the token redacted
(:func:`certgate.enroll.paths.redact`).

Handlers are coroutines ``handler(service, request, match)``; ``match`` is
the table pattern's match against the path below the route's prefix. They
must never block the event loop: SQLite, key generation and signing go
through :meth:`EnrollService.blocking` (a thread). A handler refuses with
:class:`Refused` (status + one-line reason, never a secret in it).
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from certgate.enroll import renew as renewal
from certgate.enroll.paths import relative
from certgate.enroll.ratelimit import RateLimiter
from certgate.errors import HTTPError

if TYPE_CHECKING:
    from certgate.ca import CertificateAuthority
    from certgate.config.schema import Config
    from certgate.tls.identity import ClientIdentity

T = TypeVar("T")

# A CSR is about 1 KB (P-256) to 2 KB (RSA-4096) of PEM; a PIN form is a few
# dozen bytes. 64 KiB leaves room for any sane request and keeps an
# anonymous client from making a worker buffer more.
MAX_BODY = 64 * 1024

# Strict headers for everything the service answers: nothing is cached
# (pages carry passwords, downloads carry keys), nothing sniffed, framed or
# referred (the token is in the URL).
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)


@dataclass(frozen=True, slots=True)
class EnrollRequest:
    """One request to the enrollment service, as the proxy read it."""

    method: str  # upper case
    path: str  # below the route's prefix, normalised: "/enroll/TOKEN/csr"
    headers: tuple[tuple[bytes, bytes], ...]  # as received; names as sent
    body: bytes  # at most MAX_BODY bytes
    identity: ClientIdentity | None  # the connection's verified certificate, if any
    peer_ip: str
    host: str  # the normalised Host the request was routed by
    prefix: str  # the route's path prefix ("/" or "/x")

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True, slots=True)
class EnrollResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    #: The result for the access log's ``reason`` field (no secrets).
    note: str | None = None


class Refused(Exception):
    """A handler's refusal: answered as ``status`` with the one-line ``reason``."""

    def __init__(self, status: int, reason: str,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


Handler = Callable[["EnrollService", EnrollRequest, "re.Match[str]"], Awaitable[EnrollResponse]]


@dataclass(frozen=True, slots=True)
class Entry:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler
    #: Counted against the per-IP rate limit (see certgate.enroll.ratelimit).
    limited: bool = True


def response(status: int, content_type: bytes, body: bytes,
             extra: tuple[tuple[bytes, bytes], ...] = (), note: str | None = None
             ) -> EnrollResponse:
    """A response with the service's security headers (``extra`` replaces one
    of the same name, e.g. a page's own Content-Security-Policy)."""
    names = {name for name, _ in extra}
    base = tuple(header for header in SECURITY_HEADERS if header[0] not in names)
    return EnrollResponse(status, ((b"content-type", content_type), *base, *extra), body, note)


def text_response(status: int, reason: str,
                  extra: tuple[tuple[bytes, bytes], ...] = ()) -> EnrollResponse:
    return response(status, b"text/plain; charset=utf-8", f"{reason}\n".encode(), extra,
                    note=reason)


@dataclass
class EnrollService:
    """The enrollment service of one runtime: the CA, the config, the limits."""

    ca: CertificateAuthority | None
    config: Config
    #: Whether some server certificate certgate serves comes from the
    #: built-in CA: then devices must also trust its root (the page says so,
    #: the .mobileconfig carries it).
    builtin_server: bool = True
    table: tuple[Entry, ...] = field(default_factory=lambda: _table())
    limiter: RateLimiter = field(default_factory=RateLimiter)

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` in a thread: SQLite, key generation and signing
        must never stall the event loop other connections run on."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args))

    def require_ca(self) -> CertificateAuthority:
        if self.ca is None:
            raise Refused(503, "the built-in CA is not available")
        return self.ca

    async def handle(self, request: EnrollRequest) -> EnrollResponse:
        """Answer one request; never raises for a client's mistake."""
        path = relative(request.path, request.prefix)
        if path is None:
            return text_response(404, "not found")
        allowed: set[str] = set()
        for entry in self.table:
            match = entry.pattern.fullmatch(path)
            if match is None:
                continue
            if request.method not in entry.methods:
                allowed |= entry.methods
                continue
            if entry.limited:
                wait = self.limiter.allow(request.peer_ip, time.monotonic())
                if wait:
                    return text_response(429, "too many requests; try again in a minute",
                                         ((b"retry-after", str(math.ceil(wait)).encode()),))
            try:
                return await entry.handler(self, request, match)
            except Refused as exc:
                return text_response(exc.status, exc.reason, exc.headers)
        if allowed:
            methods = ", ".join(sorted(allowed)).encode()
            return text_response(405, "method not allowed", ((b"allow", methods),))
        return text_response(404, "not found")


# -- the table -------------------------------------------------------------------


async def renew(service: EnrollService, request: EnrollRequest,
                match: re.Match[str]) -> EnrollResponse:
    """POST /renew: the successor of the connection's certificate
    (:mod:`certgate.enroll.renew`)."""
    ca = service.require_ca()
    try:
        der = renewal.presented(request.identity)
        csr = renewal.parse_csr(request.header(b"content-type"), request.body)
        chain, note = await service.blocking(renewal.renew, ca, der, csr, request.peer_ip)
    except HTTPError as exc:
        raise Refused(exc.status, exc.reason) from None
    return response(200, renewal.CHAIN_TYPE, chain, note=note)


async def not_yet(service: EnrollService, request: EnrollRequest,
                  match: re.Match[str]) -> EnrollResponse:
    raise Refused(501, "not implemented yet")


def _table() -> tuple[Entry, ...]:
    return routes()


@functools.cache
def routes() -> tuple[Entry, ...]:
    """The path table (built on first use: the handlers import this module)."""
    from certgate.enroll import handlers as h

    # Tokens are secrets.token_urlsafe(32): 43 characters of [A-Za-z0-9_-].
    # The pattern takes any such run so that a wrong token is answered 410
    # (gone or never issued) by the store, not 404 by the router.
    token = r"(?P<token>[A-Za-z0-9_-]{16,128})"
    get = frozenset({"GET", "HEAD"})
    post = frozenset({"POST"})
    return (
        Entry(get, re.compile(r"/enroll/ca\.crt"), h.root_certificate, limited=False),
        Entry(get, re.compile(r"/enroll/ca\.mobileconfig"), h.root_profile, limited=False),
        Entry(get | post, re.compile(rf"/enroll/{token}"), h.page),
        Entry(post, re.compile(rf"/enroll/{token}/p12"), h.download_p12),
        Entry(post, re.compile(rf"/enroll/{token}/mobileconfig"), h.download_mobileconfig),
        Entry(post, re.compile(rf"/enroll/{token}/csr"), h.csr),
        # Renewal, authenticated by the connection's certificate (enroll/renew.py).
        Entry(post, re.compile(r"/renew"), renew),
    )

