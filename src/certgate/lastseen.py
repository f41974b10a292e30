"""Last seen: when, from where, with what and on which route each built-in
certificate was last used.

Theory of operation
-------------------
The proxy answers many requests a second; the inventory needs "last used"
to the minute. So each worker keeps a :class:`Recorder`: one dict,
serial -> the newest sighting, updated by a single assignment per request
on the event loop (no parsing, no I/O; the User-Agent is read from the
request object later). Every :data:`FLUSH_INTERVAL` seconds, and once more
on a clean stop, the worker swaps the dict for an empty one on the loop and
writes the batch from an executor thread into ``STATE/lastseen.sqlite3``.

Why a file of its own: the revocation watcher (:mod:`certgate.watch`) reloads
roles and CRLs whenever ``ca/inventory.sqlite3`` or its ``-wal`` changes; a
last-seen write there would wake every worker's watcher every flush. And the
inventory is the CA's source of truth, written under the CA lock; telemetry
must not queue behind (or in front of) an issuance.

Several workers (``workers: N``) each flush their own batch; the upsert keeps
whichever sighting is newer, so the order of flushes does not matter.

Hostile input: the User-Agent is whatever the client sent. It is stored
decoded, with every control or format character (C0, C1, bidi overrides)
replaced by U+FFFD and cut to :data:`MAX_TEXT` characters, and
:func:`printable` escapes again whatever a terminal gets, in case the file
was written by something else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import h11

from certgate.ca.keys import serial_hex

log = logging.getLogger("certgate.lastseen")

__all__ = [
    "DATABASE",
    "FLUSH_ENV",
    "FLUSH_INTERVAL",
    "MAX_TEXT",
    "Recorder",
    "Seen",
    "flush_interval",
    "printable",
    "read_seen",
    "sanitise",
    "write_batch",
]

#: Under the state directory, next to ``ca/`` (see the module docstring).
DATABASE = "lastseen.sqlite3"
#: Seconds between flushes. The issue asks for ``ca list`` to show a use
#: within a minute; 15 s leaves room for a slow disk, and a flush is one
#: small transaction, so the cost is a few writes a minute per worker.
FLUSH_INTERVAL = 15.0
#: Tests shorten the interval with this variable (seconds, > 0); it is not
#: a config key because no deployment needs another value.
FLUSH_ENV = "CERTGATE_LAST_SEEN_FLUSH_SECONDS"
#: Characters kept of a User-Agent or route. Browser User-Agents run to
#: about 150 characters; 256 keeps every real one and bounds the file.
MAX_TEXT = 256
#: Serials held between flushes. Every entry is a certificate the built-in
#: CA issued and the client proved it holds, so the count is bounded by the
#: inventory anyway; the cap only keeps a pathological case from growing a
#: worker's memory without bound (10,000 entries are a few MB at most).
MAX_PENDING = 10_000
#: Waiting for another worker's flush; executor thread only, never the loop.
BUSY_TIMEOUT = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    serial     TEXT PRIMARY KEY,  -- ca.keys.serial_hex, as in the inventory
    last_seen  TEXT NOT NULL,     -- RFC 3339 UTC, to the second, as shown
    at         REAL NOT NULL,     -- Unix time, sub-second: which sighting is newer
    ip         TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    route      TEXT NOT NULL
)
"""

_UPSERT = """
INSERT INTO seen VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT(serial) DO UPDATE SET
    last_seen = excluded.last_seen, at = excluded.at, ip = excluded.ip,
    user_agent = excluded.user_agent, route = excluded.route
WHERE excluded.at > seen.at
"""

#: (time.time(), client IP, the request or None, route name): what one
#: request leaves behind; turned into a :class:`Seen` off the loop.
Pending = tuple[float, str, "h11.Request | None", str]


@dataclass(frozen=True, slots=True)
class Seen:
    """The newest recorded use of one certificate."""

    serial: int
    last_seen: str  # RFC 3339 UTC (``2026-05-09T07:35:25Z``)
    ip: str
    user_agent: str
    route: str
    at: float = 0.0  # Unix time; orders two sightings in the same second


def flush_interval(environ: Mapping[str, str] = os.environ) -> float:
    """:data:`FLUSH_INTERVAL`, or the test override if it is a positive number."""
    text = environ.get(FLUSH_ENV)
    if text:
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if 0 < value <= FLUSH_INTERVAL:
            return value
        log.warning("ignoring %s=%r: not a number of seconds in (0, %g]", FLUSH_ENV, text,
                    FLUSH_INTERVAL)
    return FLUSH_INTERVAL


