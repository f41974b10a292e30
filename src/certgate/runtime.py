"""The runtime snapshot: everything a connection needs, built in one go.

A :class:`Runtime` is built from a :class:`Config` off the event loop (it
reads files, parses certificates and may initialise the built-in CA), then
swapped in with one reference assignment. Connections keep the snapshot they
were accepted under, so a reload never changes the rules under a request in
flight; a build that fails raises and changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from certgate import memtrim, metrics
from certgate.accesslog import AccessLogger
from certgate.config.schema import BUILTIN, CertificateFiles, Config, Route, StaleCRL
from certgate.console.service import ConsoleService
from certgate.enroll.service import EnrollService
from certgate.proxy.upstream import UpstreamPool
from certgate.revocation import (
    REVOKED,
    RevocationIndex,
    RevocationSources,
    checked_ca_files,
    no_crl_warning,
    uncovered_cas,
)
from certgate.revocation_state import STATE_FILE
from certgate.roles import resolve as resolve_roles
from certgate.routing import RouteTable, automatic_host_sets, uncovered_hosts
from certgate.tls import openssl
from certgate.tls.contexts import (
    ContextSet,
    ServerCertificate,
    TLSSetupError,
    load_trust_bundle,
    read_server_certificate,
)
from certgate.tls.identity import ClientIdentity, IdentityCache, InvalidCertificate
from certgate.tls.issuers import TrustedIssuers, issuer_matcher_warnings, weak_key_warnings
from certgate.tls.verify import (
    Refusal,
    refuse_unparsable,
    revocation_refusal,
    validity_problem,
    verify_peer,
)

if TYPE_CHECKING:
    from certgate.ca import CertificateAuthority
    from certgate.lastseen import Recorder
    from certgate.proxy.info import ConnectionInfo

log = logging.getLogger("certgate.runtime")

Notice = Callable[[str], None]


class OpenConnection(Protocol):
    """What the runtime and shutdown need of a client connection
    (:class:`certgate.proxy.client.ClientConnection`), without importing it:
    the proxy depends on the runtime, not the other way round."""

    @property
    def identity(self) -> ClientIdentity | None: ...

    @property
    def busy(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def going_away(self) -> bool: ...


class Runtime:
    def __init__(
        self,
        config: Config,
        routes: RouteTable,
        contexts: ContextSet,
        revocation: RevocationIndex,
        ca: CertificateAuthority | None,
        *,
        crl_paths: tuple[Path, ...] = (),
        trust_pem: str = "",
        trust_sources: tuple[Path, ...] = (),
        automatic_certificates: tuple[ServerCertificate, ...] = (),
        revocation_sources: RevocationSources | None = None,
    ) -> None:
        #: The server certificates certgate issued itself for hosts no
        #: configured certificate covers, one per host (see
        #: routing.automatic_host_sets); renewed by a rebuild (see watch.py).
        self.automatic_certificates = automatic_certificates
        self.trust_sources = trust_sources
        #: What the revocation watcher re-reads (see certgate.watch).
        self.crl_paths = crl_paths
        self.trust_pem = trust_pem
        self.revocation_sources = revocation_sources or RevocationSources(crl_paths, trust_pem)
        self.config = config
        self.routes = routes
        self.contexts = contexts
        self.revocation = revocation
        self.ca = ca
        builtin_pem = ca.trust_bundle_path.read_bytes() if ca is not None else None
        #: Which trusted certificate signed a leaf (by signature), looked up
        #: once per certificate by the identity cache.
        self.issuers = TrustedIssuers.from_pem(trust_pem, builtin_pem)
        self.identities = IdentityCache(issuers=self.issuers)
        self.access_log = AccessLogger(config.access_log)
        #: The worker's last-seen recorder (certgate.lastseen), set by the
        #: worker on every runtime it swaps in; it outlives the runtime, so a
        #: reload loses no sighting. None: not recorded (explain, tests).
        self.last_seen: Recorder | None = None
        self.connections: set[OpenConnection] = set()
        #: Set on shutdown: connections finish their current request and close.
        self.draining = False
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._pools: dict[int, UpstreamPool] = {}
        self._roles: dict[str, tuple[str, ...]] = {}
        if ca is not None:
            self.set_roles(ca.inventory_snapshot())
        contexts.set_leaf_check(self.handshake_check)
        #: The built-in enrollment service, when a route uses ``upstream: enroll``.
        self.enroll = EnrollService(ca, config, builtin_server=bool(automatic_certificates)) \
            if config.enroll_routes else None
        #: The CA's web console, when a route uses ``upstream: console``.
        self.console = console_service(config, ca) if config.console_routes else None

    # -- per connection -------------------------------------------------
    def handshake_check(self, der: bytes) -> int:
        """Inside the handshake, once OpenSSL has verified the chain: refuse a
        revoked leaf with the ``certificate_revoked`` alert (issue #12).

        Only revocation is decided here. Everything else :meth:`check_peer`
        refuses (a stale CRL, a profile certgate cannot read) is answered
        after the handshake with a 403 that says why, and check_peer runs
        for every connection anyway, so this is an earlier refusal, never
        the only one. The parsed identity is cached for check_peer.
        """
        try:
            identity = self.identities.get_or_parse(der)
        except InvalidCertificate:
            return 0  # refused by check_peer, with its reason
        if self.revocation.check(identity) == REVOKED:
            return openssl.X509_V_ERR_CERT_REVOKED
        return 0

    def check_peer(self, der: bytes) -> tuple[ClientIdentity | None, Refusal | None]:
        """The identity of a verified peer, and a reason to refuse it, if any.

        Runs for every connection, resumed sessions included: a resumed
        session still carries the peer certificate, and revocation or expiry
        since the session was made must still bite.
        """
        try:
            identity = self.identities.get_or_parse(der)
        except InvalidCertificate as exc:
            return None, refuse_unparsable(exc)
        return identity, verify_peer(identity, self.revocation, allow_stale=self._allow_stale,
                                     on_stale_admitted=_count_stale_admission)

    @property
    def _allow_stale(self) -> bool:
        return self.config.client_auth.stale_crl is StaleCRL.ALLOW

    def revocation_problem(self, identity: ClientIdentity) -> Refusal | None:
        """Revoked, or stale CRL under ``stale_crl: reject``; None to admit."""
        return revocation_refusal(identity, self.revocation, self._allow_stale,
                                  _count_stale_admission)

    def connection_closed(self, conn: OpenConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            memtrim.note_closed()
        if not self.connections:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    async def wait_idle(self) -> None:
        """Return once no connection accepted under this runtime is open."""
        if not self.connections:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(waiter)
        await waiter

    def roles_for(self, identity: ClientIdentity) -> tuple[str, ...]:
        """Inventory roles (built-in certificates only) plus config role rules."""
        return resolve_roles(identity, self._roles, self.config.client_auth.roles)

    def set_roles(self, roles: dict[str, tuple[str, ...]]) -> None:
        """Install a role snapshot (fingerprint -> roles) read from the built-in CA."""
        self._roles = roles

    def watched_files(self) -> tuple[Path, ...]:
        """Files whose change should refresh revocation or roles."""
        files = list(self.crl_paths)
        if self.ca is not None:
            db = self.ca.state_dir / "ca" / "inventory.sqlite3"
            files += [db, db.with_name(db.name + "-wal")]
        return tuple(files)

    def rebuild_files(self) -> tuple[Path, ...]:
        """Files whose change calls for a whole new runtime: server
        certificates and keys (certbot renewals) and trusted CA bundles."""
        files: list[Path] = []
        for cert in self.config.tls.certificates:
            files += [cert.cert, cert.key]
        files += self.trust_sources
        return tuple(files)

    def revoke_live(self) -> int:
        """Close open connections whose certificate no longer passes; return how many.

        nginx, Caddy and Traefik keep such connections open; a lost phone
        with an open WebSocket must lose it when its certificate is revoked.
        """
        closed = 0
        for conn in list(self.connections):
            identity = conn.identity
            if identity is not None and self.revocation_problem(identity) is not None:
                conn.abort()
                closed += 1
        return closed

    def pool_for(self, route: Route) -> UpstreamPool:
        key = id(route)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = UpstreamPool(route.upstream, route.timeouts)
        return pool

    def handshake_failed(self, info: ConnectionInfo, exc: BaseException) -> None:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        # OpenSSL's verify result in words ("certificate revoked", "unable to
        # get local issuer certificate"): CERTIFICATE_VERIFY_FAILED alone does
        # not say which of a dozen checks refused.
        detail = getattr(exc, "verify_message", None)
        if detail:
            reason = f"{reason} ({detail})"
        log.info("TLS handshake failed: client=%s sni=%s reason=%s", info.peer_ip,
                 info.sni or "-", reason)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self.access_log.close()


def console_service(config: Config, ca: CertificateAuthority | None) -> ConsoleService:
    """The console of a runtime (blocking: reads or makes its CSRF secret)."""
    from certgate.console import guard

    assert ca is not None  # build_runtime opens the CA for console routes
    # The first enroll route with a real name (a pattern host cannot be put
    # in a link: the New device page then points at the CLI's --url-base).
    route = next((r for r in config.enroll_routes
                  if r.host != "*" and not r.host.startswith("*.")), None)
    return ConsoleService(ca, guard.load_secret(config.state_dir),
                          (route.host, route.path) if route is not None else None)


def _count_stale_admission(identity: ClientIdentity) -> None:
    metrics.METRICS.stale_admission(identity.issuer_dn)


def open_builtin_ca(config: Config, notice: Notice, *, create: bool) -> CertificateAuthority | None:
    if not create:
        return None
    from certgate.ca import CertificateAuthority
    from certgate.ca.naming import default_ca_name

    if CertificateAuthority.exists(config.state_dir):
        return CertificateAuthority.open(config.state_dir)
    from certgate.defaults import command_name

    ca = CertificateAuthority.init(config.state_dir, name=default_ca_name())
    notice(
        f"certgate: created a new private CA in {config.state_dir}\n"
        f"  root certificate (trust this on your devices): {ca.root_cert_path}\n"
        f"  issue client certificates with {command_name()} ca issue --state "
        f"{config.state_dir} NAME (add --p12 for a browser or a phone)\n"
    )
    return ca


def build_runtime(config: Config, notice: Notice = log.warning,
                  previous: RevocationIndex | None = None) -> Runtime:
    """Build a runtime; raises TLSSetupError/CAError/RevocationError naming the file.

    ``previous``: the revocation index in force (on a reload), so that a CRL
    its file no longer holds stays in force (see RevocationSources.load).
    """
    routes = RouteTable(config.routes)
    # The enrollment service issues from the built-in CA, whatever it trusts.
    needs_builtin = config.uses_builtin_ca or bool(config.enroll_routes) or \
        bool(config.console_routes)
    certificates = [read_server_certificate(files) for files in config.tls.certificates]
    uncovered = uncovered_hosts(config, (n for cert in certificates for n in cert.names))
    ca = open_builtin_ca(config, notice, create=needs_builtin or bool(uncovered))
    automatic: list[ServerCertificate] = []
    for hosts in automatic_host_sets(uncovered, configured=bool(certificates)):
        assert ca is not None
        cert_path, key_path = ca.ensure_server_certificate(hosts)
        if any(cert.files.cert == cert_path for cert in automatic):
            continue  # the default is also a route's (localhost, one IP host)
        automatic.append(dataclasses.replace(
            read_server_certificate(CertificateFiles(cert_path, key_path)),
            issuer_not_after=ca.issuing_not_after().timestamp()))
    # The first certificate is the one for connections without SNI or with
    # a name no certificate has (ContextSet.select).
    certificates += automatic
    sources: list[Path] = []
    checked: list[Path] = []  # trusted CAs whose revocation must be checked
    for source in config.client_auth.trusted_cas:
        if source == BUILTIN:
            assert ca is not None
            sources.append(ca.trust_bundle_path)
        else:
            sources.append(Path(source))
        if source not in config.client_auth.no_crl:
            checked.append(sources[-1])
    trust_pem = load_trust_bundle(sources) if sources else None
    contexts = ContextSet(certificates, routes.modes_in_use, trust_pem, config.tls)
    crl_paths: list[Path] = []
    for source in config.client_auth.crls:
        if source == BUILTIN:
            assert ca is not None
            if not ca.crl_path.exists():
                ca.write_crl()
            crl_paths.append(ca.crl_path)
        else:
            crl_paths.append(Path(source))
    revocation_sources = RevocationSources(
        tuple(crl_paths), trust_pem or "",
        load_trust_bundle(checked) if checked != sources else None,
        config.state_dir / STATE_FILE)
    revocation = revocation_sources.load(previous)
    for path in uncovered_cas(checked_ca_files(config), revocation.covers):
        log.warning("%s", no_crl_warning(path))
    runtime = Runtime(config, routes, contexts, revocation, ca, crl_paths=tuple(crl_paths),
                      trust_pem=trust_pem or "", trust_sources=tuple(sources),
                      automatic_certificates=tuple(automatic),
                      revocation_sources=revocation_sources)
    for warning in (*issuer_matcher_warnings(config, runtime.issuers),
                    *weak_key_warnings(runtime.issuers)):
        notice(f"certgate: warning: {warning}")
    return runtime


__all__ = ["Runtime", "TLSSetupError", "build_runtime", "validity_problem"]
