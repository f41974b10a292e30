"""The parent process: one worker in-process, or N forked workers on one port.

With ``workers: N`` (or ``auto``: one per CPU) every worker binds the
listening addresses itself with SO_REUSEPORT, so the kernel spreads new
connections across them without a shared accept lock. The parent validates
the config and prepares shared state (the built-in CA, server certificates)
*before* forking, so workers never race to create them; then it forwards
SIGHUP (reload) and SIGTERM/SIGINT (graceful stop) to every worker, restarts a
worker that dies unexpectedly (at most a few times a minute), and exits 0
once all workers have drained.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from certgate.config.schema import Config

log = logging.getLogger("certgate.supervisor")

# A worker crashing more often than this within RESTART_WINDOW seconds is a
# bug or a broken host, not a blip: stop instead of looping.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# Building a runtime reads certificates and CRLs; a 100k-entry CRL takes
# about a quarter of a second, so 60 s only trips on a wedged worker.
WORKER_START_TIMEOUT = 60.0


def worker_count(config: Config) -> int:
    return config.workers if config.workers is not None else max(1, os.cpu_count() or 1)


def run_worker(config: Config, config_path: Path | None, *, reuse_port: bool,
               on_ready: Callable[[list[tuple[str, int]]], None] | None = None) -> int:
    import asyncio

    import uvloop

    from certgate.server import Worker

    async def main() -> int:
        worker = Worker(config, config_path=config_path, reuse_port=reuse_port,
                        on_ready=on_ready)
        return await worker.serve()

    asyncio.set_event_loop_policy(None)
    return uvloop.run(main())


def supervise(config: Config, config_path: Path | None,
              on_ready: Callable[[list[tuple[str, int]]], None] | None = None) -> int:
    count = worker_count(config)
    if count == 1:
        return run_worker(config, config_path, reuse_port=False, on_ready=on_ready)

    from certgate.runtime import build_runtime

    build_runtime(config).close()  # prepare CA and certificates once, before forking
    children: dict[int, int] = {}  # pid -> slot
    restarts: list[float] = []
    stopping = False

    def spawn(slot: int) -> int:
        """Fork a worker; return the read end of the pipe it reports readiness on."""
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)

            def bound(_: list[tuple[str, int]]) -> None:
                os.write(ready_write, b"1")
                os.close(ready_write)

            code = 1
            try:
                code = run_worker(config, config_path, reuse_port=True, on_ready=bound)
            except BaseException:
                log.exception("worker %d crashed", slot)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(ready_write)
        children[pid] = slot
        return ready_read

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                children.pop(pid, None)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    pipes = [spawn(slot) for slot in range(count)]
    if not _await_workers(pipes, WORKER_START_TIMEOUT):
        log.error("workers did not start; stopping")
        forward(signal.SIGTERM, None)
        stopping = True
    elif on_ready is not None:
        on_ready([(listen.host, listen.port) for listen in config.listen])
    exit_code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        slot = children.pop(pid)
        if stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        log.error("worker %d (pid %d) exited with %d; restarting", slot, pid, code)
        now = time.monotonic()
        restarts[:] = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
        if len(restarts) > MAX_RESTARTS:
            log.error("workers keep crashing; stopping certgate")
            stopping = True
            exit_code = 1
            forward(signal.SIGTERM, None)
            continue
        os.close(spawn(slot))
    return exit_code


def _await_workers(pipes: list[int], timeout: float) -> bool:
    """Wait until every worker wrote its ready byte (it has bound its sockets)."""
    import selectors

    deadline = time.monotonic() + timeout
    waiting = set(pipes)
    with selectors.DefaultSelector() as selector:
        for fd in pipes:
            selector.register(fd, selectors.EVENT_READ)
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                fd = int(key.fd)
                data = os.read(fd, 1)
                selector.unregister(fd)
                waiting.discard(fd)
                if data != b"1":  # EOF: the worker died before binding
                    for other in pipes:
                        os.close(other)
                    return False
    for fd in pipes:
        os.close(fd)
    return not waiting
