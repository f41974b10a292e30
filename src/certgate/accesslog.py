"""One access-log line per request: JSON lines or a combined-style text line.

Carries who (client IP, CN, serial, fingerprint), what (host, method, path,
status, bytes both ways, duration, upstream) and, for refusals, why. Never a
key, never a whole certificate, never a query string (tokens live there:
Immich share keys, Home Assistant auth callbacks), never an enrollment
token (the path segment after ``/enroll/`` is redacted).

Off the hot path (issue #15): the event loop only appends the request's
values (a tuple of references) to a list under a lock; a writer thread,
woken by the first line, lets lines gather for :data:`GATHER_SECONDS`,
then takes the whole list at once, formats it there (JSON or combined, the
timestamp text cached per second) and writes the batch with one call.
Formatting on the loop used to cost about a fifth of a keep-alive request.
A stdout pipe that stalls (a slow journald, a paused ``less``) never blocks
request handling: past :data:`QUEUE_LINES` waiting lines, new ones are
dropped and counted rather than waited for. A clean stop writes everything
that was queued.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, NamedTuple

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
# Once woken by a first line, the writer lets lines gather this long before
# it writes them: waking it for every line cost more than formatting them
# (a thread switch and a GIL handoff per request: measured 0.17 ms of CPU
# per keep-alive request, against ~20 us to format and write one line).
# nginx's access_log buffer= likewise holds lines (its flush= is the bound).
GATHER_SECONDS = 0.1
# ... unless this many are waiting: then at once, far below QUEUE_LINES.
HURRY_LINES = QUEUE_LINES // 4


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


class _Pending(NamedTuple):
    """What the event loop keeps of a request: references, no formatting."""

    at: float
    info: ConnectionInfo
    identity: ClientIdentity | None
    request: h11.Request | None
    admitted: Admitted | None
    status: int
    bytes_in: int
    bytes_out: int
    duration: float
    reason: str | None


class _Clock:
    """``time.strftime`` once per second, not once per line."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def text(self, at: float) -> str:
        second = int(at)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._text


def entry_of(item: _Pending, clock: _Clock) -> dict[str, Any]:
    """The log entry of one request (the JSON object, the combined fields)."""
    info, identity, request, admitted = item.info, item.identity, item.request, item.admitted
    path = admitted.path if admitted is not None else (
        request.target.split(b"?", 1)[0].decode("ascii", "replace") if request else "-")
    reason = item.reason
    # An enrollment token is a bearer secret in the path (certgate.enroll),
    # whatever spelling of /enroll/ carried it.
    if "nroll" in path.lower():
        path = redact(path)
    if reason and "nroll" in reason.lower():
        reason = redact(reason)
    entry: dict[str, Any] = {
        "time": clock.text(item.at),
        "client_ip": info.peer_ip,
        "cn": identity.cn if identity else None,
        "serial": identity.serial_hex if identity else None,
        "fingerprint": identity.fingerprint if identity else None,
        "sni": info.sni,
        "host": admitted.host if admitted else None,
        "method": request.method.decode("ascii", "replace") if request else None,
        "path": path,
        "status": item.status,
        "bytes_in": item.bytes_in,
        "bytes_out": item.bytes_out,
        "duration_ms": round(item.duration * 1000, 3),
        "upstream": admitted.route.upstream.label if admitted else None,
        "route": admitted.route.name if admitted else None,
    }
    if reason:
        entry["reason"] = reason
    return entry


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
        self._json = settings.format is LogFormat.JSON
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._wake = threading.Event()  # a line waits (set by the first one)
        self._hurry = threading.Event()  # write now: many lines, or a stop
        self._closing = False
        self._writer: threading.Thread | None = None
        if self._stream is not None:
            self._writer = threading.Thread(target=self._write_batches, name="access-log",
                                            daemon=True)
            self._writer.start()

    def _write_batches(self) -> None:
        clock = _Clock()
        while True:
            self._wake.wait()
            self._wake.clear()
            self._hurry.wait(GATHER_SECONDS)
            self._hurry.clear()
            closing = self._closing
            self._write_batch(clock)
            if closing:
                break

    def _write_batch(self, clock: _Clock) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        stream = self._stream
        assert stream is not None
        lines = []
        for item in batch:
            entry = entry_of(item, clock)
            lines.append(json.dumps(entry, separators=(",", ":")) if self._json
                         else combined_line(entry))
        lines.append("")
        try:
            stream.write("\n".join(lines))
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stdout: nothing to tell it with

    def close(self) -> None:
        """Write what is queued, then stop the writer (and close a log file)."""
        if self._writer is not None:
            self._closing = True
            self._wake.set()
            self._hurry.set()
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
        """Queue one line (formatted later, by the writer thread)."""
        if self._writer is None:
            return
        item = _Pending(time.time(), info, identity, request, admitted, status, bytes_in,
                        bytes_out, duration, reason)
        with self._lock:
            pending = self._pending
            if len(pending) >= QUEUE_LINES:
                self.dropped += 1
                return
            pending.append(item)
            waiting = len(pending)
        if waiting == 1:
            self._wake.set()
        elif waiting == HURRY_LINES:
            self._hurry.set()
