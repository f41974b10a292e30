"""Admit a request or refuse it, before any upstream is contacted.

Order matters and is the security argument of the proxy:

0. the HTTP version (1.0 or 1.1, else 505) and the header bytes: control
   characters in values, and a ``Connection`` header naming Host,
   Content-Length, Transfer-Encoding or one of certgate's own headers
   -> 400 + close (:func:`check_head`);
1. framing (smuggling) checks -> 400 + close;
2. header count -> 431;
3. the request target is parsed and its path normalised once
   (:func:`certgate.http.target.parse_target`); what the policy judges is
   exactly what the upstream receives;
4. the Host header and an absolute-form authority run through the same
   normaliser as SNI; either one resolving to a name of another handshake
   class than this connection's -> 421 (domain fronting);
5. only origin-form targets reach a route (absolute-form after the 421 check
   so the fronting case still answers 421);
6. route by longest path prefix, then the certificate refusal, then policy
   (a route with ``no_certificate: page`` answers a missing certificate with
   the 496 page instead of 403);
7. body limit from Content-Length -> 413 at once;
8. an upgrade is forwarded only for a checked WebSocket handshake
   (:mod:`certgate.http.upgrade`); any other is stripped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import h11

from certgate.config.schema import NoCertificate, Route
from certgate.errors import HTTPError
from certgate.hostnames import InvalidHost, normalise_host
from certgate.http import certpage
from certgate.http import headers as hdr
from certgate.http.target import BadTarget, parse_target
from certgate.http.upgrade import WebSocketUpgrade, requested_upgrade
from certgate.policy import CERTIFICATE_REQUIRED, Decision, decide, other_readings
from certgate.tls.identity import ClientIdentity
from certgate.tls.verify import Refusal

if TYPE_CHECKING:
    from certgate.config.schema import Config
    from certgate.proxy.info import ConnectionInfo
    from certgate.routing import RouteTable


class Snapshot(Protocol):
    """What admission reads from a runtime. ``certgate explain`` passes its own,
    built from the same config, so it judges with this very function."""

    @property
    def config(self) -> Config: ...

    @property
    def routes(self) -> RouteTable: ...

    def roles_for(self, identity: ClientIdentity) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    route: Route
    host: str
    path: str
    decision: Decision
    roles: tuple[str, ...]
    upstream_request: h11.Request
    has_body: bool
    upgrade: WebSocketUpgrade | None
    #: The request's Content-Length when it has one (None: chunked or none).
    body_length: int | None = None


def check_framing(raw: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(content length, chunked) of a request, refusing ambiguous framing.

    RFC 9112 s.6.3 lets a server pick Transfer-Encoding when both are sent,
    which is exactly the disagreement request smuggling exploits between a
    proxy and its upstream; certgate refuses instead of choosing.
    """
    lengths = [v for n, v in raw if n.lower() == b"content-length"]
    encodings = [v for n, v in raw if n.lower() == b"transfer-encoding"]
    if lengths and encodings:
        raise HTTPError(400, "both Content-Length and Transfer-Encoding sent", close=True)
    if encodings:
        tokens = [t.strip().lower() for v in encodings for t in v.split(b",")]
        if tokens != [b"chunked"]:
            raise HTTPError(400, "only Transfer-Encoding: chunked is accepted", close=True)
        return None, True
    values = {t.strip() for v in lengths for t in v.split(b",")}
    if len(values) > 1:
        raise HTTPError(400, "conflicting Content-Length values", close=True)
    if values:
        text = values.pop()
        if not text.isdigit():
            raise HTTPError(400, "invalid Content-Length", close=True)
        return int(text), False
    return None, False


