"""The parent process: one worker in-process, or N forked workers on one port.

With ``workers: N`` (or ``auto``: one per CPU) every worker binds the
listening addresses itself with SO_REUSEPORT, so the kernel spreads new
connections across them without a shared accept lock. The parent validates
the config and prepares shared state (the built-in CA, server certificates)
*before* forking, so workers never race to create them; then it forwards
SIGHUP (reload) and SIGTERM/SIGINT (graceful stop) to every worker, restarts a
worker that dies unexpectedly (at most a few times a minute), and exits 0
once all workers have drained.

Process-wide duties live here too, whatever the worker count: the pid file
``certgate reload`` signals, systemd notifications (READY=1 once every
worker has bound; RELOADING=1 ... READY=1 around a reload, the second sent
when every worker has reported its reload done), and the metrics listener,
which sums the workers' counters (see :mod:`certgate.metrics`).

Theory of operation (several workers). Each worker keeps a status pipe to
the parent: it writes ``1`` once bound and ``R`` after each reload attempt.
The parent's loop waits in a selector on those pipes and on a signal wakeup
pipe (``signal.set_wakeup_fd``), so SIGCHLD, SIGHUP and SIGTERM are handled
in the loop, not in signal handlers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from certgate.config.schema import Config
from certgate.errors import CertgateError
from certgate.health import Verdict, workers_verdict
from certgate.sdnotify import Notifier
from certgate.tls import tickets

if TYPE_CHECKING:
    from certgate.metrics import Exporter

log = logging.getLogger("certgate.supervisor")

# A worker crashing more often than this within RESTART_WINDOW seconds is a
# bug or a broken host, not a blip: stop instead of looping.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# Building a runtime reads certificates and CRLs; a 100k-entry CRL takes
# about a quarter of a second, so 60 s only trips on a wedged worker.
WORKER_START_TIMEOUT = 60.0
# A reload builds a runtime the same way; systemd waits for READY=1 after
# RELOADING=1, so a wedged worker must not hold `systemctl reload` forever.
RELOAD_ACK_TIMEOUT = 60.0
PID_FILE = "certgate.pid"
LOCK_FILE = "certgate.lock"

Ready = Callable[[list[tuple[str, int]]], None]


def worker_count(config: Config) -> int:
    return config.workers if config.workers is not None else max(1, os.cpu_count() or 1)


def pid_file(config: Config) -> Path:
    return config.state_dir / PID_FILE


def run_worker(config: Config, config_path: Path | None, *, reuse_port: bool,
               on_ready: Ready | None = None, exporter: Exporter | None = None,
               notifier: Notifier | None = None,
               reload_done: Callable[[], None] | None = None,
               stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    import asyncio

    import uvloop

    from certgate.server import Worker

    async def main() -> int:
        worker = Worker(config, config_path=config_path, reuse_port=reuse_port,
                        on_ready=on_ready, exporter=exporter, notifier=notifier,
                        reload_done=reload_done, stop_signals=stop_signals)
        return await worker.serve()

    asyncio.set_event_loop_policy(None)
    return uvloop.run(main())


def supervise(config: Config, config_path: Path | None, on_ready: Ready | None = None) -> int:
    """Run certgate until stopped; raises AlreadyRunning or ListenError before serving."""
    lock = _lock_instance(config.state_dir, config_path)
    try:
        return _supervise(config, config_path, on_ready)
    finally:
        if lock is not None:
            os.close(lock)  # releases the flock, after the pid file is gone


def _supervise(config: Config, config_path: Path | None, on_ready: Ready | None) -> int:
    exporter: Exporter | None = None
    if config.metrics.listen is not None:
        from certgate import metrics

        exporter = metrics.prepare()
    notifier = Notifier()
    pidfile = pid_file(config)
    _write_pid_file(pidfile)
    code = 1
    try:
        if worker_count(config) == 1:
            code = run_worker(config, config_path, reuse_port=False, on_ready=on_ready,
                              exporter=exporter, notifier=notifier)
        else:
            code = _Parent(config, config_path, on_ready, exporter, notifier).run()
        return code
    finally:
        notifier.stopping()
        notifier.close()
        if exporter is not None:
            exporter.close()
        _remove_pid_file(pidfile)
        if code == 0:
            log.info("certgate stopped")  # a clean stop says so, as it said it started


class AlreadyRunning(CertgateError):
    """Another certgate holds the instance lock of this state directory."""


#: What the lock file says in place of a path when certgate runs without one.
EMBEDDED = "(embedded default)"


def running_config(state_dir: Path) -> tuple[int, str] | None:
    """(pid, config) that the certgate holding ``state_dir``'s lock wrote:
    the absolute path of the config file it runs (the one a reload re-reads),
    or :data:`EMBEDDED`. None without a lock file of that form (never
    started, or a version that wrote only the pid). Whether that process
    still runs is the caller's question."""
    try:
        data = (state_dir / LOCK_FILE).read_bytes()
    except OSError:
        return None
    return _parse_lock(data)


