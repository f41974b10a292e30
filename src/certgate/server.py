"""One worker process: bind, serve, reload on SIGHUP, drain on SIGTERM.

Reload follows Caddy's shape: load and validate the whole new config and
build a whole new :class:`~certgate.runtime.Runtime` off the event loop, then
swap one reference. New connections get the new runtime; connections in
flight keep theirs. A reload that fails logs every problem and changes
nothing. Shutdown stops accepting, closes idle keep-alive connections, ends
WebSocket tunnels with a Close frame (1001 "going away", see
:mod:`certgate.proxy.tunnel`), lets requests in flight finish until
``limits.shutdown_grace``, then closes the rest and returns 0. It logs what
it waits for; a second SIGTERM/SIGINT closes everything at once (as Ctrl-C
twice does in uvicorn and Caddy).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from certgate import lastseen, metrics
from certgate.config.loader import load_config
from certgate.config.schema import Config, Listen
from certgate.errors import CertgateError, ConfigError
from certgate.health import Verdict, loop_responds
from certgate.proxy.listener import Listener
from certgate.revocation import RevocationError
from certgate.runtime import Runtime, TLSSetupError, build_runtime
from certgate.watch import RevocationWatcher

if TYPE_CHECKING:
    from certgate.metrics import Exporter
    from certgate.sdnotify import Notifier

log = logging.getLogger("certgate.server")

# Listen backlog: the kernel caps it at net.core.somaxconn (4096 on current
# kernels); 1024 absorbs handshake bursts without hiding overload for long.
BACKLOG = 1024

BUILD_ERRORS = (CertgateError, TLSSetupError, RevocationError, OSError, ValueError)


class ListenError(CertgateError):
    """A listen address could not be bound; the message names it (and its holder)."""


def bind_listener(listen: Listen, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket for ``listen``; SO_REUSEPORT when workers share it.

    Raises:
        ListenError: one line naming the address, the kernel's reason and,
            for a busy port, the process holding it when it can be found.
    """
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"listen {listen}: cannot resolve {listen.host}: "
                          f"{exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(listen_failure(listen, exc)) from None
    except BaseException:
        sock.close()
        raise
    return sock


def listen_failure(listen: Listen, exc: OSError) -> str:
    """The one line for a failed bind, worded like metrics.listen's."""
    line = f"listen {listen}: cannot listen: {exc.strerror or exc}"
    if exc.errno == errno.EADDRINUSE:
        from certgate.ports import describe_holders

        line += describe_holders(listen.host, listen.port)
    elif exc.errno == errno.EACCES and listen.port < 1024:
        line += (" (ports below 1024 need root or CAP_NET_BIND_SERVICE; "
                 "the systemd unit grants it)")
    elif exc.errno == errno.EADDRNOTAVAIL:
        line += " (no interface on this host has that address)"
    return line


