"""Last seen: when, from where, with what and on which route each built-in
certificate was last used.

Theory of operation
-------------------
The proxy answers many requests a second; the inventory needs "last used"
to the minute. So each worker keeps a :class:`Recorder`: one dict,
certificate fingerprint -> the newest sighting, updated by a single
assignment per request on the event loop (no parsing, no formatting, no
I/O: the entry holds the already-parsed identity and the request object,
and the User-Agent and the certificate's names are read from them later).
Every :data:`FLUSH_INTERVAL` seconds, and once more on a clean stop, the
worker swaps the dict for an empty one on the loop and writes the batch
from an executor thread into ``STATE/lastseen.sqlite3``.

Keyed by fingerprint, not serial: a serial is a number the issuer chose,
and an adopted, accidental CA (issue #17) often chose ``01`` for every
leaf (``openssl x509 -set_serial 01``). Two certificates with one serial
are two devices; only the SHA-256 of the DER tells them apart. Each row
also carries what a person needs to recognise a device the inventory does
not know (subject, issuer, serial, not after): ``ca list --unknown``.

Files written before that change have a table ``seen`` keyed by serial. It
is still read (``ca list`` keeps showing those last-seen times; see
:meth:`Sightings.legacy`) and never written: new sightings go to the table
``sightings``, and the first sighting of a certificate there supersedes its
old row.

Why a file of its own: the revocation watcher (:mod:`certgate.watch`) reloads
roles and CRLs whenever ``ca/inventory.sqlite3`` or its ``-wal`` changes; a
last-seen write there would wake every worker's watcher every flush. And the
inventory is the CA's source of truth, written under the CA lock; telemetry
must not queue behind (or in front of) an issuance.

Several workers (``workers: N``) each flush their own batch; the upsert keeps
whichever sighting is newer, so the order of flushes does not matter.

Hostile input: the User-Agent is whatever the client sent, and the
subject whatever the certificate's issuer wrote (for an accidental CA, any
script). Both are stored
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
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11

from certgate.ca.keys import serial_hex

if TYPE_CHECKING:
    from certgate.tls.identity import ClientIdentity

log = logging.getLogger("certgate.lastseen")

__all__ = [
    "DATABASE",
    "FLUSH_ENV",
    "FLUSH_INTERVAL",
    "MAX_TEXT",
    "Recorder",
    "Seen",
    "Sightings",
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
#: Characters kept of a User-Agent, route, subject or issuer. Browser
#: User-Agents run to about 150 characters; 256 keeps every real one (and
#: every subject a person would read) and bounds the file.
MAX_TEXT = 256
#: Certificates held between flushes. Every entry is a certificate the
#: built-in CA's key signed and the client proved it holds, so the count is
#: bounded by what that key signed; the cap only keeps a pathological case
#: (a leaked CA key minting leaves) from growing a worker's memory without
#: bound. An entry refers to an identity the identity cache usually holds
#: anyway (its DER, 0.5-2 KB, plus short strings): 10,000 entries are a few
#: tens of MB at the very worst. Beyond the cap, new certificates wait for
#: the next flush; ones already held keep being updated.
MAX_PENDING = 10_000
#: Waiting for another worker's flush; executor thread only, never the loop.
BUSY_TIMEOUT = 10.0

#: The table written since sightings are keyed by fingerprint. The table
#: ``seen`` (serial TEXT PRIMARY KEY, last_seen, at, ip, user_agent, route)
#: of earlier files is only read (:func:`read_seen`).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sightings (
    fingerprint TEXT PRIMARY KEY,  -- lowercase hex SHA-256 of the certificate's DER
    serial      TEXT NOT NULL,     -- ca.keys.serial_hex, as in the inventory
    subject     TEXT NOT NULL,     -- RFC 4514, sanitised
    cn          TEXT NOT NULL,     -- subject commonName, sanitised ("" if none)
    issuer      TEXT NOT NULL,     -- RFC 4514 DN of the CA certificate that signed it
    not_after   TEXT NOT NULL,     -- RFC 3339 UTC
    last_seen   TEXT NOT NULL,     -- RFC 3339 UTC, to the second, as shown
    at          REAL NOT NULL,     -- Unix time, sub-second: which sighting is newer
    ip          TEXT NOT NULL,
    user_agent  TEXT NOT NULL,
    route       TEXT NOT NULL
)
"""

_UPSERT = """
INSERT INTO sightings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(fingerprint) DO UPDATE SET
    last_seen = excluded.last_seen, at = excluded.at, ip = excluded.ip,
    user_agent = excluded.user_agent, route = excluded.route
WHERE excluded.at > sightings.at
"""

#: (time.time(), client IP, the request or None, route name, the verified
#: identity): what one request leaves behind, all of it references to
#: objects that exist anyway; turned into a :class:`Seen` off the loop.
Pending = tuple[float, str, "h11.Request | None", str, "ClientIdentity"]


@dataclass(frozen=True, slots=True)
class Seen:
    """The newest recorded use of one certificate.

    ``fingerprint`` and the certificate fields are empty in a row of the
    old ``seen`` table (keyed by serial, before fingerprints were kept).
    """

    serial: int
    last_seen: str  # RFC 3339 UTC (``2026-05-09T07:35:25Z``)
    ip: str
    user_agent: str
    route: str
    at: float = 0.0  # Unix time; orders two sightings in the same second
    fingerprint: str = ""  # lowercase hex SHA-256 of the DER
    subject: str = ""  # RFC 4514, sanitised
    cn: str = ""
    issuer: str = ""  # the DN of the CA certificate whose key signed it
    not_after: str = ""  # RFC 3339 UTC