def _unsafe(char: str) -> bool:
    # Cc: C0 and C1 controls (ESC, CSI U+009B); Cf: format characters such
    # as the bidi overrides that reorder what a terminal shows; Zl/Zp: line
    # and paragraph separators; Cs/Co/Cn: surrogates, private use, unassigned.
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")


def sanitise(raw: bytes | str, limit: int = MAX_TEXT) -> str:
    """Printable text of at most ``limit`` characters from a client-chosen value.

    Bytes are read as UTF-8 (invalid sequences become U+FFFD); every unsafe
    character (see :func:`_unsafe`) becomes U+FFFD too, so nothing a client
    sends can move a terminal's cursor or recolour it.
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = text[: limit * 4]  # bound the per-character work below
    cleaned = "".join("\ufffd" if _unsafe(ch) else ch for ch in text)
    return cleaned[:limit]


def printable(text: str) -> str:
    """``text`` for a terminal: unsafe characters as ``\\xNN``/``\\uNNNN`` escapes."""
    if not any(_unsafe(ch) or ch == "\\" for ch in text):
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif _unsafe(ch):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _user_agent(request: h11.Request | None) -> str:
    if request is None:
        return ""
    for name, value in request.headers:  # h11 gives names lowercased
        if name == b"user-agent":
            return sanitise(value)
    return ""


def _rfc3339(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


class Recorder:
    """One worker's sightings since its last flush (event-loop thread only)."""

    def __init__(self) -> None:
        self._pending: dict[int, Pending] = {}

    def note(self, serial: int, ip: str, request: h11.Request | None, route: str) -> None:
        """Record a use of ``serial``: one dict assignment, nothing else."""
        pending = self._pending
        if len(pending) < MAX_PENDING or serial in pending:
            pending[serial] = (time.time(), ip, request, route)

    def take(self) -> dict[int, Pending]:
        """Everything noted since the last take; the recorder starts empty."""
        batch, self._pending = self._pending, {}
        return batch

    def put_back(self, batch: Mapping[int, Pending]) -> None:
        """Return a batch that could not be written, keeping newer sightings."""
        for serial, entry in batch.items():
            current = self._pending.get(serial)
            if current is not None:
                if current[0] < entry[0]:
                    self._pending[serial] = entry
            elif len(self._pending) < MAX_PENDING:
                self._pending[serial] = entry

    def __len__(self) -> int:
        return len(self._pending)


def to_seen(batch: Mapping[int, Pending]) -> list[Seen]:
    """The rows a batch becomes; reads the requests' User-Agents (off the loop)."""
    return [Seen(serial, _rfc3339(moment), sanitise(ip, 64), _user_agent(request),
                 sanitise(route), moment)
            for serial, (moment, ip, request, route) in batch.items()]


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        # 0600 from the start: client IPs and User-Agents are personal data,
        # and SQLite gives its -wal/-shm files the database file's mode.
        with contextlib.suppress(FileExistsError):  # another worker was first
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a power cut may lose the last flush, never corrupt the file;
        # losing up to a flush interval of telemetry is acceptable.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def write_batch(state_dir: Path, rows: Iterable[Seen]) -> int:
    """Upsert ``rows`` into ``STATE/lastseen.sqlite3``, newest kept; the count.

    Blocking (SQLite, fsync): call it from an executor thread.
    """
    values = [(serial_hex(row.serial), row.last_seen, row.at, row.ip, row.user_agent,
               row.route) for row in rows]
    if not values:
        return 0
    conn = _connect(state_dir / DATABASE)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_UPSERT, values)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()
    return len(values)


def flush(state_dir: Path, batch: Mapping[int, Pending]) -> int:
    """:func:`to_seen` then :func:`write_batch`; for the executor."""
    return write_batch(state_dir, to_seen(batch))


def read_seen(state_dir: Path) -> dict[int, Seen]:
    """serial -> :class:`Seen` for every recorded certificate; {} when none yet.

    Read-only: ``ca list`` next to a running proxy changes nothing.
    """
    path = state_dir / DATABASE
    if not path.exists():
        return {}
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True,
                           isolation_level=None, timeout=BUSY_TIMEOUT)
    try:
        try:
            rows = conn.execute(
                "SELECT serial, last_seen, ip, user_agent, route, at FROM seen").fetchall()
        except sqlite3.OperationalError:  # created, table not yet: nothing seen
            return {}
    finally:
        conn.close()
    out: dict[int, Seen] = {}
    for serial, last_seen, ip, agent, route, at in rows:
        try:
            out[int(serial, 16)] = Seen(int(serial, 16), str(last_seen), str(ip), str(agent),
                                        str(route), float(at))
        except (TypeError, ValueError):
            continue  # a row certgate did not write; ignore it rather than fail the listing
    return out
