"""The hash-chained audit log ``STATE/ca/audit.jsonl``.

Theory of operation
-------------------
Each CA operation appends one JSON object on one line. Every line carries
``seq`` (its 1-based line number) and ``prev``, the SHA-256 hex of the
previous line's bytes (without its newline; 64 zeros for the first line).
Editing, deleting or reordering lines therefore breaks the chain.

A chain alone cannot say *which* line was edited (an edit to line N shows up
as a bad ``prev`` in line N+1) and cannot see the last lines being cut off.
So the inventory database also records each line's hash when it is written
(table ``audit_chain``); :func:`verify` compares against both and names the
first bad line exactly. Someone who can rewrite both the file and the
database defeats this, as with any unkeyed log; the point is to make
accidents and casual edits visible, not to resist root.

Entries are first queued in the database in the same transaction as the
operation they describe (``audit_outbox``), then appended here with
``O_APPEND`` and fsync, one at a time, each followed by a small transaction
that records its hash and dequeues it. A crash between append and record
leaves the appended line as the last one; the next flush sees its ``seq``
and records it instead of appending it twice. No line ever holds a key or a
password: callers pass only names, serials, roles and times.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import pwd
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from certgate.errors import CAError
from certgate.fsutil import fsync_dir

GENESIS = "0" * 64
_TAIL_CHUNK = 4096


class AuditError(CAError):
    """The audit log fails verification at ``line`` (1-based)."""

    def __init__(self, line: int, why: str) -> None:
        self.line = line
        self.why = why
        super().__init__(f"audit log line {line}: {why}")


#: The console admin a CA operation is done for (issue #14): the console sets
#: it around its CA calls, in the thread that makes them, and every audit
#: entry queued meanwhile names that admin (CN, serial, fingerprint) besides
#: the OS user certgate runs as.
ACTING_ADMIN: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "certgate_acting_admin", default=None)


def actor() -> str:
    """The OS user performing the operation (effective uid, as sudo sets it)."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def encode_entry(body: Mapping[str, Any], seq: int, prev: str) -> bytes:
    """One log line (with newline): the body, then ``seq`` and ``prev``."""
    entry = dict(body)
    entry["seq"] = seq
    entry["prev"] = prev
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def last_line(path: Path) -> bytes | None:
    """The last complete line of the log, read from the end (logs only grow)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        data = b""
        pos = end
        while pos > 0:
            pos = max(0, pos - _TAIL_CHUNK)
            handle.seek(pos)
            data = handle.read(end - pos)
            if data.rstrip(b"\n").count(b"\n") >= 1:
                break
    lines = data.rstrip(b"\n").split(b"\n")
    return lines[-1] if lines and lines[-1] else None


def last_entry(path: Path) -> tuple[dict[str, Any] | None, int, str]:
    """(body without seq/prev, seq, hash) of the last line; (None, 0, GENESIS) if empty.

    The body lets the flush recognise its own entry after a crash, rather
    than trusting any line that merely claims a high ``seq``.
    """
    line = last_line(path)
    if line is None:
        return None, 0, GENESIS
    try:
        entry = json.loads(line)
        seq = int(entry.pop("seq"))
        entry.pop("prev")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, -1, line_hash(line)  # unparsable tail: verify will report it
    return entry, seq, line_hash(line)


def append(path: Path, line: bytes) -> None:
    """Append one line durably: O_APPEND so concurrent writers cannot interleave
    within a line, fsync so an acknowledged operation's entry survives a crash."""
    existed = path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(path.parent)


def verify(data: bytes, recorded: Mapping[int, str] | None = None) -> int:
    """Check the whole log; return the number of entries.

    Args:
        data: the log file's bytes.
        recorded: seq -> hash as recorded in the database, if available.

    Raises:
        AuditError: naming the first bad line and why.
    """
    if data and not data.endswith(b"\n"):
        count = data.count(b"\n") + 1
        raise AuditError(count, "incomplete last line (no newline): truncated or edited")
    lines = data.split(b"\n")[:-1] if data else []
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int):
                raise ValueError("no seq")
            if not isinstance(entry.get("prev"), str):
                raise ValueError("no prev")
        except ValueError:
            raise AuditError(number, "not a valid audit entry (edited)") from None
        entries.append(entry)
    later = {int(entry["seq"]): number for number, entry in enumerate(entries, 1)}
    prev = GENESIS
    for number, (line, entry) in enumerate(zip(lines, entries, strict=True), 1):
        seq = int(entry["seq"])
        if seq != number:
            if later.get(number, 0) > number:
                why = f"holds entry {seq}, entry {number} comes later: reordered"
            elif seq > number:
                why = f"holds entry {seq} where entry {number} belongs: deleted"
            else:
                why = f"holds entry {seq} again or out of order: reordered"
            raise AuditError(number, why)
        digest = line_hash(line)
        if recorded is not None and number in recorded and recorded[number] != digest:
            raise AuditError(number, "differs from the hash recorded when it was written: edited")
        if entry["prev"] != prev:
            if number == 1:
                raise AuditError(1, "prev is not the genesis hash: edited or lines deleted")
            raise AuditError(
                number - 1, f"its hash does not match the prev in line {number}: edited"
            )
        prev = digest
    if recorded:
        written = max(recorded)
        if written > len(lines):
            raise AuditError(
                len(lines) + 1,
                f"missing: {written} entries were written but the log ends after "
                f"{len(lines)}: deleted",
            )
    return len(lines)
