"""One access-log line per request: JSON lines or a combined-style text line.

Carries who (client IP, CN, serial, fingerprint), what (host, method, path,
status, bytes both ways, duration, upstream) and, for refusals, why. Never a
key, never a whole certificate, never a query string (tokens live there:
Immich share keys, Home Assistant auth callbacks).

Lines are formatted on the event loop but written by a background thread
through a bounded queue: a stdout pipe that stalls (a slow journald, a
paused ``less``) must never block request handling. When the queue is full,
lines are dropped and counted rather than waited for.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import IO, TYPE_CHECKING

import h11

from certgate.config.schema import AccessLog, LogFormat

if TYPE_CHECKING:
    from certgate.proxy.admission import Admitted
    from certgate.proxy.client import ClientConnection


# Lines held while the writer is behind: about 10 s of a busy home proxy,
# a few MB at most.
QUEUE_LINES = 10_000


class AccessLogger:
    def __init__(self, settings: AccessLog) -> None:
        self.settings = settings
        self.dropped = 0
        self._stream: IO[str] | None
        if settings.path == "off":
            self._stream = None
        elif settings.path == "-":
            self._stream = sys.stdout
        else:
            self._stream = open(settings.path, "a", encoding="utf-8")  # noqa: SIM115
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE_LINES)
        self._writer: threading.Thread | None = None
        if self._stream is not None:
            self._writer = threading.Thread(target=self._write_lines, name="access-log",
                                            daemon=True)
            self._writer.start()

    def _write_lines(self) -> None:
        stream = self._stream
        assert stream is not None
        while True:
            line = self._queue.get()
            if line is None:
                break
            try:
                stream.write(line)
                if self._queue.empty():
                    stream.flush()
            except (OSError, ValueError):
                continue

    def close(self) -> None:
        """Write what is queued, then stop the writer (and close a log file)."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(5)
            self._writer = None
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()

    def request(
        self,
        conn: ClientConnection,
        request: h11.Request | None,
        admitted: Admitted | None,
        status: int,
        bytes_in: int,
        bytes_out: int,
        duration: float,
        *,
        reason: str | None = None,
    ) -> None:
        if self._stream is None:
            return
        identity = conn.identity
        path = admitted.path if admitted is not None else (
            request.target.split(b"?", 1)[0].decode("ascii", "replace") if request else "-")
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "client_ip": conn.info.peer_ip,
            "cn": identity.cn if identity else None,
            "serial": identity.serial_hex if identity else None,
            "fingerprint": identity.fingerprint if identity else None,
            "sni": conn.info.sni,
            "host": admitted.host if admitted else None,
            "method": request.method.decode("ascii", "replace") if request else None,
            "path": path,
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": round(duration * 1000, 3),
            "upstream": admitted.route.upstream.label if admitted else None,
            "route": admitted.route.name if admitted else None,
        }
        if reason:
            entry["reason"] = reason
        if self.settings.format is LogFormat.JSON:
            line = json.dumps(entry, separators=(",", ":"))
        else:
            line = (
                f'{entry["client_ip"]} - {entry["cn"] or "-"} [{entry["time"]}] '
                f'"{entry["method"] or "-"} {path} HTTP/1.1" {status} {bytes_out} '
                f'host={entry["host"] or "-"} serial={entry["serial"] or "-"} '
                f'fp={entry["fingerprint"] or "-"} dur_ms={entry["duration_ms"]} '
                f'upstream={entry["upstream"] or "-"}'
                + (f' reason="{reason}"' if reason else "")
            )
        try:
            self._queue.put_nowait(line + "\n")
        except queue.Full:
            self.dropped += 1
