"""Keep revocation, roles and certificates current without a SIGHUP.

Theory of operation. Once a second the worker asks, in a thread (stat can
block on a slow disk), for a cheap signature of two groups of files; every
path is re-resolved each time, so an atomic rename or a Kubernetes-style
symlink swap is seen.

* Revocation: the CRL files and the built-in CA's inventory database with
  its WAL. When their signature changes, the CRLs are parsed, verified and
  checked against the high-water marks (no rollback; a CRL its file no
  longer holds stays in force) and the role snapshot is read, still in the
  thread; the results are
  swapped into the current runtime with plain attribute assignments on the
  event loop, and connections whose certificate is now revoked are closed.
  A CRL that fails to parse or verify changes nothing and is logged with
  its file and reason; the previous index stays in force.
* Rebuild: server certificates and keys and trusted CA bundles. A change
  asks the worker for a whole new runtime (as a SIGHUP does, but from the
  config already loaded). certbot swaps the certificate and key symlinks
  one after the other, so the rebuild waits until the signature has held
  still for one poll: a certificate is never paired with the old key.

Once a minute, CRLs past their nextUpdate are logged, with what certgate
does about them (``client_auth.stale_crl``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from certgate.ca.authority import SERVER_RENEW_BEFORE
from certgate.config.schema import StaleCRL
from certgate.errors import CertgateError
from certgate.revocation import RevocationIndex
from certgate.runtime import Runtime
from certgate.tls.contexts import ServerCertificate

log = logging.getLogger("certgate.watch")

# The revocation issue asks for changes to bite within 2 s; polling at 1 s
# costs a handful of stat calls per second.
POLL_INTERVAL = 1.0
# "A warning every minute" for a stale CRL: often enough to be seen in a
# journal, rare enough not to drown it.
STALE_WARNING_INTERVAL = 60.0
# certgate's own server certificates are renewed when a runtime is built
# with less than SERVER_RENEW_BEFORE left; checking hourly keeps a
# long-running proxy from ever serving an expired one.
RENEWAL_CHECK_INTERVAL = 3600.0

Signature = tuple[tuple[str, int, int, int], ...]

# A runtime reads its CRLs and roles while it is built, a moment before it
# is swapped in; a CRL written in between would become the baseline and never
# be applied (a revoked client admitted again after a reload, until the next
# CRL change). Any watched file differs from this empty signature, so after a
# start or a reload the first poll re-reads the CRLs and roles.
UNREAD: Signature = ()


def _signatures(runtime: Runtime) -> tuple[Signature, Signature]:
    return signature(runtime.watched_files()), signature(runtime.rebuild_files())


def _utc(moment: float | None) -> str:
    if moment is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def signature(paths: tuple[Path, ...]) -> Signature:
    out: list[tuple[str, int, int, int]] = []
    for path in paths:
        try:
            st = os.stat(path)  # follows symlinks: a swapped link target counts
        except OSError:
            out.append((str(path), -1, -1, -1))
            continue
        out.append((str(path), st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def renewal_due(cert: ServerCertificate, now: float) -> bool:
    """An automatic server certificate is due for renewal with
    SERVER_RENEW_BEFORE or less left, unless it already runs until its
    issuing CA's end: a new one could not run longer, and the runtime
    would be rebuilt every hour for nothing (an imported CA near its end)."""
    if now < cert.not_after - SERVER_RENEW_BEFORE.total_seconds():
        return False
    return cert.issuer_not_after is None or cert.not_after < cert.issuer_not_after


class RevocationWatcher:
    def __init__(self, current: Callable[[], Runtime],
                 older: Callable[[], list[Runtime]] = list,
                 rebuild: Callable[[], None] | None = None) -> None:
        self._current = current
        # Runtimes replaced by a reload but still serving connections that
        # started under them: a revocation must close those connections too.
        self._older = older
        self._rebuild = rebuild
        self._last: Signature | None = None
        self._last_build: Signature | None = None
        self._moving: Signature | None = None  # a rebuild group change not yet settled
        self._task: asyncio.Task[None] | None = None
        self._next_stale_warning = 0.0
        self._next_renewal_check = 0.0
        self.refreshes = 0
        self.failures = 0

    def start(self) -> None:
        # CRLs and roles: re-read at the first poll (see UNREAD). Rebuild
        # files: baseline now.
        runtime = self._current()
        self._last = UNREAD
        self._last_build = signature(runtime.rebuild_files())
        self._task = asyncio.get_running_loop().create_task(self._run())

    def rebaseline(self, runtime: Runtime) -> None:
        """Take ``runtime``'s files as the starting state (after a reload); its CRLs
        and roles are re-read at the next poll (see UNREAD)."""
        self._last = UNREAD
        build = signature(runtime.rebuild_files())
        if self._last_build is None or [f[0] for f in build] != [f[0] for f in self._last_build]:
            self._last_build, self._moving = build, None
        # Same files as before: keep the old baseline. The build read them
        # before the swap, so a renewal landing in between must still count
        # as a change (at worst one rebuild too many).

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            runtime = self._current()
            self.warn_if_stale(runtime, loop.time())
            current, build = await loop.run_in_executor(None, _signatures, runtime)
            if runtime is not self._current():
                continue  # a reload swapped runtimes meanwhile; it rebaselined
            changed = current != self._last
            self._last = current
            if changed:
                await self.refresh(runtime)
                if runtime is not self._current():
                    continue  # a reload during the refresh rebaselined; keep its UNREAD
            self._check_rebuild(build)
            self._check_renewal(runtime, loop.time())

    def _check_rebuild(self, build: Signature) -> None:
        if build == self._last_build:
            self._moving = None
            return
        if build != self._moving:
            self._moving = build  # changed; wait one poll for it to settle
            return
        self._last_build, self._moving = build, None
        if self._rebuild is not None:
            log.info("certificate or CA files changed; rebuilding the runtime")
            self._rebuild()

    def _check_renewal(self, runtime: Runtime, now: float) -> None:
        """Rebuild when one of certgate's own server certificates nears its end:
        building a runtime renews it (like Caddy's automatic certificates)."""
        if now < self._next_renewal_check:
            return
        self._next_renewal_check = now + RENEWAL_CHECK_INTERVAL
        due = [cert for cert in runtime.automatic_certificates
               if renewal_due(cert, time.time())]
        if due and self._rebuild is not None:
            log.info("the automatic server certificate %s expires soon; renewing",
                     ", ".join(str(cert.files.cert) for cert in due))
            self._rebuild()

    def warn_if_stale(self, runtime: Runtime, now: float) -> None:
        if now < self._next_stale_warning:
            return
        stale = runtime.revocation.stale()
        if not stale:
            return
        self._next_stale_warning = now + STALE_WARNING_INTERVAL
        allow = runtime.config.client_auth.stale_crl is StaleCRL.ALLOW
        for info in stale:
            log.warning("CRL %s for %s is past its nextUpdate (%s); %s", info.path,
                        info.issuer_dn, _utc(info.next_update),
                        "admitting its clients anyway (stale_crl: allow)" if allow
                        else "refusing its clients (stale_crl: reject)")

    async def refresh(self, runtime: Runtime) -> bool:
        """Re-read CRLs and roles for ``runtime``; False if a CRL was refused."""
        loop = asyncio.get_running_loop()

        def build() -> tuple[RevocationIndex, dict[str, tuple[str, ...]] | None]:
            # Reconciled with the index in force: no rollback, and a CRL its
            # file no longer holds stays (revocation_state); the marks are
            # saved here too, in this thread.
            index = runtime.revocation_sources.load(runtime.revocation)
            roles = runtime.ca.inventory_snapshot() if runtime.ca is not None else None
            return index, roles

        try:
            index, roles = await loop.run_in_executor(None, build)
        except (CertgateError, OSError, ValueError) as exc:
            self.failures += 1
            log.error("revocation refresh failed, keeping the previous CRLs: %s", exc)
            return False
        closed = 0
        for target in (runtime, *self._older()):
            if target is not runtime and target.crl_paths != runtime.crl_paths:
                continue  # a reload changed the CRL sources; that runtime keeps its own
            target.revocation = index
            if roles is not None:
                target.set_roles(roles)
            closed += target.revoke_live()
        self.refreshes += 1
        log.info("revocation and roles refreshed (%d CRL(s)); closed %d revoked connection(s)",
                 len(index.infos), closed)
        return True