def check_head(request: h11.Request, raw: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Refuse heads h11 accepts but certgate will not forward; return the
    ``Connection`` tokens.

    h11 is deliberately lenient: it reads any ``HTTP/d.d`` version and lets
    every byte but NUL, CR and LF through in a field value. An upstream that
    is stricter, or differently lenient, would read another request than
    the one judged here.
    """
    version = request.http_version
    if version not in (b"1.1", b"1.0"):
        # RFC 9110 s.15.6.6. HTTP/2 is not offered (ALPN says http/1.1), and a
        # request line claiming it, or HTTP/1.2, is not forwarded as 1.1.
        raise HTTPError(505, "only HTTP/1.1 and HTTP/1.0 are served", close=True)
    if version == b"1.0" and any(n.lower() == b"transfer-encoding" for n, _ in raw):
        # RFC 9112 s.6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request", close=True)
    bad = hdr.control_character_in(raw)
    if bad is not None:
        raise HTTPError(400, "control character in the value of header "
                             f"{bad.decode('ascii', 'replace')}", close=True)
    listed = hdr.connection_tokens(raw)
    token = hdr.unlistable_token(listed)
    if token is not None:
        raise HTTPError(400, f"Connection header names {token.decode('ascii', 'replace')}, "
                             "which is not a hop-by-hop header", close=True)
    return listed


def _host_of(authority: bytes, what: str) -> str:
    try:
        return normalise_host(authority.decode("ascii"))
    except (InvalidHost, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"invalid {what}: {exc}", close=True) from None


def admit(
    runtime: Snapshot,
    info: ConnectionInfo,
    identity: ClientIdentity | None,
    refusal: Refusal | None,
    request: h11.Request,
) -> Admitted:
    raw = list(request.headers.raw_items())
    limits = runtime.config.limits
    # h11's max_incomplete_event_size only bounds a head still arriving; a
    # complete head that came in one read is measured here (request line +
    # "name: value\r\n" per field).
    head_size = len(request.method) + len(request.target) + 11 + sum(
        len(n) + len(v) + 4 for n, v in raw)
    if head_size > limits.max_header_bytes:
        raise HTTPError(431, f"request head larger than {limits.max_header_bytes} bytes",
                        close=True)
    listed = check_head(request, raw)
    length, chunked = check_framing(raw)
    if len(raw) > runtime.config.limits.max_header_count:
        raise HTTPError(431, f"more than {runtime.config.limits.max_header_count} header fields",
                        close=True)
    hosts = [v for n, v in raw if n.lower() == b"host"]
    if len(hosts) > 1:
        raise HTTPError(400, "more than one Host header", close=True)
    try:
        target = parse_target(request.target, request.method)
    except BadTarget as exc:
        raise HTTPError(400, f"bad request target: {exc.reason}", close=True) from None
    names: list[str] = []
    if target.authority is not None:
        names.append(_host_of(target.authority.encode("ascii", "replace"),
                              "authority in request target"))
    if hosts:
        names.append(_host_of(hosts[0], "Host header"))
    if not names:
        raise HTTPError(400, "no Host header", close=True)
    host = names[0]
    for name in names:
        entry = runtime.routes.for_host(name)
        if entry is None:
            raise HTTPError(421, f"no route for host {name}", kind="misdirected")
        if entry.mode is not info.mode:
            sni = info.sni or "no SNI"
            raise HTTPError(421, f"host {name} is not served on a connection made for {sni}; "
                                 "open a new connection", kind="misdirected")
    if target.form != "origin":
        raise HTTPError(400, f"{target.form}-form request targets are not accepted", close=True)
    host_routes = runtime.routes.for_host(host)
    assert host_routes is not None
    route = host_routes.match(target.path)
    if route is None:
        raise HTTPError(404, f"no route for {host}{target.path}")
    for reading, fold in other_readings(target.path):
        if host_routes.match(reading, fold=fold) is not route:
            # A servlet container routes /admin;x/y as /admin/y, and Express
            # routes /ADMIN as /admin: judged by the route of the path as sent
            # (say the public "/"), either would reach the /admin route's
            # application unjudged. The policy checks path rules under every
            # reading; the route must be the same under every reading.
            raise HTTPError(400, "path parameters (;) or letter case change which route "
                                 "serves this path", close=True)
    if refusal is not None:
        raise HTTPError(403, refusal.reason, close=True, kind=refusal.label,
                        route=route.name)
    method = request.method.decode("ascii", "replace")
    roles = runtime.roles_for(identity) if identity is not None else ()
    decision = decide(route, target.path, method, identity, roles)
    if not decision.allowed:
        if identity is None and decision.code == CERTIFICATE_REQUIRED \
                and route.no_certificate is NoCertificate.PAGE:
            # The friendly refusal (http/certpage.py). close: a body the
            # client sends is never read, let alone forwarded.
            raise HTTPError(certpage.STATUS, decision.reason, close=True, kind="no_cert",
                            route=route.name)
        raise HTTPError(403, decision.reason, route=route.name,
                        kind="no_cert" if identity is None else "policy")
    if route.max_body is not None and length is not None and length > route.max_body:
        raise HTTPError(413, f"request body of {length} bytes exceeds this route's max_body "
                             f"({route.max_body})", close=True)

    has_body = chunked or bool(length)
    upgrade = requested_upgrade(request.method, request.http_version, raw, listed, has_body)
    out = [(n, v) for n, v in hdr.request_headers_for_upstream(
        raw, keep_forwarded=route.trust_forwarded, passed=route.pass_headers)
        if n.lower() != b"expect"]
    out += hdr.identity_headers(
        identity,
        verify="SUCCESS" if identity is not None else "NONE",
        roles=roles,
        forward_pem=route.forward_cert.value == "pem",
        forward_xfcc=route.forward_cert.value == "xfcc",
    )
    previous = raw if route.trust_forwarded else ()
    if route.trust_forwarded:
        out = [(n, v) for n, v in out if n.lower() != b"x-forwarded-for"]
    out += hdr.forwarded_headers(info.peer_ip, hosts[0].decode("latin-1") if hosts else host,
                                 previous)
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    if upgrade is not None:
        out += [(b"connection", b"upgrade"), (b"upgrade", upgrade.token)]
    # _parsed=True skips h11's per-header regex validation (11% of a proxied
    # request's CPU): every name and value here either came out of h11's own
    # parser for this request (and check_head), is a constant, or went
    # through escape_value, and the target is the normaliser's output
    # (unreserved characters and percent-escapes only). Framing checks
    # (Content-Length, Host) still run; check_head keeps them from failing,
    # and should one still fail, the client gets a 400, not a dropped
    # connection and a traceback.
    try:
        upstream_request = h11.Request(method=request.method, target=target.forward,
                                       headers=out, http_version=b"1.1", _parsed=True)
    except h11.LocalProtocolError:
        raise HTTPError(400, "request cannot be forwarded as HTTP/1.1", close=True) from None
    return Admitted(route, host, target.path, decision, tuple(roles), upstream_request,
                    has_body, upgrade, None if chunked else length)
