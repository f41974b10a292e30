"""Acceptance 5 of the revocation issue: reloads never drop a request.

A steady load runs for the whole test: keep-alive clients, a client that
opens a new connection per request, and a keep-alive client streaming 1 MiB
bodies (so requests are in flight when a reload lands). Every failure of any
kind (an exception, a status other than 200, a short body) is counted. Across

* SIGHUP with a broken config: the old config keeps serving, and the log
  names the problem as ``FILE:LINE: key.path: reason``;
* SIGHUP with the fixed config, which adds a route: the new route works;
* ``certgate reload -c FILE`` with a broken file: exit 2, the problem on
  stderr, and certgate is not signalled;
* ``certgate reload -c FILE`` with a good file adding another route: live;

the load sees zero errors. The SIGHUP test runs with one worker and with two
(SO_REUSEPORT), where every worker must reload.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import LocalCA
from support.clients import Connection, client_context
from support.process import CertgateProcess, wait_until

LOAD_LIMIT = 120.0  # no load thread runs longer than this, whatever happens
BIG = 1 << 20
PROGRESS = 30  # requests the load must complete between two steps


class Load:
    """Client threads hammering certgate until stopped; they count, never raise."""

    def __init__(self, port: int, context: Callable[[], ssl.SSLContext]) -> None:
        self.port = port
        self.context = context
        self.errors: list[str] = []
        self.done = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + LOAD_LIMIT
        self._threads = [
            threading.Thread(target=self._keepalive, args=("/echo", None), daemon=True),
            threading.Thread(target=self._keepalive, args=("/echo", None), daemon=True),
            threading.Thread(target=self._keepalive, args=(f"/bytes/{BIG}", BIG), daemon=True),
            threading.Thread(target=self._fresh, daemon=True),
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        assert not any(t.is_alive() for t in self._threads), "a load thread is stuck"

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _record(self, error: str | None) -> None:
        with self._lock:
            if error is None:
                self.done += 1
            else:
                self.errors.append(error)

    def _check(self, conn: Connection, target: str, size: int | None) -> str | None:
        response = conn.request("GET", target)
        if response.status != 200:
            return f"{target}: {response.status} {response.body[:200]!r}"
        if size is not None and len(response.body) != size:
            return f"{target}: {len(response.body)} bytes instead of {size}"
        return None

    def _keepalive(self, target: str, size: int | None) -> None:
        ctx = self.context()
        conn: Connection | None = None
        while self._running():
            try:
                if conn is None:
                    conn = Connection(self.port, ctx, timeout=10)
                self._record(self._check(conn, target, size))
            except Exception as exc:  # every failure counts, whatever it is
                self._record(f"keep-alive {target}: {exc!r}")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _fresh(self) -> None:
        ctx = self.context()
        while self._running():
            try:
                with Connection(self.port, ctx, timeout=10) as conn:
                    self._record(self._check(conn, "/echo", None))
            except Exception as exc:
                self._record(f"new connection: {exc!r}")

    def progress(self, what: str, count: int = PROGRESS) -> None:
        """Wait for ``count`` more completed requests."""
        start = self.done
        wait_until(lambda: self.done >= start + count, 30, f"load progress {what}")


def _free_port() -> int:
    """A port for ``workers: 2``, which cannot listen on port 0 (tests/test_workers.py)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(local_ca: LocalCA, upstream_port: int, workers: int, hosts: list[str],
            broken: bool = False, port: int = 0) -> str:
    routes = "".join(
        f'  - host: {host}\n    upstream: "http://127.0.0.1:{upstream_port}"\n'
        for host in hosts)
    if broken:  # a typo in a new route: unknown key, and the required one missing
        routes += "  - host: broken.test\n    upstreem: whoami\n"
    return f"""state_dir: {local_ca.state}
listen: ["127.0.0.1:{port}"]
workers: {workers}
client_auth: {{trusted_cas: [builtin]}}
routes:
{routes}metrics: {{listen: "off"}}
"""


def _serves(port: int, ctx: ssl.SSLContext, host: str, times: int = 1) -> bool:
    """``times`` new connections in a row to ``host`` all get 200."""
    for _ in range(times):
        try:
            with Connection(port, ctx, sni=host, timeout=5) as conn:
                if conn.request("GET", "/echo", host=host).status != 200:
                    return False
        except (ssl.SSLError, ConnectionError, OSError):
            return False
    return True


