"""The YAML tree -> :class:`~certgate.config.schema.Config`: sections and cross-checks.

This is the part of the loader that knows what a certgate config says: the
top-level keys and their defaults, ``tls``, ``client_auth`` (trusted CAs,
their CRLs, role rules), ``limits``, ``access_log``, ``metrics``, and the
checks that need more than one section at once (two routes on the same host
and path, port 0 with several workers, routes that ask for certificates with
no CA trusted). The ``routes:`` list, half the rules on its own, is
:mod:`certgate.config.routes`. Values are read through a
:class:`~certgate.config.yamlread.Reader`, so every problem is collected and
placed, never raised; files the config names are checked by
:mod:`certgate.config.diskchecks`.
"""

from __future__ import annotations

from typing import Any

import yaml

from certgate.config.diskchecks import existing_file, server_certificate
from certgate.config.routes import RouteBuilder, read_matchers
from certgate.config.schema import (
    BUILTIN,
    AccessLog,
    CertificateFiles,
    ClientAuth,
    ClientAuthSettings,
    Config,
    Limits,
    Listen,
    LogFormat,
    Metrics,
    RoleRule,
    StaleCRL,
    TLSSettings,
)
from certgate.config.yamlread import Node, Reader
from certgate.matchers import MatcherError, check_role_name


class ConfigBuilder:
    """Builds a :class:`Config` from the root node; None when the root is unusable."""

    def __init__(self, reader: Reader) -> None:
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
                parsed = self.listen(item, f"listen[{i}]")
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
        routes = RouteBuilder(r).routes(top["routes"]) if "routes" in top else []
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
                files = server_certificate(r, item, where, entry)
                if files is not None:
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
            resolved = existing_file(r, item, where) if text is not None else None
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
            match = read_matchers(r, m["match"], f"{here}.match", allow_roles=False)
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
        return Metrics(self.listen(m["listen"], "metrics.listen"))

    def listen(self, node: Node, where: str) -> Listen | None:
        r = self.r
        text = r.string(node, where)
        if text is None:
            return None
        listen = parse_listen(text)
        if listen is None:
            r.problem(node, where, f"expected ADDRESS:PORT such as 0.0.0.0:8443, got {text!r}")
        return listen

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
