"""Which route serves a request, and which TLS policy a server name gets.

Two decisions live here, both pure:

* **Handshake class per name.** Before TLS starts the listener knows only the
  SNI name. A name whose routes all require a client certificate gets a
  ``CERT_REQUIRED`` context (the handshake itself refuses clients without
  one); a name whose routes never ask gets ``CERT_NONE`` (browsers are not
  prompted); anything in between gets ``CERT_OPTIONAL`` and the per-request
  check below enforces the rest. An absent or unknown name gets the strictest
  class in use, so an IP-literal connection can never slip into a locked route.
* **Route per request.** Host (SNI and Host run through one normaliser), then
  the longest path prefix on a segment boundary (``/app`` serves ``/app`` and
  ``/app/x`` but not ``/application``).

The domain-fronting guard compares the two: a request whose Host resolves to a
name of a different class than the one its handshake was made for is answered
421 before any upstream is contacted (RFC 9110 s.15.5.20).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from certgate.config.schema import ClientAuth, Config, NoCertificate, Route
from certgate.hostnames import HostTable, is_ip_literal

_STRICTNESS = {ClientAuth.OFF: 0, ClientAuth.OPTIONAL: 1, ClientAuth.REQUIRE: 2}


def handshake_class(modes: Iterable[ClientAuth]) -> ClientAuth:
    """The TLS client-auth class that serves every mode in ``modes``."""
    found = set(modes)
    if found == {ClientAuth.REQUIRE}:
        return ClientAuth.REQUIRE
    if found == {ClientAuth.OFF}:
        return ClientAuth.OFF
    return ClientAuth.OPTIONAL


def handshake_modes(route: Route) -> set[ClientAuth]:
    """The modes ``route`` asks of the handshake (see the module docstring)."""
    modes = route.modes()
    if route.no_certificate is NoCertificate.PAGE and ClientAuth.REQUIRE in modes:
        modes = (modes - {ClientAuth.REQUIRE}) | {ClientAuth.OPTIONAL}
    return modes


@dataclass(frozen=True, slots=True)
class HostRoutes:
    """Every route of one host pattern, longest path prefix first."""

    pattern: str
    routes: tuple[Route, ...]
    mode: ClientAuth

    def match(self, path: str, *, fold: bool = False) -> Route | None:
        """The route of the longest prefix of ``path`` (``fold``: ignoring
        letter case, as a case-insensitive upstream router reads it)."""
        if fold:
            path = path.lower()
        for route in self.routes:
            prefix = route.path.lower() if fold else route.path
            if (
                prefix == "/"
                or path == prefix
                or (path.startswith(prefix) and (prefix.endswith("/") or path[len(prefix)] == "/"))
            ):
                return route
        return None


class RouteTable:
    """Routes indexed by host pattern; built once per config snapshot."""

    def __init__(self, routes: Iterable[Route]) -> None:
        grouped: dict[str, list[Route]] = {}
        for route in routes:
            grouped.setdefault(route.host, []).append(route)
        entries: list[tuple[str, HostRoutes]] = []
        for pattern, members in grouped.items():
            members.sort(key=lambda r: len(r.path), reverse=True)
            modes = {mode for r in members for mode in handshake_modes(r)}
            entries.append((pattern, HostRoutes(pattern, tuple(members), handshake_class(modes))))
        self.hosts: HostTable[HostRoutes] = HostTable(entries)
        self.patterns = tuple(pattern for pattern, _ in entries)
        classes = [entry.mode for _, entry in entries]
        #: Class for a connection with no SNI or an SNI that matches no route.
        self.default_mode = max(classes, key=_STRICTNESS.__getitem__, default=ClientAuth.REQUIRE)
        self.modes_in_use = frozenset(classes) | {self.default_mode}

    def for_host(self, host: str) -> HostRoutes | None:
        return self.hosts.lookup(host)

    def handshake_mode(self, sni: str | None) -> ClientAuth:
        """The client-auth class of the TLS context for a (normalised) SNI name."""
        if sni is None:
            return self.default_mode
        entry = self.hosts.lookup(sni)
        return entry.mode if entry is not None else self.default_mode


def uncovered_hosts(config: Config, names: Iterable[str]) -> list[str]:
    """Route hosts that no server certificate name (``names``) covers."""
    table: HostTable[bool] = HostTable({name: True for name in names}.items())
    hosts: list[str] = []
    for route in config.routes:
        if route.host == "*" or route.host in hosts:
            continue
        probe = route.host.replace("*.", "wildcard-probe.", 1)
        if table.lookup(probe) is None and table.lookup(route.host) is None:
            hosts.append(route.host)
    return hosts


#: What a connection without SNI (or with a name no certificate has) is
#: shown when certgate issues every certificate itself and no route host
#: is an IP literal: a name that reveals no route.
NEUTRAL_HOST = "localhost"


def automatic_host_sets(uncovered: Sequence[str], configured: bool) -> list[tuple[str, ...]]:
    """The host sets of the automatic server certificates a runtime serves,
    the default one (for connections without SNI) first.

    One certificate per route host, so a client that asks for a.test learns
    a.test and nothing else (issue #12); a ``*.example.com`` route gets a
    wildcard certificate. The default certificate matters when certgate
    issues every certificate itself (``configured`` is False; otherwise the
    first configured certificate stays the default, as before). Clients
    send no SNI for an IP literal (RFC 6066 s.3), so the default names the
    IP-literal route hosts, which such a client already knows; without any
    it names only ``localhost``. A scanner connecting by address, or with a
    guessed name, thus learns no route's host name.
    """
    sets: list[tuple[str, ...]] = []
    if not configured and uncovered:
        sets.append(tuple(h for h in uncovered if is_ip_literal(h)) or (NEUTRAL_HOST,))
    for host in uncovered:
        if not is_ip_literal(host) and (host,) not in sets:
            sets.append((host,))
    return sets
