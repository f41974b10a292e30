"""YAML -> :class:`~certgate.config.schema.Config`, strictly.

The loader walks PyYAML's node tree rather than the plain data so that every
problem can name the line it comes from. It never stops at the first problem:
a user fixing a config wants the whole list, each as
``FILE:LINE: key.path: what is wrong``. Unknown keys are errors, because a
typo such as ``clent_auth: require`` would otherwise silently leave a route
open. The loader only raises (:class:`~certgate.errors.ConfigError`); deciding
to exit is ``cli.py``'s job.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml

from certgate.config.schema import (
    BUILTIN,
    CONSOLE,
    ENROLL,
    WHOAMI,
    AccessLog,
    CertificateFiles,
    ClientAuth,
    ClientAuthSettings,
    Config,
    ForwardCert,
    Limits,
    Listen,
    LogFormat,
    Metrics,
    NoCertificate,
    PathRule,
    RoleRule,
    Route,
    StaleCRL,
    Timeouts,
    TLSSettings,
    Upstream,
    UpstreamTLS,
)
from certgate.errors import ConfigError
from certgate.hostnames import InvalidHost, normalise_host, normalise_pattern
from certgate.http import headers
from certgate.matchers import Kind as MatcherKind
from certgate.matchers import Matcher, MatcherError, check_role_name, parse_matcher
from certgate.tls.contexts import TLSSetupError, read_server_certificate

T = TypeVar("T")
Node = yaml.Node

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 s.5.6.2 token
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class _Reader:
    """Collects problems while converting nodes; methods return None on error."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []
        self._constructor = yaml.SafeLoader("")

    def problem(self, node: Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.source}:{line}: {path}: {message}")

    def scalar(self, node: Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, path, "expected a single value")
            return None
        return self._constructor.construct_object(node, deep=True)

    def mapping(
        self, node: Node, path: str, allowed: set[str], required: tuple[str, ...] = ()
    ) -> dict[str, Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, "expected a mapping of keys")
            return None
        found: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path)
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                self.problem(key_node, where, "keys must be strings")
            elif key in found:
                self.problem(key_node, where, "duplicate key")
            elif key not in allowed:
                hint = _closest(key, allowed)
                extra = f" (did you mean '{hint}'?)" if hint else ""
                self.problem(key_node, where, f"unknown key{extra}")
            else:
                found[key] = value_node
        for key in required:
            if key not in found:
                self.problem(node, f"{path}.{key}" if path else key, "required key is missing")
        return found

    def sequence(self, node: Node, path: str, *, allow_scalar: bool = False) -> list[Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if allow_scalar and isinstance(node, yaml.ScalarNode):
            return [node]
        self.problem(node, path, "expected a list")
        return []

    def string(self, node: Node, path: str) -> str | None:
        value = self.scalar(node, path)
        if value is None:
            if isinstance(node, yaml.ScalarNode):
                self.problem(node, path, "expected a string, got nothing")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem(node, path, "expected a string")
            return None
        return str(value)

    def boolean(self, node: Node, path: str) -> bool | None:
        value = self.scalar(node, path)
        if not isinstance(value, bool):
            self.problem(node, path, "expected true or false")
            return None
        return value

    def integer(self, node: Node, path: str, low: int, high: int) -> int | None:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(node, path, "expected a whole number")
            return None
        if not low <= value <= high:
            self.problem(node, path, f"must be between {low} and {high}")
            return None
        return value

    def duration(self, node: Node, path: str) -> float | None:
        value = self.scalar(node, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            match = _DURATION.match(str(value)) if isinstance(value, str) else None
            if match is None:
                self.problem(node, path, "expected a duration such as 30, 30s, 5m, 2h or 500ms")
                return None
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if seconds <= 0:
            self.problem(node, path, "must be greater than zero")
            return None
        return seconds

    def size(self, node: Node, path: str, *, allow_unlimited: bool = False) -> int | None:
        value = self.scalar(node, path)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if isinstance(value, str):
            if allow_unlimited and value.strip().lower() in {"unlimited", "none", "0"}:
                return None
            match = _SIZE.match(value)
            if match is not None:
                unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
                amount = int(match.group(1)) * _SIZE_UNITS[unit]
                if amount > 0:
                    return amount
        allowed = " or 'unlimited'" if allow_unlimited else ""
        self.problem(node, path, f"expected a size such as 1048576, 512K, 10M or 2G{allowed}")
        return None

    def choice(self, node: Node, path: str, enum_type: type[T]) -> T | None:
        value = self.scalar(node, path)
        options = [member.value for member in enum_type]  # type: ignore[attr-defined]
        if value is False and "off" in options:
            value = "off"  # YAML 1.1 reads a bare `off` as false
        for member in enum_type:  # type: ignore[attr-defined]
            if member.value == value:
                return member  # type: ignore[no-any-return]
        self.problem(node, path, f"must be one of: {', '.join(options)}")
        return None

    def path(self, node: Node, where: str) -> Path | None:
        text = self.string(node, where)
        if text is None:
            return None
        expanded = Path(os.path.expanduser(text))
        return expanded if expanded.is_absolute() else self.base_dir / expanded

    def existing_file(self, node: Node, where: str) -> Path | None:
        """A path that must name a readable file now (checked at load time)."""
        path = self.path(node, where)
        if path is None:
            return None
        if not path.is_file():
            self.problem(node, where, f"file not found: {path}")
            return None
        if not os.access(path, os.R_OK):
            self.problem(node, where, f"file not readable: {path}")
            return None
        return path

    def listen(self, node: Node, where: str) -> Listen | None:
        text = self.string(node, where)
        if text is None:
            return None
        listen = parse_listen(text)
        if listen is None:
            self.problem(node, where, f"expected ADDRESS:PORT such as 0.0.0.0:8443, got {text!r}")
        return listen


def _closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return matches[0] if matches else None


def parse_listen(text: str) -> Listen | None:
    """Parse ``host:port`` or ``[v6]:port``; None when malformed."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        return None
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not 0 <= port < 65536 or not host:
        return None
    return Listen(host, port)


class _ConfigBuilder:
    def __init__(self, reader: _Reader) -> None:
        self.r = reader

    def build(self, root: Node) -> Config | None:
        r = self.r
        top = r.mapping(
            root,
            "",
            {"state_dir", "listen", "workers", "metrics", "tls", "client_auth", "routes",
             "limits", "access_log"},
            required=("routes",),
        )
        if top is None:
            return None
        state_dir = r.path(top["state_dir"], "state_dir") if "state_dir" in top else None
        listens: list[Listen] = []
        if "listen" in top:
            for i, item in enumerate(r.sequence(top["listen"], "listen", allow_scalar=True)):
                parsed = r.listen(item, f"listen[{i}]")
                if parsed is not None:
                    listens.append(parsed)
        else:
            listens.append(Listen("0.0.0.0", 8443))
        workers: int | None = 1
        if "workers" in top:
            node = top["workers"]
            if r.scalar(node, "workers") == "auto":
                workers = None
            else:
                workers = r.integer(node, "workers", 1, 256) or 1
        routes = self.routes(top["routes"]) if "routes" in top else []
        config = Config(
            source=r.source,
            state_dir=state_dir or (r.base_dir / "certgate-data"),
            listen=tuple(listens),
            routes=tuple(routes),
            workers=workers,
            tls=self.tls(top["tls"]) if "tls" in top else TLSSettings(),
            client_auth=self.client_auth(top["client_auth"])
            if "client_auth" in top
            else ClientAuthSettings(),
            limits=self.limits(top["limits"]) if "limits" in top else Limits(),
            access_log=self.access_log(top["access_log"]) if "access_log" in top else AccessLog(),
            metrics=self.metrics(top["metrics"]) if "metrics" in top else Metrics(),
        )
        self.cross_checks(root, top, config)
        return config

    def tls(self, node: Node) -> TLSSettings:
        r = self.r
        m = r.mapping(node, "tls", {"certificates", "min_version", "session_tickets",
                                    "verify_depth"})
        if m is None:
            return TLSSettings()
        certs: list[CertificateFiles] = []
        for i, item in enumerate(r.sequence(m["certificates"], "tls.certificates")
                                 if "certificates" in m else []):
            where = f"tls.certificates[{i}]"
            entry = r.mapping(item, where, {"cert", "key"}, required=("cert", "key"))
            if entry and "cert" in entry and "key" in entry:
                cert = r.existing_file(entry["cert"], f"{where}.cert")
                key = r.existing_file(entry["key"], f"{where}.key")
                if cert is not None and key is not None:
                    files = CertificateFiles(cert, key)
                    try:
                        read_server_certificate(files)
                    except TLSSetupError as exc:
                        r.problem(item, where, str(exc))
                    else:
                        certs.append(files)
        min_version = "1.2"
        if "min_version" in m:
            value = r.string(m["min_version"], "tls.min_version")
            if value not in {"1.2", "1.3"}:
                r.problem(m["min_version"], "tls.min_version", "must be \"1.2\" or \"1.3\"")
            else:
                min_version = value
        tickets = r.boolean(m["session_tickets"], "tls.session_tickets") \
            if "session_tickets" in m else None
        depth = r.integer(m["verify_depth"], "tls.verify_depth", 0, 16) \
            if "verify_depth" in m else None
        return TLSSettings(tuple(certs), min_version, bool(tickets), depth)

    def client_auth(self, node: Node) -> ClientAuthSettings:
        r = self.r
        m = r.mapping(node, "client_auth", {"trusted_cas", "crls", "stale_crl", "roles"})
        if m is None:
            return ClientAuthSettings()

        def source(item: Node, where: str) -> str | None:
            text = r.string(item, where)
            if text == BUILTIN:
                return BUILTIN
            resolved = r.existing_file(item, where) if text is not None else None
            return str(resolved) if resolved is not None else None

        def sources(key: str) -> list[str]:
            items = r.sequence(m[key], f"client_auth.{key}", allow_scalar=True)
            return [found for i, item in enumerate(items)
                    if (found := source(item, f"client_auth.{key}[{i}]")) is not None]

        trusted: list[str] = []
        crls = sources("crls") if "crls" in m else []
        no_crl: list[str] = []
        if "trusted_cas" in m:
            items = r.sequence(m["trusted_cas"], "client_auth.trusted_cas", allow_scalar=True)
            for i, item in enumerate(items):
                where = f"client_auth.trusted_cas[{i}]"
                if not isinstance(item, yaml.MappingNode):
                    if (found := source(item, where)) is not None:
                        trusted.append(found)
                    continue
                # {file: CA, crl: CRL-FILE | builtin | none}: the CA's CRL
                # beside it, or an explicit "no CRL" (silences the warning).
                entry = r.mapping(item, where, {"file", "crl"}, required=("file",))
                if entry is None or "file" not in entry:
                    continue
                ca = source(entry["file"], f"{where}.file")
                if ca is None:
                    continue
                trusted.append(ca)
                if "crl" not in entry:
                    continue
                value = r.scalar(entry["crl"], f"{where}.crl")
                if value is None and not isinstance(entry["crl"], yaml.ScalarNode):
                    continue  # not a single value: reported
                if value == "none":
                    if ca == BUILTIN:
                        r.problem(entry["crl"], f"{where}.crl",
                                  "the built-in CA's CRL is always checked; crl: none is "
                                  "only for other CAs")
                    else:
                        no_crl.append(ca)
                elif (crl := source(entry["crl"], f"{where}.crl")) is not None:
                    crls.append(crl)
            if not trusted:
                r.problem(m["trusted_cas"], "client_auth.trusted_cas",
                          "must name at least one CA")
        else:
            trusted.append(BUILTIN)
        stale = r.choice(m["stale_crl"], "client_auth.stale_crl", StaleCRL) \
            if "stale_crl" in m else None
        roles = self.role_rules(m["roles"], "client_auth.roles") if "roles" in m else ()
        return ClientAuthSettings(tuple(dict.fromkeys(trusted)), tuple(dict.fromkeys(crls)),
                                  stale or StaleCRL.REJECT, roles,
                                  tuple(dict.fromkeys(no_crl)))

    def role_rules(self, node: Node, where: str) -> tuple[RoleRule, ...]:
        """``client_auth.roles``: a list of ``{match: MATCHER | [MATCHER...], roles: [...]}``."""
        r = self.r
        out: list[RoleRule] = []
        for i, item in enumerate(r.sequence(node, where)):
            here = f"{where}[{i}]"
            m = r.mapping(item, here, {"match", "roles"}, required=("match", "roles"))
            if m is None or "match" not in m or "roles" not in m:
                continue
            before = len(r.problems)
            match = self.matchers(m["match"], f"{here}.match", allow_roles=False)
            if not match and len(r.problems) == before:
                r.problem(m["match"], f"{here}.match", "needs at least one matcher")
            roles: list[str] = []
            for j, role_node in enumerate(r.sequence(m["roles"], f"{here}.roles",
                                                     allow_scalar=True)):
                name = r.string(role_node, f"{here}.roles[{j}]")
                if name is None:
                    continue
                try:
                    roles.append(check_role_name(name))
                except MatcherError as exc:
                    r.problem(role_node, f"{here}.roles[{j}]", str(exc))
            if not roles and len(r.problems) == before:
                r.problem(m["roles"], f"{here}.roles", "needs at least one role")
            if match and roles:
                out.append(RoleRule(match, tuple(dict.fromkeys(roles))))
        return tuple(out)

    def limits(self, node: Node) -> Limits:
        r = self.r
        names = {"header_timeout", "keepalive_timeout", "max_header_bytes", "max_header_count",
                 "shutdown_grace", "handshake_timeout"}
        m = r.mapping(node, "limits", names)
        if m is None:
            return Limits()
        values: dict[str, Any] = {}
        for key in ("header_timeout", "keepalive_timeout", "shutdown_grace", "handshake_timeout"):
            if key in m and (value := r.duration(m[key], f"limits.{key}")) is not None:
                values[key] = value
        if "max_header_bytes" in m and (
            size := r.size(m["max_header_bytes"], "limits.max_header_bytes")
        ):
            values["max_header_bytes"] = size
        if "max_header_count" in m and (
            count := r.integer(m["max_header_count"], "limits.max_header_count", 1, 10_000)
        ):
            values["max_header_count"] = count
        return Limits(**values)

    def access_log(self, node: Node) -> AccessLog:
        r = self.r
        m = r.mapping(node, "access_log", {"format", "path"})
        if m is None:
            return AccessLog()
        fmt = r.choice(m["format"], "access_log.format", LogFormat) if "format" in m else None
        where = r.string(m["path"], "access_log.path") if "path" in m else None
        if where not in (None, "-", "off"):
            resolved = r.path(m["path"], "access_log.path")
            where = str(resolved) if resolved else None
        return AccessLog(fmt or LogFormat.JSON, where or "-")

    def metrics(self, node: Node) -> Metrics:
        r = self.r
        m = r.mapping(node, "metrics", {"listen"})
        if m is None or "listen" not in m:
            return Metrics()
        if r.scalar(m["listen"], "metrics.listen") in (False, "off"):
            return Metrics(None)
        return Metrics(r.listen(m["listen"], "metrics.listen"))

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
                values[key] = self.matchers(m[key], f"{where}.{key}")
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
        ca = r.existing_file(m["ca"], f"{where}.ca") if "ca" in m else None
        cert = r.existing_file(m["cert"], f"{where}.cert") if "cert" in m else None
        key = r.existing_file(m["key"], f"{where}.key") if "key" in m else None
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
        allow = self.matchers(m["allow"], f"{where}.allow") if "allow" in m else None
        deny = self.matchers(m["deny"], f"{where}.deny") if "deny" in m else ()
        if (mode or route_mode) is ClientAuth.OFF:
            for key in ("allow", "deny"):
                if key in m:
                    r.problem(m[key], f"{where}.{key}", _OFF_WITH_MATCHERS)
        return PathRule(pattern, methods, mode, allow, deny)

    def matchers(self, node: Node, where: str, *, allow_roles: bool = True
                 ) -> tuple[Matcher, ...]:
        """A matcher or a list of them; each problem is placed at ``where[i]``
        (or at ``where`` itself for a single matcher written without a list)."""
        out: list[Matcher] = []
        single = isinstance(node, yaml.ScalarNode)
        for i, item in enumerate(self.r.sequence(node, where, allow_scalar=True)):
            here = where if single else f"{where}[{i}]"
            text = self.r.string(item, here)
            if text is None:
                continue
            try:
                out.append(parse_matcher(text, allow_roles=allow_roles))
            except MatcherError as exc:
                self.r.problem(item, here, str(exc))
        return tuple(out)

    def cross_checks(self, root: Node, top: dict[str, Node], config: Config) -> None:
        seen: dict[tuple[str, str], int] = {}
        route_nodes = top["routes"].value if isinstance(top.get("routes"), yaml.SequenceNode) \
            else []
        for i, route in enumerate(config.routes):
            key = (route.host, route.path)
            if key in seen:
                node = route_nodes[i] if i < len(route_nodes) else root
                self.r.problem(node, f"routes[{i}]",
                               f"same host and path as routes[{seen[key]}]")
            seen[key] = i
        if config.workers != 1 and any(listen.port == 0 for listen in config.listen):
            # SO_REUSEPORT shares a port only when every worker binds the same
            # one; with port 0 each worker would get its own random port.
            self.r.problem(top.get("listen", root), "listen",
                           "port 0 (any free port) needs workers: 1; with several workers "
                           "each would listen on a different port")
        needs_ca = any(ClientAuth.OFF not in r.modes() or len(r.modes()) > 1
                       for r in config.routes)
        if needs_ca and not config.client_auth.trusted_cas:
            self.r.problem(root, "client_auth.trusted_cas",
                           "routes ask for client certificates but no CA is trusted")


# An allow/deny list next to `off` would read as a restriction that is never
# applied: refuse it rather than leave a path open that looks closed.
_OFF_WITH_MATCHERS = ("has no effect under client_auth: off (the path is public and no "
                      "certificate is checked): remove it, or use optional or require")


def load_config_text(text: str, source: str, base_dir: Path | None = None) -> Config:
    """Parse and validate config text; raises ConfigError listing every problem."""
    base = base_dir if base_dir is not None else Path(source).resolve().parent
    reader = _Reader(source, base)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{source}:{line}: (yaml): {reason}"]) from exc
    if root is None:
        raise ConfigError([f"{source}:1: (file): the file is empty"])
    config = _ConfigBuilder(reader).build(root)
    if reader.problems or config is None:
        raise ConfigError(reader.problems or [f"{source}:1: (file): not a valid config"])
    return config


def load_config(path: Path) -> Config:
    """Read and validate a config file (structure only; see ``check`` for files)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}:1: (file): cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}:1: (file): not UTF-8 text"]) from exc
    return load_config_text(text, str(path))


def state_dir_from_config(path: Path) -> Path:
    """The state directory a config file names (for ``certgate ca -c FILE``)."""
    return load_config(path).state_dir


__all__ = ["load_config", "load_config_text", "parse_listen", "state_dir_from_config"]

