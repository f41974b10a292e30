"""Dispatch and authorisation for the built-in ``console`` upstream (issue #14).

Theory of operation
-------------------
A console route must require a client certificate in the handshake and
allow only role matchers (the config loader refuses anything else), so by
the time a request reaches :meth:`ConsoleService.handle`, the route's
policy has admitted it. The service checks again anyway (defence in
depth): a verified certificate must be present and carry one of the roles
the route allows; otherwise ``403``.

Then, for every POST (the only method that changes anything): the CSRF
token bound to this certificate and the request's origin
(:mod:`certgate.console.guard`). A refusal changes nothing, is answered
``403`` (``400`` for a malformed form) with one line, and is logged with
the admin's CN and the reason, never the token.

CA work runs in a thread (:meth:`ConsoleService.blocking`) with
:data:`certgate.ca.audit.ACTING_ADMIN` set, so each audit entry it causes
names the admin's CN, serial and fingerprint.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qs

from certgate.ca import audit
from certgate.console import guard
from certgate.enroll.paths import relative
from certgate.enroll.service import EnrollRequest, EnrollResponse, Refused, text_response

if TYPE_CHECKING:
    from certgate.ca import CertificateAuthority
    from certgate.tls.identity import ClientIdentity

__all__ = ["AdminRequest", "ConsoleService", "Entry", "routes"]

log = logging.getLogger("certgate.console")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """A console request whose certificate has passed the role check."""

    method: str
    path: str  # below the route's prefix: "/devices/phone"
    query: str  # the raw query string (never logged: certgate logs paths only)
    body: bytes
    admin: ClientIdentity
    base: str  # the route's prefix without a trailing slash ("" on "/")
    host_header: str  # as sent (HOST[:PORT]); only its port is used


Handler = Callable[["ConsoleService", AdminRequest, "re.Match[str]"], Awaitable[EnrollResponse]]


@dataclass(frozen=True, slots=True)
class Entry:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler


@dataclass
class ConsoleService:
    """The console of one runtime: the CA, the CSRF secret, the link base."""

    ca: CertificateAuthority
    secret: bytes
    #: HOST and /PREFIX of the first enroll route, for links made on the New
    #: device page (the port is the one the admin reached the console on: the
    #: same listeners serve both); None when no route serves enrollment.
    enroll_route: tuple[str, str] | None
    table: tuple[Entry, ...] = field(default_factory=lambda: _table())

    def enroll_url_base(self, request: AdminRequest) -> str | None:
        if self.enroll_route is None:
            return None
        host, prefix = self.enroll_route
        _, _, port = request.host_header.rpartition(":")
        authority = f"{host}:{port}" if port.isdigit() and port != "443" else host
        return f"https://{authority}{prefix.rstrip('/')}"

    def csrf_for(self, request: AdminRequest) -> str:
        return guard.csrf_token(self.secret, request.admin.fingerprint, time.time())

    async def blocking(self, request: AdminRequest, fn: Callable[..., T], *args: object,
                       **kwargs: object) -> T:
        """Run ``fn`` in a thread, as this admin (see the module docstring)."""
        admin = {"cn": request.admin.cn, "serial": request.admin.serial_hex,
                 "fingerprint": request.admin.fingerprint}

        def run() -> T:
            token = audit.ACTING_ADMIN.set(admin)
            try:
                return fn(*args, **kwargs)
            finally:
                audit.ACTING_ADMIN.reset(token)

        return await asyncio.get_running_loop().run_in_executor(None, run)

    async def handle(self, request: EnrollRequest, query: str, roles: tuple[str, ...],
                     allowed: frozenset[str]) -> EnrollResponse:
        """Answer one request; never raises for a client's mistake."""
        identity = request.identity
        if identity is None or not allowed.intersection(roles):
            # Cannot happen behind a console route's own policy; fail closed.
            return text_response(403, "the console needs a certificate with an admin role")
        path = relative(request.path, request.prefix)
        if path is None:
            return text_response(404, "not found")
        host_header = (request.header(b"host") or b"").decode("ascii", "replace")
        admin = AdminRequest(request.method, path, query, request.body, identity,
                             request.prefix.rstrip("/"), host_header)
        allowed_methods: set[str] = set()
        for entry in self.table:
            match = entry.pattern.fullmatch(path)
            if match is None:
                continue
            if request.method not in entry.methods:
                allowed_methods |= entry.methods
                continue
            if request.method == "POST":
                refusal = self._post_refusal(request, admin)
                if refusal is not None:
                    log.warning("console: refused POST %s by %s (serial %s): %s", path,
                                identity.cn, identity.serial_hex, refusal.reason)
                    return text_response(refusal.status, refusal.reason)
            try:
                return await entry.handler(self, admin, match)
            except Refused as exc:
                return text_response(exc.status, exc.reason, exc.headers)
        if allowed_methods:
            methods = ", ".join(sorted(allowed_methods)).encode()
            return text_response(405, "method not allowed", ((b"allow", methods),))
        return text_response(404, "not found")

    def _post_refusal(self, request: EnrollRequest, admin: AdminRequest) -> Refused | None:
        verdict = guard.check_origin(request.header(b"host"), request.header(b"origin"),
                                     request.header(b"sec-fetch-site"))
        if not verdict.ok:
            return Refused(403, f"cross-origin check failed: {verdict.reason}")
        try:
            sent = form_fields(admin.body).get("csrf")
        except Refused as exc:
            return exc
        verdict = guard.check_token(self.secret, admin.admin.fingerprint, sent, time.time())
        if not verdict.ok:
            return Refused(403, verdict.reason)
        return None


def form_fields(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (first value of each field)."""
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "malformed form") from None
    return {key: values[0] for key, values in fields.items() if values}


def _table() -> tuple[Entry, ...]:
    return routes()


@functools.cache
def routes() -> tuple[Entry, ...]:
    """The path table (built on first use: the handlers import this module)."""
    from certgate.console import handlers as h

    get = frozenset({"GET", "HEAD"})
    post = frozenset({"POST"})
    # Certificate names: check_name's alphabet (ca/layout.py), URL-quoted by
    # the pages; the router decodes nothing (the proxy normalised the path).
    name = r"(?P<name>[A-Za-z0-9_@+=,.-]{1,64})"
    return (
        Entry(get, re.compile(r"/"), h.overview),
        Entry(get, re.compile(r"/devices"), h.device_list),
        Entry(get, re.compile(r"/unknown"), h.unknown_list),
        Entry(get, re.compile(rf"/devices/{name}"), h.device_page),
        Entry(get, re.compile(rf"/devices/{name}/revoke"), h.revoke_form),
        Entry(post, re.compile(rf"/devices/{name}/revoke"), h.revoke),
        Entry(post, re.compile(rf"/devices/{name}/roles"), h.roles),
        Entry(get, re.compile(r"/new"), h.new_form),
        Entry(post, re.compile(r"/new"), h.new_device),
        Entry(post, re.compile(r"/enrollments/(?P<id>[0-9a-f]{8})/cancel"),
              h.cancel_enrollment),
        Entry(get, re.compile(r"/audit"), h.audit_log),
        Entry(get, re.compile(r"/ca\.crt"), h.root_certificate),
        Entry(get, re.compile(r"/crl\.pem"), h.crl),
        Entry(get, re.compile(r"/static/console\.css"), h.stylesheet),
    )
