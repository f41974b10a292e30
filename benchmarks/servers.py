"""The processes under test: certgate, the fast upstream, and a common handle for nginx.

Every server writes its output to files in its own directory, never to a
pipe: the harness then has no reader threads, so forking load-generator
processes from it is safe, and a server can never block on a full pipe.
Readiness is a condition with a deadline (certgate's ``ready on`` line, a
TCP connect for nginx), never a sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import procstat
from benchmarks.pki import Chain

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def child_env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this checkout's src and benchmarks first."""
    paths = [str(ROOT / "src"), str(ROOT)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", **extra)


def free_port() -> int:
    """A port that was free a moment ago (each worker must bind the same one,
    so certgate's ``port 0`` cannot be used with several workers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def worker_count(workers: str) -> int:
    return (os.cpu_count() or 1) if workers == "auto" else int(workers)


@dataclass
class ServerProcess:
    """A started server: its port, its process tree, and how to stop it."""

    name: str  # e.g. "certgate", "nginx", "nginx (tickets off)"
    workers: str  # as asked: "1" or "auto"
    port: int
    directory: Path
    proc: subprocess.Popen[bytes]
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return procstat.tree_cpu(self.pid)

    def rss(self) -> int:
        return procstat.tree_rss(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        out: list[str] = []
        for path in sorted(self.directory.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out += [f"{path.name}: {line}" for line in text]
        return "\n".join(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _spawn(argv: list[str], directory: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with (directory / "stdout.log").open("ab") as out, \
            (directory / "stderr.log").open("ab") as err:
        return subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env or child_env(), cwd=cwd or directory)


def certgate_config(*, port: int, upstream_port: int, chain: Chain, workers: str,
                    state_dir: Path, tickets: bool = False, crl: Path | None = None,
                    as_users: bool = False) -> str:
    """A certgate config equivalent to :func:`benchmarks.nginx.nginx_config`;
    ``as_users`` keeps the default config's access log (stdout, JSON) and
    metrics listener (on a free port, so several certgates can run)."""
    crls = f"[{str(crl)!r}]" if crl is not None else "[]"
    observability = (f'metrics: {{listen: "127.0.0.1:{free_port()}"}}' if as_users else
                     'metrics: {listen: "off"}\naccess_log: {path: "off"}')
    return f"""\
state_dir: {str(state_dir)!r}
listen: ["127.0.0.1:{port}"]
workers: {workers}
{observability}
tls:
  certificates:
    - {{cert: {str(chain.server_cert)!r}, key: {str(chain.server_key)!r}}}
  session_tickets: {"true" if tickets else "false"}
client_auth:
  trusted_cas: [{str(chain.trust)!r}]
  crls: {crls}
limits:
  header_timeout: 60s
routes:
  - host: localhost
    upstream: http://127.0.0.1:{upstream_port}
    client_auth: require
"""


def start_certgate(directory: Path, *, name: str, workers: str, chain: Chain,
                   upstream_port: int, tickets: bool = False, crl: Path | None = None,
                   profile_to: Path | None = None, as_users: bool = False) -> ServerProcess:
    """Start ``python -m certgate run`` and wait for its ready line.

    With ``profile_to`` the worker runs under cProfile (see
    :mod:`benchmarks.profiled`); that only covers the worker when
    ``workers`` is 1, which runs in the supervisor's own process.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "certgate.yaml"
    config.write_text(certgate_config(port=port, upstream_port=upstream_port, chain=chain,
                                      workers=workers, state_dir=directory / "state",
                                      tickets=tickets, crl=crl, as_users=as_users))
    module = "benchmarks.profiled" if profile_to is not None else "certgate"
    env = child_env(CERTGATE_BENCH_PROFILE=str(profile_to)) if profile_to else child_env()
    proc = _spawn([sys.executable, "-m", module, "--log-level", "warning", "run",
                   "-c", str(config)], directory, env)
    server = ServerProcess(name, workers, port, directory, proc)
    log = directory / "stderr.log"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{server.log_tail()}")
        return "certgate: ready on" in log.read_text(errors="replace")

    try:
        wait_for(ready, START_TIMEOUT, f"{name} to be ready")
    except BaseException:
        server.stop()
        raise
    return server


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def upstream_accepted(port: int) -> int:
    """Connections the benchmark upstream has accepted so far (its ``/__stats``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /__stats HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return int(data.rpartition(b"\r\n\r\n")[2])


def start_upstream(directory: Path) -> ServerProcess:
    """Start the fast upstream (:mod:`benchmarks.upstream`) and read its port."""
    directory.mkdir(parents=True, exist_ok=True)
    proc = _spawn([sys.executable, "-m", "benchmarks.upstream"], directory, cwd=ROOT)
    server = ServerProcess("upstream", "1", 0, directory, proc)
    out = directory / "stdout.log"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"upstream exited early:\n{server.log_tail()}")
        text = out.read_text()
        if text.startswith("ready ") and text.endswith("\n"):
            server.port = int(text.split()[1])
            return True
        return False

    wait_for(ready, START_TIMEOUT, "the upstream to be ready")
    return server