def _parse_lock(data: bytes) -> tuple[int, str] | None:
    # Everything after the pid line but the final newline is the path, in
    # the file system's bytes: a path may hold newlines or non-UTF-8 bytes.
    pid, _, rest = data.partition(b"\n")
    if not pid.strip().isdigit() or not rest.endswith(b"\n") or rest == b"\n":
        return None
    return int(pid), os.fsdecode(rest[:-1])


def describe_config(config_path: Path | None) -> str:
    """The config as the lock file records it: absolute, symlinks kept, since
    certgate re-reads that name (a symlink swapped to a new file is the
    file a reload reads)."""
    return os.path.abspath(config_path) if config_path is not None else EMBEDDED


def same_config(running: str, given: Path) -> bool:
    """Whether ``certgate reload -c GIVEN`` names the file ``running`` re-reads:
    the same absolute name, or (through a symlink, a hard link) the same file
    now."""
    if running == EMBEDDED:
        return False
    if running == describe_config(given):
        return True
    try:
        return os.path.samefile(running, given)
    except OSError:
        return False


def _lock_instance(state_dir: Path, config_path: Path | None = None) -> int | None:
    """Take STATE_DIR/certgate.lock for this process's lifetime; the fd, or None.

    The file says the holder's pid and the config it runs (one per line):
    ``certgate reload -c FILE`` refuses to report success when FILE is not
    the file the running certgate would re-read.

    One state directory, one running certgate (nginx and Caddy refuse a
    second start the same way): two would race on the built-in CA's
    server certificates, and a second one's start-up or exit would replace
    or delete the first one's pid file, so that ``certgate reload`` no longer
    reaches the instance that is serving. flock(2) is released by the kernel
    whatever way the process ends, so a crash never leaves a stale lock;
    forked workers share the lock through the inherited descriptor.

    Raises AlreadyRunning naming the holder's pid; a state directory that
    cannot hold the lock (read-only) is logged and does not stop the proxy,
    as for the pid file.
    """
    import fcntl

    from certgate.fsutil import ensure_private_dir

    path = state_dir / LOCK_FILE
    try:
        ensure_private_dir(state_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        log.warning("cannot create the instance lock %s (a second certgate on this state "
                    "directory will not be refused): %s", path, exc)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        data = os.pread(fd, 8192, 0)
        os.close(fd)
        record = _parse_lock(data)
        holder = str(record[0]) if record else \
            data.partition(b"\n")[0].decode("ascii", "replace").strip() or "unknown"
        runs = f", running {record[1]}" if record else ""
        raise AlreadyRunning(
            f"certgate is already running with state directory {state_dir} (pid {holder}"
            f"{runs}; it holds {path}); stop it first to run another config, or apply "
            "changes to the file it runs with certgate reload -c THAT-FILE") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode() + os.fsencode(describe_config(config_path))
              + b"\n", 0)
    return fd


def _write_pid_file(path: Path) -> None:
    from certgate.fsutil import atomic_write, ensure_private_dir

    try:
        ensure_private_dir(path.parent)
        atomic_write(path, f"{os.getpid()}\n".encode(), mode=0o644)
    except OSError as exc:  # a read-only state dir must not stop the proxy
        log.warning("cannot write pid file %s (certgate reload needs --pid): %s", path, exc)


