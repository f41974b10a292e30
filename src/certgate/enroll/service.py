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
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certgate.enroll import renew as renewal
from certgate.enroll.paths import relative
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


def response(status: int, content_type: bytes, body: bytes,
             extra: tuple[tuple[bytes, bytes], ...] = (), note: str | None = None
             ) -> EnrollResponse:
    """A response with the service's security headers."""
    return EnrollResponse(status, ((b"content-type", content_type), *SECURITY_HEADERS, *extra),
                          body, note)


def text_response(status: int, reason: str,
                  extra: tuple[tuple[bytes, bytes], ...] = ()) -> EnrollResponse:
    return response(status, b"text/plain; charset=utf-8", f"{reason}\n".encode(), extra,
                    note=reason)


@dataclass
class EnrollService:
    """The enrollment service of one runtime: the CA, the config, the limits."""

    ca: CertificateAuthority | None
    config: Config
    table: tuple[Entry, ...] = field(default_factory=lambda: ROUTES)

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
            try:
                return await entry.handler(self, request, match)
            except Refused as exc:
                return text_response(exc.status, exc.reason, exc.headers)
        if allowed:
            methods = ", ".join(sorted(allowed)).encode()
            return text_response(405, "method not allowed", ((b"allow", methods),))
        return text_response(404, "not found")


# -- handlers ---------------------------------------------------------------------


async def root_certificate(service: EnrollService, request: EnrollRequest,
                           match: re.Match[str]) -> EnrollResponse:
    """The root CA certificate (public), DER, for Android's "CA certificate"
    install and anyone who wants to check the fingerprint."""
    ca = service.require_ca()
    der = await service.blocking(root_der, ca)
    return response(200, b"application/x-x509-ca-cert", der,
                    ((b"content-disposition", b'attachment; filename="certgate-root-ca.crt"'),))


def root_der(ca: CertificateAuthority) -> bytes:
    """The active root certificate, DER (read in a thread: a file)."""
    cert = x509.load_pem_x509_certificate(ca.root_cert_path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


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


# Tokens are secrets.token_urlsafe(32): 43 characters of [A-Za-z0-9_-].
# The pattern accepts any such run so that a wrong token is answered 410
# (gone or never issued) by the store, not 404 by the router.
TOKEN = r"(?P<token>[A-Za-z0-9_-]{16,128})"

ROUTES: tuple[Entry, ...] = (
    Entry(frozenset({"GET", "HEAD"}), re.compile(r"/enroll/ca\.crt"), root_certificate),
    Entry(frozenset({"GET", "HEAD"}), re.compile(r"/enroll/ca\.mobileconfig"), not_yet),
    Entry(frozenset({"GET", "HEAD", "POST"}), re.compile(rf"/enroll/{TOKEN}"), not_yet),
    Entry(frozenset({"POST"}), re.compile(rf"/enroll/{TOKEN}/p12"), not_yet),
    Entry(frozenset({"POST"}), re.compile(rf"/enroll/{TOKEN}/mobileconfig"), not_yet),
    Entry(frozenset({"POST"}), re.compile(rf"/enroll/{TOKEN}/csr"), not_yet),
    # Reserved for the renewal endpoint (issue #13, built on this service).
    Entry(frozenset({"POST"}), re.compile(r"/renew"), renew),
)