class Worker:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None,
        reuse_port: bool = False,
        on_ready: Callable[[list[tuple[str, int]]], None] | None = None,
        install_signals: bool = True,
        stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
        exporter: Exporter | None = None,
        notifier: Notifier | None = None,
        reload_done: Callable[[], None] | None = None,
    ) -> None:
        self.install_signals = install_signals
        #: Forked workers leave SIGINT (Ctrl-C, sent to the whole process
        #: group) to the parent, which forwards it once as SIGTERM; otherwise
        #: one Ctrl-C would count twice here and skip the graceful part.
        self.stop_signals = stop_signals
        #: Set when this worker is the only process: it serves /metrics and
        #: talks to systemd itself. Forked workers leave both to the parent
        #: and report finished reloads through ``reload_done``.
        self.exporter = exporter
        self.notifier = notifier
        self.reload_done = reload_done
        self.config = config
        self.config_path = config_path
        self.reuse_port = reuse_port
        self.on_ready = on_ready
        self.runtime: Runtime | None = None
        self._old: list[Runtime] = []
        self.listeners: list[Listener] = []
        self._stop = asyncio.Event()
        self._force = asyncio.Event()  # a second stop signal: do not wait any longer
        self._reloading = False
        self._retiring: set[asyncio.Task[None]] = set()
        self.watcher: RevocationWatcher | None = None
        #: A reload asked for while one runs: True re-reads the file, False rebuilds.
        self._reload_again: bool | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        #: Last-seen sightings of this worker, flushed by ``_flush_loop``;
        #: kept here, not in a runtime, so a reload loses none.
        self.last_seen = lastseen.Recorder()
        self._flusher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def current(self) -> Runtime:
        assert self.runtime is not None
        return self.runtime

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self.runtime = await loop.run_in_executor(None, build_runtime, self.config)
        self.runtime.last_seen = self.last_seen
        bound: list[tuple[str, int]] = []
        for listen in self.config.listen:
            sock = bind_listener(listen, reuse_port=self.reuse_port)
            port = sock.getsockname()[1]
            listener = Listener(sock, f"{listen.host}:{port}", self.current)
            listener.start()
            self.listeners.append(listener)
            bound.append((listen.host, port))
        if self.install_signals:
            for signum in self.stop_signals:
                loop.add_signal_handler(signum, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.watcher = RevocationWatcher(self.current, lambda: list(self._old),
                                         rebuild=self.request_rebuild)
        self.watcher.start()
        self._flusher = loop.create_task(self._flush_loop(lastseen.flush_interval()))
        if self.exporter is not None:
            self._loop = loop
            self.exporter.probe = self.health
            self.exporter.serve_for(self.config)
        log.info("certgate listening on %s", ", ".join(f"{h}:{p}" for h, p in bound))
        if self.on_ready is not None:
            self.on_ready(bound)
        if self.notifier is not None:
            self.notifier.ready("serving")
        await self._stop.wait()
        await self.shutdown()
        return 0

    def health(self) -> Verdict:
        """What /healthz answers when this worker is the only process (metrics thread)."""
        if self._stop.is_set():
            return Verdict(False, "stopping: draining connections")
        if self._loop is None:
            return Verdict(False, "starting")
        return loop_responds(self._loop)

    def stop(self) -> None:
        """Begin a graceful shutdown; called again while it runs, stop at once."""
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    # -- reload -----------------------------------------------------------
    def request_reload(self) -> None:
        """SIGHUP: re-read the config file and rebuild everything."""
        self._start_reload(from_file=True)

    def request_rebuild(self) -> None:
        """Certificate or CA files changed: rebuild from the config already loaded."""
        self._start_reload(from_file=False)

    def _start_reload(self, *, from_file: bool) -> None:
        if self._reloading:
            # One reload at a time; what is asked for meanwhile runs next: a
            # SIGHUP must be honoured, and a certificate renewed during the
            # running build may have been read before it changed.
            self._reload_again = bool(self._reload_again) or from_file
            return
        self._reloading = True
        if self.notifier is not None:
            self.notifier.reloading()
        task = asyncio.get_running_loop().create_task(self.reload(from_file=from_file))
        task.add_done_callback(self._reload_finished)

    def _reload_finished(self, _: asyncio.Task[bool]) -> None:
        self._reloading = False
        if self.reload_done is not None:
            self.reload_done()
        if self.notifier is not None:
            self.notifier.ready("reloaded")
        if self._reload_again is not None:
            from_file, self._reload_again = self._reload_again, None
            self._start_reload(from_file=from_file)

    async def reload(self, *, from_file: bool = True) -> bool:
        """Build a new runtime and swap it in; False (and nothing changed) on failure."""
        loop = asyncio.get_running_loop()
        ok = await self._reload(loop, from_file)
        metrics.METRICS.reload(ok)
        return ok

    async def _reload(self, loop: asyncio.AbstractEventLoop, from_file: bool) -> bool:
        running = self.current().config
        # A CRL kept in force because its file stopped holding it must stay
        # kept across the reload (see RevocationSources.load).
        in_force = self.current().revocation

        def build() -> Runtime:
            config = load_config(self.config_path) if from_file and self.config_path \
                else running
            if config.listen != self.config.listen:
                log.warning("reload: listen addresses changed; restart certgate to apply "
                            "(the other changes are applied)")
            return build_runtime(config, previous=in_force)

        try:
            runtime = await loop.run_in_executor(None, build)
        except ConfigError as exc:
            self.reloads_failed += 1
            for problem in exc.problems:
                log.error("reload failed, keeping the running config: %s", problem)
            return False
        except BUILD_ERRORS as exc:
            self.reloads_failed += 1
            log.error("reload failed, keeping the running config: %s", exc)
            return False
        runtime.last_seen = self.last_seen
        old, self.runtime = self.runtime, runtime
        if self.watcher is not None:
            self.watcher.rebaseline(runtime)
        if self.exporter is not None:
            self.exporter.config_changed(runtime.config)
        if old is not None:
            self._old.append(old)
            task = loop.create_task(self._retire(old))
            task.add_done_callback(lambda _: None)
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self.reloads_ok += 1
        log.info("configuration reloaded")
        return True

    async def _retire(self, runtime: Runtime) -> None:
        """Close an old runtime's pools once its last connection is gone."""
        await runtime.wait_idle()
        if runtime in self._old:
            self._old.remove(runtime)
            runtime.close()

    # -- shutdown -----------------------------------------------------------
    async def shutdown(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        if self.watcher is not None:
            self.watcher.stop()
        for listener in self.listeners:
            listener.stop()
        runtimes = [r for r in (self.runtime, *self._old) if r is not None]
        grace = self.config.limits.shutdown_grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        requests = tunnels = 0
        for runtime in runtimes:
            runtime.draining = True
            for conn in list(runtime.connections):
                if not conn.busy:
                    conn.close()
                elif conn.going_away():
                    tunnels += 1
                else:
                    requests += 1
        if requests or tunnels:
            log.info("shutting down: waiting up to %.0f s (limits.shutdown_grace) for %d "
                     "connection(s): %d request(s) in flight, %d WebSocket(s) closing with "
                     "1001 going away; signal again to close them now",
                     grace, requests + tunnels, requests, tunnels)
        if not self._force.is_set():
            await self._drained(runtimes, deadline)
        left = sum(len(runtime.connections) for runtime in runtimes)
        if left:
            why = "second signal" if self._force.is_set() else \
                f"shutdown_grace ({grace:.0f} s) is over"
            log.warning("%s: closing %d connection(s) now", why, left)
        for runtime in runtimes:
            for conn in list(runtime.connections):
                conn.abort()
            runtime.close()
        if self._flusher is not None:
            await self._flusher  # returns once _stop is set (a flush running finishes)
        await self.flush_last_seen()

    # -- last seen ----------------------------------------------------------
    async def _flush_loop(self, interval: float) -> None:
        """Flush the last-seen sightings every ``interval`` seconds until stopped."""
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
            except TimeoutError:
                await self.flush_last_seen()

    async def flush_last_seen(self) -> int:
        """Write the sightings noted since the last flush, off the event loop.

        A failed write (disk full, the file locked past the busy timeout)
        keeps the batch for the next flush and is logged, once per failure.
        """
        batch = self.last_seen.take()
        if not batch:
            return 0
        state_dir = self.current().config.state_dir
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, lastseen.flush, state_dir, batch)
        except (sqlite3.Error, OSError) as exc:
            log.warning("last seen: cannot write %s: %s (kept for the next flush)",
                        state_dir / lastseen.DATABASE, exc)
            self.last_seen.put_back(batch)
            return 0

    async def _drained(self, runtimes: list[Runtime], deadline: float) -> None:
        """Wait until every runtime is idle, the deadline, or a second signal."""
        loop = asyncio.get_running_loop()
        idle = loop.create_task(_all_idle(runtimes))
        forced = loop.create_task(self._force.wait())
        try:
            await asyncio.wait({idle, forced}, timeout=max(0.0, deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (idle, forced):
                task.cancel()
            await asyncio.gather(idle, forced, return_exceptions=True)


async def _all_idle(runtimes: list[Runtime]) -> None:
    for runtime in runtimes:
        await runtime.wait_idle()