@dataclass(frozen=True, slots=True)
class Sightings:
    """Everything ``STATE/lastseen.sqlite3`` holds, read once.

    ``by_fingerprint`` is the table ``sightings``; ``legacy`` the old table
    ``seen``, keyed by serial, from before the upgrade. Look a certificate
    up with :meth:`of`, never by serial alone.
    """

    by_fingerprint: Mapping[str, Seen] = field(default_factory=dict)
    legacy: Mapping[int, Seen] = field(default_factory=dict)

    def of(self, fingerprint: str, serial: int, *, legacy: bool = True) -> Seen | None:
        """The newest sighting of the certificate with this fingerprint.

        Only if it has none since the upgrade, and ``legacy`` allows it, the
        old row for its serial: that table only ever held certificates of
        certgate's own CA, whose 128-bit random serials do not repeat; the
        caller passes ``legacy=False`` when its inventory holds two
        certificates with this serial, so that neither inherits the other's
        use (see :func:`certgate.ca.listing.match_sightings`).
        """
        found = self.by_fingerprint.get(fingerprint)
        if found is None and legacy:
            found = self.legacy.get(serial)
        return found

    def unknown(self, known: Collection[str]) -> list[Seen]:
        """Sightings whose fingerprint is not in ``known``, newest first."""
        rows = [seen for fp, seen in self.by_fingerprint.items() if fp not in known]
        rows.sort(key=lambda seen: (seen.at, seen.fingerprint), reverse=True)
        return rows

    def __bool__(self) -> bool:
        return bool(self.by_fingerprint or self.legacy)


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
        self._pending: dict[str, Pending] = {}

    def note(self, identity: ClientIdentity, ip: str, request: h11.Request | None,
             route: str) -> None:
        """Record a use of ``identity``'s certificate: one dict assignment, nothing else."""
        pending = self._pending
        key = identity.fingerprint
        if len(pending) < MAX_PENDING or key in pending:
            pending[key] = (time.time(), ip, request, route, identity)

    def take(self) -> dict[str, Pending]:
        """Everything noted since the last take; the recorder starts empty."""
        batch, self._pending = self._pending, {}
        return batch

    def put_back(self, batch: Mapping[str, Pending]) -> None:
        """Return a batch that could not be written, keeping newer sightings."""
        for key, entry in batch.items():
            current = self._pending.get(key)
            if current is not None:
                if current[0] < entry[0]:
                    self._pending[key] = entry
            elif len(self._pending) < MAX_PENDING:
                self._pending[key] = entry

    def __len__(self) -> int:
        return len(self._pending)


def _seen(moment: float, ip: str, request: h11.Request | None, route: str,
          identity: ClientIdentity) -> Seen:
    # The verified issuer's DN, not the leaf's own issuer field: a leaf may
    # write any issuer name, only the signature says who issued it.
    issuer = identity.issuer.dn if identity.issuer is not None else identity.issuer_dn
    return Seen(identity.serial, _rfc3339(moment), sanitise(ip, 64), _user_agent(request),
                sanitise(route), moment, identity.fingerprint, sanitise(identity.dn),
                sanitise(identity.cn), sanitise(issuer), identity.not_after_rfc3339)


def to_seen(batch: Mapping[str, Pending]) -> list[Seen]:
    """The rows a batch becomes; formats and sanitises every field (off the loop)."""
    return [_seen(*entry) for entry in batch.values()]


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
    values = [(row.fingerprint, serial_hex(row.serial), row.subject, row.cn, row.issuer,
               row.not_after, row.last_seen, row.at, row.ip, row.user_agent, row.route)
              for row in rows]
    if any(not value[0] for value in values):
        raise ValueError("a sighting without a certificate fingerprint")
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


def flush(state_dir: Path, batch: Mapping[str, Pending]) -> int:
    """:func:`to_seen` then :func:`write_batch`; for the executor."""
    return write_batch(state_dir, to_seen(batch))


def _select(conn: sqlite3.Connection, query: str) -> list[Any]:
    try:
        return conn.execute(query).fetchall()
    except sqlite3.OperationalError:  # the table is not there (yet, or any more)
        return []


def _text(value: object) -> str:
    # What a terminal or JSON gets must be harmless even if the file was
    # written by something other than certgate: sanitised again on reading.
    return sanitise(value if isinstance(value, str) else str(value))


def read_seen(state_dir: Path) -> Sightings:
    """Every recorded sighting, both tables; empty when none yet.

    Read-only: ``ca list`` next to a running proxy changes nothing.
    """
    path = state_dir / DATABASE
    if not path.exists():
        return Sightings()
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True,
                           isolation_level=None, timeout=BUSY_TIMEOUT)
    try:
        new = _select(conn, "SELECT fingerprint, serial, subject, cn, issuer, not_after, "
                            "last_seen, ip, user_agent, route, at FROM sightings")
        old = _select(conn, "SELECT serial, last_seen, ip, user_agent, route, at FROM seen")
    finally:
        conn.close()
    by_fingerprint: dict[str, Seen] = {}
    for fingerprint, serial, subject, cn, issuer, not_after, last_seen, ip, agent, route, \
            at in new:
        try:
            key = str(fingerprint).lower()
            by_fingerprint[key] = Seen(
                int(str(serial), 16), _text(last_seen), _text(ip), _text(agent), _text(route),
                float(at), key, _text(subject), _text(cn), _text(issuer), _text(not_after))
        except (TypeError, ValueError):
            continue  # a row certgate did not write; ignore it rather than fail the listing
    legacy: dict[int, Seen] = {}
    for serial, last_seen, ip, agent, route, at in old:
        try:
            number = int(str(serial), 16)
            legacy[number] = Seen(number, _text(last_seen), _text(ip), _text(agent),
                                  _text(route), float(at))
        except (TypeError, ValueError):
            continue
    return Sightings(by_fingerprint, legacy)
