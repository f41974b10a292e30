"""systemd's readiness protocol (sd_notify), without libsystemd.

With ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, a unix datagram
socket (an abstract one when it starts with ``@``), and waits for
``READY=1`` before it considers the service started, so units ordered after
certgate start only once its ports are bound. ``RELOADING=1`` with
``MONOTONIC_USEC`` (systemd >= 253) makes ``systemctl reload`` wait until
``READY=1`` says the reload finished. Without ``NOTIFY_SOCKET`` every call
is a no-op, so the same binary runs under any supervisor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time

log = logging.getLogger("certgate.sdnotify")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        target = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if target.startswith("@"):
            self._address = "\0" + target[1:]
        elif target.startswith("/"):
            self._address = target
        self._sock: socket.socket | None = None
        self._stopping = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send one notification; False when there is nobody to tell or it failed."""
        if self._address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(fields).encode("utf-8"), self._address)
        except OSError as exc:  # systemd gone or socket full: never fatal
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Say STOPPING=1 once, however many layers report the shutdown."""
        if self._stopping:
            return False
        self._stopping = True
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
