"""One worker process: bind, serve, reload on SIGHUP, drain on SIGTERM.

Reload follows Caddy's shape: load and validate the whole new config and
build a whole new :class:`~certgate.runtime.Runtime` off the event loop, then
swap one reference. New connections get the new runtime; connections in
flight keep theirs. A reload that fails logs every problem and changes
nothing. Shutdown stops accepting, closes idle keep-alive connections, lets
requests in flight finish until ``limits.shutdown_grace``, then closes the
rest and returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from certgate.config.loader import load_config
from certgate.config.schema import Config, Listen
from certgate.errors import CertgateError, ConfigError
from certgate.proxy.listener import Listener
from certgate.revocation import RevocationError
from certgate.runtime import Runtime, TLSSetupError, build_runtime
from certgate.watch import RevocationWatcher

log = logging.getLogger("certgate.server")

# Listen backlog: the kernel caps it at net.core.somaxconn (4096 on current
# kernels); 1024 absorbs handshake bursts without hiding overload for long.
BACKLOG = 1024

BUILD_ERRORS = (CertgateError, TLSSetupError, RevocationError, OSError, ValueError)


def bind_listener(listen: Listen, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket for ``listen``; SO_REUSEPORT when workers share it."""
    infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
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
    except BaseException:
        sock.close()
        raise
    return sock


class Worker:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None,
        reuse_port: bool = False,
        on_ready: Callable[[list[tuple[str, int]]], None] | None = None,
        install_signals: bool = True,
    ) -> None:
        self.install_signals = install_signals
        self.config = config
        self.config_path = config_path
        self.reuse_port = reuse_port
        self.on_ready = on_ready
        self.runtime: Runtime | None = None
        self._old: list[Runtime] = []
        self.listeners: list[Listener] = []
        self._stop = asyncio.Event()
        self._reloading = False
        self._retiring: set[asyncio.Task[None]] = set()
        self.watcher: RevocationWatcher | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0

    def current(self) -> Runtime:
        assert self.runtime is not None
        return self.runtime

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self.runtime = await loop.run_in_executor(None, build_runtime, self.config)
        bound: list[tuple[str, int]] = []
        for listen in self.config.listen:
            sock = bind_listener(listen, reuse_port=self.reuse_port)
            port = sock.getsockname()[1]
            listener = Listener(sock, f"{listen.host}:{port}", self.current)
            listener.start()
            self.listeners.append(listener)
            bound.append((listen.host, port))
        if self.install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.watcher = RevocationWatcher(self.current, lambda: list(self._old))
        self.watcher.start()
        log.info("certgate listening on %s", ", ".join(f"{h}:{p}" for h, p in bound))
        if self.on_ready is not None:
            self.on_ready(bound)
        await self._stop.wait()
        await self.shutdown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    # -- reload -----------------------------------------------------------
    def request_reload(self) -> None:
        if self._reloading:
            return
        self._reloading = True
        task = asyncio.get_running_loop().create_task(self.reload())
        task.add_done_callback(lambda _: setattr(self, "_reloading", False))

    async def reload(self) -> bool:
        """Build a new runtime from the config file and swap it in; False on failure."""
        loop = asyncio.get_running_loop()

        def build() -> Runtime:
            config = load_config(self.config_path) if self.config_path else self.config
            if config.listen != self.config.listen:
                log.warning("reload: listen addresses changed; restart certgate to apply "
                            "(the other changes are applied)")
            return build_runtime(config)

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
        old, self.runtime = self.runtime, runtime
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
        if self.watcher is not None:
            self.watcher.stop()
        for listener in self.listeners:
            listener.stop()
        runtimes = [r for r in (self.runtime, *self._old) if r is not None]
        grace = self.config.limits.shutdown_grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        for runtime in runtimes:
            runtime.draining = True
            for conn in list(runtime.connections):
                if not conn.busy:
                    conn.close()
        for runtime in runtimes:
            remaining = deadline - loop.time()
            if remaining > 0 and runtime.connections:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await runtime.wait_idle()
        for runtime in runtimes:
            for conn in list(runtime.connections):
                conn.abort()
            runtime.close()
