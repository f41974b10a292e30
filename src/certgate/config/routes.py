"""The ``routes:`` list -> :class:`~certgate.config.schema.Route` values.

A route is where most of a config's meaning (and most of its mistakes)
lives: a host and path, an upstream, how hard to insist on a client
certificate, allow/deny matchers and path rules, timeouts, body and header
settings. This module turns each ``routes[i]`` node into a ``Route`` and
refuses the combinations that would read as a restriction but not act as
one: allow/deny under ``client_auth: off``, a certificate page on a route
that never asks for a certificate, an app sharing the console's host name
(its origin), settings the built-in ``enroll`` and ``console`` upstreams
cannot honour. It is split from :mod:`certgate.config.builder` (the rest of
the config) because it is half the rules on its own; both report through one
:class:`~certgate.config.yamlread.Reader`, so every problem is still
``FILE:LINE: key.path: what``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from certgate.config.diskchecks import existing_file
from certgate.config.schema import (
    CONSOLE,
    ENROLL,
    WHOAMI,
    ClientAuth,
    ForwardCert,
    NoCertificate,
    PathRule,
    Route,
    Timeouts,
    Upstream,
    UpstreamTLS,
)
from certgate.config.yamlread import Node, Reader
from certgate.hostnames import InvalidHost, normalise_host, normalise_pattern
from certgate.http import headers
from certgate.matchers import Kind as MatcherKind
from certgate.matchers import Matcher, MatcherError, parse_matcher

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 s.5.6.2 token

# An allow/deny list next to `off` would read as a restriction that is never
# applied: refuse it rather than leave a path open that looks closed.
_OFF_WITH_MATCHERS = ("has no effect under client_auth: off (the path is public and no "
                      "certificate is checked): remove it, or use optional or require")


class RouteBuilder:
    """Builds the routes, placing each problem on the reader it shares."""

    def __init__(self, reader: Reader) -> None:
        self.r = reader

    def routes(self, node: Node) -> list[Route]:
        routes: list[Route] = []
        items = self.r.sequence(node, "routes")
        if not items and isinstance(node, yaml.SequenceNode):
            self.r.problem(node, "routes", "at least one route is needed")
        placed: list[tuple[Route, Node, str]] = []
        for i, item in enumerate(items):
            route = self.route(item, f"routes[{i}]")
            if route is not None:
                routes.append(route)
                placed.append((route, item, f"routes[{i}]"))
        self.console_origins(placed)
        return routes

    def console_origins(self, placed: list[tuple[Route, Node, str]]) -> None:
        """The console's host name is its origin: a page an app serves on the
        same name (an upload, an XSS in it) could read the console's CSRF
        token and post as the admin. Only certgate's own services, which
        serve no script, may share the console's host."""
        consoles = {route.host for route, _, _ in placed if route.upstream.is_console}
        for route, node, where in placed:
            if route.host in consoles and not route.upstream.is_builtin:
                self.r.problem(node, f"{where}.host",
                               f"{route.host} serves the console: the console needs a host "
                               "name of its own (an app on the same name shares its origin "
                               "and could act as the admin); give this app another name")

    def route(self, node: Node, where: str) -> Route | None:
        r = self.r
        keys = {"host", "path", "upstream", "upstream_tls", "client_auth", "rules", "allow",
                "deny", "timeouts", "max_body", "forward_client_cert", "trust_forwarded",
                "pass_headers", "no_certificate"}
        m = r.mapping(node, where, keys, required=("host", "upstream"))
        if m is None or "host" not in m or "upstream" not in m:
            return None
        host = self.host_pattern(m["host"], f"{where}.host")
        upstream = self.upstream(m["upstream"], f"{where}.upstream",
                                 m.get("upstream_tls"), f"{where}.upstream_tls")
        path = "/"
        if "path" in m:
            text = r.string(m["path"], f"{where}.path")
            if text is None or not text.startswith("/"):
                r.problem(m["path"], f"{where}.path", "a path prefix must start with /")
            else:
                path = text
        values: dict[str, Any] = {}
        if "client_auth" in m and (
            mode := r.choice(m["client_auth"], f"{where}.client_auth", ClientAuth)
        ):
            values["client_auth"] = mode
        route_mode = values.get("client_auth", ClientAuth.REQUIRE)
        if "rules" in m:
            values["rules"] = tuple(
                rule for i, item in enumerate(r.sequence(m["rules"], f"{where}.rules"))
                if (rule := self.rule(item, f"{where}.rules[{i}]", route_mode)) is not None
            )
        for key in ("allow", "deny"):
            if key in m:
                values[key] = read_matchers(r, m[key], f"{where}.{key}")
                if route_mode is ClientAuth.OFF:
                    r.problem(m[key], f"{where}.{key}", _OFF_WITH_MATCHERS)
        if "timeouts" in m:
            values["timeouts"] = self.timeouts(m["timeouts"], f"{where}.timeouts")
        if "max_body" in m:
            values["max_body"] = r.size(m["max_body"], f"{where}.max_body", allow_unlimited=True)
        if "forward_client_cert" in m and (
            fwd := r.choice(m["forward_client_cert"], f"{where}.forward_client_cert", ForwardCert)
        ):
            values["forward_cert"] = fwd
        if "trust_forwarded" in m:
            values["trust_forwarded"] = bool(
                r.boolean(m["trust_forwarded"], f"{where}.trust_forwarded"))
        if "pass_headers" in m:
            values["pass_headers"] = self.pass_headers(m["pass_headers"], f"{where}.pass_headers")
        if "no_certificate" in m and (
            page := r.choice(m["no_certificate"], f"{where}.no_certificate", NoCertificate)
        ):
            values["no_certificate"] = page
            modes = {route_mode} | {rule.client_auth for rule in values.get("rules", ())
                                    if rule.client_auth is not None}
            if page is NoCertificate.PAGE and modes == {ClientAuth.OFF}:
                r.problem(m["no_certificate"], f"{where}.no_certificate",
                          "page has no effect: client_auth is off on this route and all its "
                          "rules, so no request is ever refused for want of a certificate")
        if upstream is not None and upstream.is_enroll:
            self.enroll_route(m, where, values)
        if upstream is not None and upstream.is_console:
            self.console_route(m, where, values)
        if host is None or upstream is None:
            return None
        return Route(host=host, upstream=upstream, path=path, **values)

    def enroll_route(self, m: dict[str, Node], where: str, values: dict[str, Any]) -> None:
        """The enrollment service must be reachable by a device that has no
        certificate yet: its route is ``optional`` (the handshake asks, so
        ``/renew`` sees a current certificate, but never insists) or ``off``,
        and takes no setting that could lock an anonymous phone out."""
        r = self.r
        mode = values.setdefault("client_auth", ClientAuth.OPTIONAL)
        if mode is ClientAuth.REQUIRE:
            r.problem(m["client_auth"], f"{where}.client_auth",
                      "the enroll upstream must be reachable without a client certificate: "
                      "use optional (the default for it) or off")
        for key in ("rules", "allow", "deny", "no_certificate", "forward_client_cert",
                    "pass_headers", "trust_forwarded", "max_body"):
            if key in m:
                r.problem(m[key], f"{where}.{key}",
                          f"the enroll upstream takes no {key}: certgate serves it itself, "
                          "to devices without a certificate")

    def console_route(self, m: dict[str, Node], where: str, values: dict[str, Any]) -> None:
        """The console changes the CA: its route must demand a client
        certificate in the handshake and allow only certificates with a role
        (issue #14), with nothing that could open it wider."""
        r = self.r
        if values.get("client_auth", ClientAuth.REQUIRE) is not ClientAuth.REQUIRE:
            r.problem(m["client_auth"], f"{where}.client_auth",
                      "the console upstream needs client_auth: require")
        allow = values.get("allow")
        if "allow" not in m:
            r.problem(m["upstream"], f"{where}.allow",
                      "the console upstream needs an allow list of roles, e.g. "
                      "allow: [role:admin]")
        elif allow is not None and (not allow or any(
                matcher.kind is not MatcherKind.ROLE for matcher in allow)):
            r.problem(m["allow"], f"{where}.allow",
                      "the console upstream allows roles only (role:NAME entries): a "
                      "certificate must carry a role the CA gave it")
        for key in ("rules", "no_certificate", "forward_client_cert", "pass_headers",
                    "trust_forwarded"):
            if key in m:
                r.problem(m[key], f"{where}.{key}",
                          f"the console upstream takes no {key}: certgate serves it itself")

    def pass_headers(self, node: Node, where: str) -> frozenset[bytes]:
        """Names of stripped gateway headers a route lets through from clients."""
        r = self.r
        out: set[bytes] = set()
        for i, item in enumerate(r.sequence(node, where, allow_scalar=True)):
            here = f"{where}[{i}]"
            text = r.string(item, here)
            if text is None:
                continue
            if not _TOKEN.match(text):
                r.problem(item, here, f"{text!r} is not a header name")
                continue
            name = headers.folded(text.encode("ascii"))
            if headers.is_own_header(name):
                r.problem(item, here, f"{text} is set by certgate itself (X-Client-*, "
                                      "X-Forwarded-*, XFCC) and never taken from a client")
            elif name in headers.HOP_BY_HOP or name in {b"host", b"content-length"}:
                r.problem(item, here, f"{text} is not an end-to-end header that can be passed")
            elif not headers.is_spoofable_header(name):
                r.problem(item, here, f"{text} is not a header certgate strips, so there is "
                                      "nothing to pass: remove it")
            else:
                out.add(name)
        return frozenset(out)

    def host_pattern(self, node: Node, where: str) -> str | None:
        text = self.r.string(node, where)
        if text is None:
            return None
        if text == "*":
            return "*"
        try:
            return normalise_pattern(text)
        except InvalidHost as exc:
            self.r.problem(node, where, f"invalid host {text!r}: {exc}")
            return None

    def upstream(self, node: Node, where: str, tls_node: Node | None,
                 tls_where: str) -> Upstream | None:
        r = self.r
        text = r.string(node, where)
        if text is None:
            return None
        if text in (WHOAMI, ENROLL, CONSOLE):
            if tls_node is not None:
                r.problem(tls_node, tls_where, f"the {text} upstream takes no TLS settings")
            return Upstream(text)
        match = re.match(r"^(https?)://([^/?#]+)/?$", text, re.IGNORECASE)
        if match is None:
            r.problem(node, where,
                      f"expected http://HOST:PORT, https://HOST:PORT, whoami, enroll or console, "
                      f"got {text!r}")
            return None
        scheme = match.group(1).lower()
        authority = match.group(2)
        if "@" in authority:
            r.problem(node, where, "credentials in the upstream URL are not supported")
            return None
        default_port = 443 if scheme == "https" else 80
        try:
            host = normalise_host(authority)
        except InvalidHost as exc:
            r.problem(node, where, f"invalid upstream host: {exc}")
            return None
        port = default_port
        host_part, sep, port_text = authority.rpartition(":")
        bracketed_ok = not host_part.startswith("[") or host_part.endswith("]")
        if sep and port_text.isdigit() and bracketed_ok:
            port = int(port_text)
        tls: UpstreamTLS | None = None
        if scheme == "https":
            tls = self.upstream_tls(tls_node, tls_where) if tls_node is not None else UpstreamTLS()
        elif tls_node is not None:
            r.problem(tls_node, tls_where, "upstream_tls needs an https:// upstream")
        return Upstream(scheme, host, port, tls)

    def upstream_tls(self, node: Node, where: str) -> UpstreamTLS:
        r = self.r
        m = r.mapping(node, where, {"ca", "cert", "key", "server_name", "verify"})
        if m is None:
            return UpstreamTLS()
        ca = existing_file(r, m["ca"], f"{where}.ca") if "ca" in m else None
        cert = existing_file(r, m["cert"], f"{where}.cert") if "cert" in m else None
        key = existing_file(r, m["key"], f"{where}.key") if "key" in m else None
        if (cert is None) != (key is None):
            r.problem(node, where, "cert and key go together (upstream mTLS needs both)")
        name = r.string(m["server_name"], f"{where}.server_name") if "server_name" in m else None
        verify = r.boolean(m["verify"], f"{where}.verify") if "verify" in m else True
        return UpstreamTLS(ca, cert, key, name, True if verify is None else verify)

    def timeouts(self, node: Node, where: str) -> Timeouts:
        r = self.r
        m = r.mapping(node, where, {"connect", "read", "pool_idle", "tunnel_idle",
                                    "body_min_rate", "body_rate_window"})
        if m is None:
            return Timeouts()
        values: dict[str, Any] = {
            key: value for key in m if key != "body_min_rate"
            and (value := r.duration(m[key], f"{where}.{key}")) is not None}
        if "body_min_rate" in m:
            rate = r.scalar(m["body_min_rate"], f"{where}.body_min_rate")
            if rate in (0, "0", "off", False):
                values["body_min_rate"] = 0
            elif (size := r.size(m["body_min_rate"], f"{where}.body_min_rate")) is not None:
                values["body_min_rate"] = size
        return Timeouts(**values)

    def rule(self, node: Node, where: str, route_mode: ClientAuth) -> PathRule | None:
        r = self.r
        m = r.mapping(node, where, {"path", "methods", "client_auth", "allow", "deny"},
                      required=("path",))
        if m is None or "path" not in m:
            return None
        pattern = r.string(m["path"], f"{where}.path")
        if pattern is None or not pattern.startswith("/"):
            r.problem(m["path"], f"{where}.path", "a path pattern must start with /")
            return None
        methods = None
        if "methods" in m:
            methods = frozenset(
                text.upper() for i, item in enumerate(
                    r.sequence(m["methods"], f"{where}.methods", allow_scalar=True))
                if (text := r.string(item, f"{where}.methods[{i}]")) is not None
            )
        mode = r.choice(m["client_auth"], f"{where}.client_auth", ClientAuth) \
            if "client_auth" in m else None
        allow = read_matchers(r, m["allow"], f"{where}.allow") if "allow" in m else None
        deny = read_matchers(r, m["deny"], f"{where}.deny") if "deny" in m else ()
        if (mode or route_mode) is ClientAuth.OFF:
            for key in ("allow", "deny"):
                if key in m:
                    r.problem(m[key], f"{where}.{key}", _OFF_WITH_MATCHERS)
        return PathRule(pattern, methods, mode, allow, deny)


def read_matchers(r: Reader, node: Node, where: str, *, allow_roles: bool = True
                  ) -> tuple[Matcher, ...]:
    """A matcher or a list of them; each problem is placed at ``where[i]``
    (or at ``where`` itself for a single matcher written without a list).

    Shared with :mod:`certgate.config.builder` (``client_auth.roles``), which
    passes ``allow_roles=False``: roles are what those rules hand out.
    """
    out: list[Matcher] = []
    single = isinstance(node, yaml.ScalarNode)
    for i, item in enumerate(r.sequence(node, where, allow_scalar=True)):
        here = where if single else f"{where}[{i}]"
        text = r.string(item, here)
        if text is None:
            continue
        try:
            out.append(parse_matcher(text, allow_roles=allow_roles))
        except MatcherError as exc:
            r.problem(item, here, str(exc))
    return tuple(out)
