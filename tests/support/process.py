"""Run certgate as a real subprocess and wait for it on conditions, not sleeps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

READY = re.compile(r"certgate: ready on (.*)$")


def wait_until(condition: Callable[[], object], timeout: float, what: str,
               interval: float = 0.02, logs: Callable[[], str] | None = None) -> object:
    """Poll ``condition`` until truthy or fail after ``timeout`` seconds
    (with ``logs()`` in the message, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            shown = f"; logs:\n{logs()}" if logs is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{shown}")
        time.sleep(interval)


class CertgateProcess:
    """``certgate run -c FILE`` in a subprocess, with its output captured."""

    def __init__(self, config_text: str | None, workdir: Path, *, name: str = "certgate.yaml",
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.extra_env = env or {}
        self.workdir = workdir
        self.config_path: Path | None = None
        if config_text is not None:  # None: run on ./certgate.yaml or the embedded default
            self.config_path = workdir / name
            self.config_path.write_text(config_text)
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self.ports: list[int] = []
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self.ports[0]

    def start(self, timeout: float = 30.0) -> CertgateProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "certgate", *self.args, "run",
             *(["-c", str(self.config_path)] if self.config_path else [])],
            cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env,
        )
        self._pump(self.proc.stdout, self.stdout_lines)
        self._pump(self.proc.stderr, self.stderr_lines)

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self._reap()
                raise AssertionError("certgate exited early:\n" + "".join(self.stderr_lines))
            for line in self.stderr_lines:
                match = READY.search(line)
                if match:
                    self.ports = [int(p.rsplit(":", 1)[1]) for p in match.group(1).split(", ")]
                    return True
            return False

        wait_until(ready, timeout, "certgate to be ready")
        return self

    def _pump(self, stream: object, sink: list[str]) -> None:
        def run() -> None:
            for line in stream:  # type: ignore[attr-defined]
                sink.append(line)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _reap(self) -> None:
        """After exit: let the readers reach EOF, then close the pipes."""
        assert self.proc is not None
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self._reap()
                raise AssertionError("certgate did not stop on SIGTERM") from None
        self._reap()
        return self.proc.returncode

    def log_text(self) -> str:
        return "".join(self.stderr_lines)

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> None:
        wait_until(lambda: needle in self.log_text(), timeout, f"log line {needle!r}")


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for configs where port 0 will not do:
    several workers binding port 0 would each get a different port)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