def _remove_pid_file(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


class _Parent:
    """Fork, watch and signal N workers (see the module's theory of operation)."""

    def __init__(self, config: Config, config_path: Path | None, on_ready: Ready | None,
                 exporter: Exporter | None, notifier: Notifier) -> None:
        self.config = config
        self.config_path = config_path
        self.on_ready = on_ready
        self.exporter = exporter
        self.notifier = notifier
        self.count = worker_count(config)
        self.children: dict[int, tuple[int, int]] = {}  # pid -> (slot, status pipe)
        self.restarts: list[float] = []
        self.stopping = False
        self.exit_code = 0
        self.selector = selectors.DefaultSelector()
        self.starting: set[int] = set()  # pids not yet bound
        self.reload_pending: set[int] = set()
        self.reload_deadline = 0.0

    def spawn(self, slot: int) -> int:
        status_read, status_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(status_read)
            for key in list(self.selector.get_map().values()):
                with contextlib.suppress(OSError):
                    os.close(key.fd)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            # Ctrl-C reaches the whole process group; the parent forwards it
            # as one SIGTERM, so a second Ctrl-C is a second signal here.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if self.exporter is not None:
                self.exporter.forget()

            def bound(_: list[tuple[str, int]]) -> None:
                os.write(status_write, b"1")

            def reloaded() -> None:
                with contextlib.suppress(OSError):
                    os.write(status_write, b"R")

            code = 1
            try:
                code = run_worker(self.config, self.config_path, reuse_port=True,
                                  on_ready=bound, reload_done=reloaded,
                                  stop_signals=(signal.SIGTERM,))
            except CertgateError as exc:  # e.g. a busy port: one line, no traceback
                log.error("worker %d: %s", slot, exc)
                code = exc.exit_code
            except BaseException:
                log.exception("worker %d crashed", slot)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(status_write)
        os.set_blocking(status_read, False)
        self.children[pid] = (slot, status_read)
        self.starting.add(pid)
        self.selector.register(status_read, selectors.EVENT_READ, pid)
        return pid

    def signal_all(self, signum: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def run(self) -> int:
        from certgate.runtime import build_runtime

        # Ticket keys every worker derives alike, drawn before forking.
        tickets.prepare()
        build_runtime(self.config).close()  # prepare CA and certificates once, before forking
        wake_read, wake_write = os.pipe()
        for fd in (wake_read, wake_write):
            os.set_blocking(fd, False)
        self.selector.register(wake_read, selectors.EVENT_READ, None)
        previous = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, lambda *_: None)  # handled in the loop via the wakeup fd
        try:
            for slot in range(self.count):
                self.spawn(slot)
            start_deadline = time.monotonic() + WORKER_START_TIMEOUT
            announced = False
            while self.children:
                if not announced and not self.starting and not self.stopping:
                    announced = True
                    self.on_all_bound()
                if not announced and self.starting and time.monotonic() > start_deadline:
                    log.error("workers did not start; stopping")
                    self.stop(1)
                    start_deadline = float("inf")
                self.tick(wake_read)
        finally:
            signal.set_wakeup_fd(previous)
            self.selector.close()
            for fd in (wake_read, wake_write):
                os.close(fd)
        return self.exit_code

    def on_all_bound(self) -> None:
        if self.exporter is not None:
            self.exporter.probe = self.health
            self.exporter.serve_for(self.config)
        if self.on_ready is not None:
            self.on_ready([(listen.host, listen.port) for listen in self.config.listen])
        self.notifier.ready(f"serving with {self.count} workers")

    def health(self) -> Verdict:
        """What /healthz answers (called from the metrics thread: reads counts only)."""
        return workers_verdict(self.count, len(self.children), len(self.starting),
                               self.stopping)

    def stop(self, code: int) -> None:
        if not self.stopping:
            self.stopping = True
            self.exit_code = max(self.exit_code, code)
            self.notifier.stopping()
        self.signal_all(signal.SIGTERM)

    def tick(self, wake_read: int) -> None:
        timeout = 1.0
        if self.reload_pending:
            timeout = max(0.0, min(timeout, self.reload_deadline - time.monotonic()))
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self.on_signals(os.read(wake_read, 64))
            else:
                self.on_status(key.data, key.fd)
        self.reap()
        if self.reload_pending and time.monotonic() > self.reload_deadline:
            log.error("reload: %d worker(s) did not report back in %.0f s",
                      len(self.reload_pending), RELOAD_ACK_TIMEOUT)
            self.reload_finished()

    def on_signals(self, data: bytes) -> None:
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.stop(0)
            elif signum == signal.SIGHUP and not self.stopping:
                self.reload()

    def reload(self) -> None:
        self.notifier.reloading()
        self.reload_pending = set(self.children) - self.starting
        self.reload_deadline = time.monotonic() + RELOAD_ACK_TIMEOUT
        self.signal_all(signal.SIGHUP)
        if self.config_path is not None:
            # The parent's own copy only feeds the metrics inventory and new
            # workers; each worker validates and applies the file itself.
            from certgate.config.loader import load_config

            with contextlib.suppress(CertgateError, OSError):
                self.config = load_config(self.config_path)
                if self.exporter is not None:
                    self.exporter.config_changed(self.config)
        if not self.reload_pending:
            self.reload_finished()

    def reload_finished(self) -> None:
        self.reload_pending.clear()
        self.notifier.ready("reloaded")

    def on_status(self, pid: int, fd: int) -> None:
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return
        if not data:  # the worker closed its end: it is exiting
            self.selector.unregister(fd)
            return
        for byte in data:
            if byte == ord("1"):
                self.starting.discard(pid)
            elif byte == ord("R") and pid in self.reload_pending:
                self.reload_pending.discard(pid)
                if not self.reload_pending:
                    self.reload_finished()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            entry = self.children.pop(pid, None)
            if entry is None:
                continue
            slot, fd = entry
            if fd in self.selector.get_map():
                self.selector.unregister(fd)
            os.close(fd)
            if self.exporter is not None:
                self.exporter.worker_gone(pid)
            was_starting = pid in self.starting
            self.starting.discard(pid)
            if pid in self.reload_pending:
                self.reload_pending.discard(pid)
                if not self.reload_pending:
                    self.reload_finished()
            if self.stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if was_starting:
                log.error("worker %d (pid %d) exited with %d before binding; stopping",
                          slot, pid, code)
                self.stop(1)
                continue
            log.error("worker %d (pid %d) exited with %d; restarting", slot, pid, code)
            now = time.monotonic()
            self.restarts[:] = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
            if len(self.restarts) > MAX_RESTARTS:
                log.error("workers keep crashing; stopping certgate")
                self.stop(1)
                continue
            self.spawn(slot)
