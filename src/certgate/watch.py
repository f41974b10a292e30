"""Keep revocation and roles current without a reload.

Theory of operation. Once a second the worker asks, in a thread (stat can
block on a slow disk), for a cheap signature of the watched files: the CRL
files (their path is re-resolved each time, so an atomic rename or a
Kubernetes-style symlink swap is seen) and the built-in CA's inventory
database with its WAL. When the signature changes, the CRLs are parsed and
verified and the role snapshot is read, still in the thread; the results are
swapped into the current runtime with plain attribute assignments on the
event loop, and connections whose certificate is now revoked are closed.
A CRL that fails to parse or verify changes nothing and is logged with its
file and reason; the previous index stays in force.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from certgate.errors import CertgateError
from certgate.revocation import RevocationIndex, load_revocation
from certgate.runtime import Runtime

log = logging.getLogger("certgate.watch")

# The revocation issue asks for changes to bite within 2 s; polling at 1 s
# costs a handful of stat calls per second.
POLL_INTERVAL = 1.0

Signature = tuple[tuple[str, int, int, int], ...]


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


class RevocationWatcher:
    def __init__(self, current: Callable[[], Runtime],
                 older: Callable[[], list[Runtime]] = list) -> None:
        self._current = current
        # Runtimes replaced by a reload but still serving connections that
        # started under them: a revocation must close those connections too.
        self._older = older
        self._last: Signature | None = None
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0
        self.failures = 0

    def start(self) -> None:
        # Baseline now, so a change between the runtime build and the first
        # poll is not mistaken for the starting state.
        self._last = signature(self._current().watched_files())
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            runtime = self._current()
            files = runtime.watched_files()
            current = await loop.run_in_executor(None, signature, files)
            if self._last is None or current == self._last:
                self._last = current
                continue
            self._last = current
            await self.refresh(runtime)

    async def refresh(self, runtime: Runtime) -> bool:
        """Re-read CRLs and roles for ``runtime``; False if a CRL was refused."""
        loop = asyncio.get_running_loop()

        def build() -> tuple[RevocationIndex, dict[int, tuple[str, ...]] | None]:
            index = load_revocation(runtime.crl_paths, runtime.trust_pem)
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