def _context(local_ca: LocalCA) -> Callable[[], ssl.SSLContext]:
    carol = local_ca["carol"]
    return lambda: client_context(local_ca.root, carol.cert, carol.key)


def _problem_line(config: Path) -> re.Pattern[str]:
    return re.compile(r"reload failed, keeping the running config: "
                      + re.escape(str(config)) + r":(\d+): routes\[\d+\]\.upstreem: unknown key")


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_broken_then_fixed_under_load(start_certgate, local_ca: LocalCA, upstream,
                                             workers: int) -> None:
    port = _free_port() if workers > 1 else 0
    proxy: CertgateProcess = start_certgate(
        _config(local_ca, upstream.port, workers, ["localhost"], port=port))
    config = proxy.config_path
    assert config is not None
    ctx = _context(local_ca)()

    with Load(proxy.port, _context(local_ca)) as load:
        load.progress("before any reload")

        config.write_text(_config(local_ca, upstream.port, workers,
                                  ["localhost", "new.test"], broken=True, port=port))
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: len(_problem_line(config).findall(proxy.log_text())) >= workers,
                   15, "every worker to log the broken config as FILE:LINE: key.path")
        line = int(_problem_line(config).findall(proxy.log_text())[0])
        assert config.read_text().splitlines()[line - 1].strip() == "upstreem: whoami"
        load.progress("after the failed reload")
        assert not _serves(proxy.port, ctx, "new.test"), "the broken config was applied"
        assert _serves(proxy.port, ctx, "localhost")

        config.write_text(_config(local_ca, upstream.port, workers, ["localhost", "new.test"],
                                  port=port))
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: proxy.log_text().count("configuration reloaded") >= workers, 15,
                   "every worker to reload")
        # Connections land on any worker: every one of them must know the route.
        assert _serves(proxy.port, ctx, "new.test", times=8)
        load.progress("after the good reload")

    assert load.errors == [], f"{len(load.errors)} failed of {load.done}: {load.errors[:5]}"
    assert load.done >= 3 * PROGRESS


def _reload_cli(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "certgate", "reload", "-c", str(config)],
                          capture_output=True, text=True, check=False, timeout=60)


def test_reload_command_under_load(start_certgate, local_ca: LocalCA, upstream,
                                   tmp_path: Path) -> None:
    proxy: CertgateProcess = start_certgate(_config(local_ca, upstream.port, 1, ["localhost"]))
    config = proxy.config_path
    assert config is not None
    assert proxy.proc is not None
    pid_file = local_ca.state / "certgate.pid"
    wait_until(pid_file.exists, 10, "the pid file")
    assert int(pid_file.read_text()) == proxy.proc.pid
    ctx = _context(local_ca)()

    with Load(proxy.port, _context(local_ca)) as load:
        load.progress("before any reload")

        # A broken file: refused at the terminal, exit 2, nothing signalled.
        broken = tmp_path / "broken.yaml"
        broken.write_text(_config(local_ca, upstream.port, 1, ["localhost", "cli.test"],
                                  broken=True))
        result = _reload_cli(broken)
        assert result.returncode == 2, result.stdout + result.stderr
        assert re.search(re.escape(str(broken)) + r":\d+: routes\[\d+\]\.upstreem: unknown key",
                         result.stderr), result.stderr
        assert "asked certgate" not in result.stdout

        # A good file adding a route: signalled, and the route goes live.
        config.write_text(_config(local_ca, upstream.port, 1, ["localhost", "cli.test"]))
        result = _reload_cli(config)
        assert result.returncode == 0, result.stderr
        assert f"pid {proxy.proc.pid}" in result.stdout
        wait_until(lambda: _serves(proxy.port, ctx, "cli.test"), 15, "the new route")
        load.progress("after the reload")

    # Had the broken run signalled certgate, its reload would have run (and
    # been logged) before the good one: reloads run one at a time, in order.
    assert proxy.log_text().count("configuration reloaded") == 1
    assert "reload failed" not in proxy.log_text()
    assert load.errors == [], f"{len(load.errors)} failed of {load.done}: {load.errors[:5]}"
