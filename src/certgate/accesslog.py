"""One access-log line per request: JSON lines or a combined-style text line.

Carries who (client IP, CN, serial, fingerprint), what (host, method, path,
status, bytes both ways, duration, upstream) and, for refusals, why. Never a
key, never a whole certificate, never a query string (tokens live there:
Immich share keys, Home Assistant auth callbacks), never an enrollment
token (the path segment after ``/enroll/`` is redacted).

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
from typing import IO, TYPE_CHECKING, Any

import h11

from certgate.config.schema import AccessLog, LogFormat
from certgate.enroll.paths import redact

if TYPE_CHECKING:
    from certgate.proxy.admission import Admitted
    from certgate.proxy.info import ConnectionInfo
    from certgate.tls.identity import ClientIdentity


# Lines held while the writer is behind: about 10 s of a busy home proxy,
# a few MB at most.
QUEUE_LINES = 10_000


# Combined-format escaping, as nginx escapes log variables (``\xHH``, upper
# case hex): every byte outside visible ASCII, and ``"`` and ``\`` so an
# escape can always be told from the text and no value can close a quoted
# field. Unquoted fields also escape the space that separates them.
_QUOTED_RAW = frozenset(range(0x20, 0x7F)) - {ord('"'), ord("\\")}
_FIELD_RAW = _QUOTED_RAW - {ord(" ")}


def _escape(value: object, raw: frozenset[int]) -> str:
    data = str(value).encode("utf-8", "surrogatepass")
    if all(b in raw for b in data):
        return data.decode("ascii")
    return "".join(chr(b) if b in raw else f"\\x{b:02X}" for b in data)


def field(value: object) -> str:
    """An unquoted combined-format field: ``-`` when empty, else escaped."""
    if value is None or value == "":
        return "-"
    return _escape(value, _FIELD_RAW)


def quoted(value: object) -> str:
    """The inside of a double-quoted combined-format field, escaped."""
    return _escape(value, _QUOTED_RAW)


def combined_line(entry: dict[str, Any]) -> str:
    """One combined-style line; every field escaped, so exactly one line.

    ``CLIENT - CN [TIME] "METHOD PATH HTTP/1.1" STATUS BYTES host=.. serial=..
    fp=.. dur_ms=.. upstream=..`` and, for refusals, ``reason="..."``. A
    field reads back by replacing each ``\\xHH`` with its byte (UTF-8).
    """
    # METHOD and PATH are fields themselves (no raw space, quote or
    # backslash), so the quoted request needs no second escaping.
    request = f"{field(entry['method'])} {field(entry['path'])} HTTP/1.1"
    line = (
        f"{field(entry['client_ip'])} - {field(entry['cn'])} [{field(entry['time'])}] "
        f"\"{request}\" {field(entry['status'])} {field(entry['bytes_out'])} "
        f"host={field(entry['host'])} serial={field(entry['serial'])} "
        f"fp={field(entry['fingerprint'])} dur_ms={field(entry['duration_ms'])} "
        f"upstream={field(entry['upstream'])}"
    )
    reason = entry.get("reason")
    return line + (f' reason="{quoted(reason)}"' if reason else "")


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
        info: ConnectionInfo,
        identity: ClientIdentity | None,
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
        path = admitted.path if admitted is not None else (
            request.target.split(b"?", 1)[0].decode("ascii", "replace") if request else "-")
        if "/enroll/" in path:
            # An enrollment token is a bearer secret in the path (certgate.enroll).
            path = redact(path)
        if reason and "/enroll/" in reason:
            reason = redact(reason)
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "client_ip": info.peer_ip,
            "cn": identity.cn if identity else None,
            "serial": identity.serial_hex if identity else None,
            "fingerprint": identity.fingerprint if identity else None,
            "sni": info.sni,
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
            line = combined_line(entry)
        try:
            self._queue.put_nowait(line + "\n")
        except queue.Full:
            self.dropped += 1
