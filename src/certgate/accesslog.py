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
A JSON line is filled into a fixed template (:func:`json_line`): each value
encoded by the very functions :func:`json.dumps` uses, and the fragments of
a connection, a certificate and a route encoded once, not per line.
Formatting on the loop used to cost about a fifth of a keep-alive request.
A stdout pipe that stalls (a slow journald, a paused ``less``) never blocks
request handling: past :data:`QUEUE_LINES` waiting lines, new ones are
dropped and counted rather than waited for. A clean stop writes everything
that was queued.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import h11

from certgate.config.schema import AccessLog, LogFormat
from certgate.enroll.paths import redact

if TYPE_CHECKING:
    from certgate.config.schema import Route
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
    #: The request as the client sent it: line, headers, body with any chunked
    #: framing (nginx's $request_length); see ClientConnection._take_bytes_in.
    bytes_in: int
    bytes_out: int  # what certgate wrote to the client for this request
    duration: float
    reason: str | None


class _Clock:
    """``time.strftime`` once per second, not once per line."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""
        self._json = ""

    def text(self, at: float) -> str:
        second = int(at)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
            self._json = _value(self._text)
        return self._text

    def json(self, at: float) -> str:
        """:meth:`text` as a JSON string."""
        if int(at) != self._second:
            self.text(at)
        return self._json


def _path_and_reason(item: _Pending) -> tuple[str, str | None]:
    request, admitted = item.request, item.admitted
    path = admitted.path if admitted is not None else (
        request.target.split(b"?", 1)[0].decode("ascii", "replace") if request else "-")
    reason = item.reason
    # An enrollment token is a bearer secret in the path (certgate.enroll),
    # whatever spelling of /enroll/ carried it.
    if "nroll" in path.lower():
        path = redact(path)
    if reason and "nroll" in reason.lower():
        reason = redact(reason)
    return path, reason


def entry_of(item: _Pending, clock: _Clock) -> dict[str, Any]:
    """The log entry of one request (the JSON object, the combined fields)."""
    info, identity, request, admitted = item.info, item.identity, item.request, item.admitted
    path, reason = _path_and_reason(item)
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


# A JSON line is what ``json.dumps(entry_of(item), separators=(",", ":"))``
# wrote before issue #15, byte for byte (tests/test_accesslog_json.py holds
# that as the oracle, hostile values included): the same keys in the same
# order, and each value encoded by the function that json's C encoder
# applies to it (``encode_basestring_ascii`` for a str, ``int.__repr__``,
# ``float.__repr__`` for a finite float), or by a json encoder with the
# same settings for anything else. Filling the template took a line from
# ~18 to ~6 us (the dict, and the JSONEncoder json.dumps builds per call
# when given separators, were most of it).
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii
_NO_IDENTITY = '"cn":null,"serial":null,"fingerprint":null'
_NO_ROUTE = '"upstream":null,"route":null'


def _value(value: object) -> str:
    """One value exactly as json.dumps writes it inside the line."""
    if type(value) is str:
        return _json_str(value)
    if value is None:
        return "null"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return _ENCODER.encode(value)


def _duration_ms(duration: object) -> str:
    """``round(duration * 1000, 3)`` as json writes it, without the float
    round trip for the usual case (it was a fifth of a line's time).

    ``f"{ms:.3f}"`` is the same correctly rounded decimal that ``round``
    computes (both are dtoa's mode 3 on the exact binary value), and below
    1e9 it has at most 13 significant digits, so ``repr`` of the rounded
    float is exactly that decimal without its trailing zeros (one kept
    after the point). Anything else takes the long way.
    """
    if type(duration) is float:
        ms = duration * 1000
        if 0 <= ms < 1e9:
            text = f"{ms:.3f}".rstrip("0")
            return text + "0" if text[-1] == "." else text
    return _value(round(duration * 1000, 3))  # type: ignore[operator]


class _Fragments:
    """JSON text that repeats from line to line, encoded once.

    Per connection (client IP, SNI), per certificate (cn, serial,
    fingerprint), per route (upstream, route name), keyed by the object's
    id; each entry holds its object, so an id is never reused while cached.
    Host and method text are keyed by value. Only the writer thread uses
    it. Each table is emptied when it reaches :attr:`LIMIT` entries (a few
    hundred KB at most).
    """

    LIMIT = 1024

    def __init__(self) -> None:
        self.conns: dict[int, tuple[object, str, str]] = {}
        self.identities: dict[int, tuple[object, str]] = {}
        self.routes: dict[int, tuple[object, str]] = {}
        self.hosts: dict[str, str] = {}
        self.methods: dict[bytes, str] = {}

    def conn(self, info: ConnectionInfo) -> tuple[str, str]:
        hit = self.conns.get(id(info))
        if hit is None or hit[0] is not info:
            if len(self.conns) >= self.LIMIT:
                self.conns.clear()
            hit = self.conns[id(info)] = (info, _value(info.peer_ip), _value(info.sni))
        return hit[1], hit[2]

    def identity(self, identity: ClientIdentity | None) -> str:
        if identity is None:
            return _NO_IDENTITY
        hit = self.identities.get(id(identity))
        if hit is None or hit[0] is not identity:
            if len(self.identities) >= self.LIMIT:
                self.identities.clear()
            text = (f'"cn":{_value(identity.cn if identity else None)},'
                    f'"serial":{_value(identity.serial_hex if identity else None)},'
                    f'"fingerprint":{_value(identity.fingerprint if identity else None)}')
            hit = self.identities[id(identity)] = (identity, text)
        return hit[1]

    def route(self, route: Route) -> str:
        hit = self.routes.get(id(route))
        if hit is None or hit[0] is not route:
            if len(self.routes) >= self.LIMIT:
                self.routes.clear()
            text = f'"upstream":{_value(route.upstream.label)},"route":{_value(route.name)}'
            hit = self.routes[id(route)] = (route, text)
        return hit[1]

    def host(self, host: str) -> str:
        text = self.hosts.get(host) if type(host) is str else None
        if text is None:
            text = _value(host)
            if type(host) is str:
                if len(self.hosts) >= self.LIMIT:
                    self.hosts.clear()
                self.hosts[host] = text
        return text

    def method(self, method: bytes) -> str:
        text = self.methods.get(method) if type(method) is bytes else None
        if text is None:
            text = _value(method.decode("ascii", "replace"))
            if type(method) is bytes:
                if len(self.methods) >= self.LIMIT:
                    self.methods.clear()
                self.methods[method] = text
        return text


def json_line(item: _Pending, clock: _Clock, fragments: _Fragments) -> str:
    """The JSON line of one request (see :data:`_ENCODER` for why a template)."""
    request, admitted = item.request, item.admitted
    path, reason = _path_and_reason(item)
    client_ip, sni = fragments.conn(item.info)
    if admitted:
        host, upstream = fragments.host(admitted.host), fragments.route(admitted.route)
    else:
        host, upstream = "null", _NO_ROUTE
    line = (
        f'{{"time":{clock.json(item.at)},"client_ip":{client_ip},'
        f'{fragments.identity(item.identity)},"sni":{sni},"host":{host},'
        f'"method":{fragments.method(request.method) if request else "null"},'
        f'"path":{_value(path)},"status":{_value(item.status)},'
        f'"bytes_in":{_value(item.bytes_in)},"bytes_out":{_value(item.bytes_out)},'
        f'"duration_ms":{_duration_ms(item.duration)},{upstream}'
    )
    return line + (f',"reason":{_value(reason)}}}' if reason else "}")


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
        clock, fragments = _Clock(), _Fragments()
        while True:
            self._wake.wait()
            self._wake.clear()
            self._hurry.wait(GATHER_SECONDS)
            self._hurry.clear()
            closing = self._closing
            self._write_batch(clock, fragments)
            if closing:
                break

    def _write_batch(self, clock: _Clock, fragments: _Fragments) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        stream = self._stream
        assert stream is not None
        if self._json:
            lines = [json_line(item, clock, fragments) for item in batch]
        else:
            lines = [combined_line(entry_of(item, clock)) for item in batch]
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
