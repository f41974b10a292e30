"""Time in the CA: UTC only, RFC 3339 text, and "7d"-style durations.

The inventory stores instants as fixed-width RFC 3339 UTC strings
(``2026-05-09T07:35:25Z``) so that SQLite's text comparison orders them
correctly and ``WHERE not_after > ?`` needs no date functions.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from certgate.errors import UsageError

_DURATION = re.compile(r"\s*(\d+)\s*([smhdw]?)\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


def utcnow() -> datetime:
    """Now, to the second: X.509 times carry no fractions (RFC 5280 4.1.2.5)."""
    return datetime.now(UTC).replace(microsecond=0)


def rfc3339(moment: datetime) -> str:
    """Format an aware datetime as fixed-width RFC 3339 UTC (``...Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    """Inverse of :func:`rfc3339`."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """Parse ``30d``, ``12h``, ``90m``, ``2w`` or a bare number of days.

    Raises:
        UsageError: the text is not a positive duration.
    """
    match = _DURATION.fullmatch(text)
    if not match or int(match.group(1)) <= 0:
        raise UsageError(
            f"invalid duration {text!r}: use a positive number with s, m, h, d or w (e.g. 7d)"
        )
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def lifetime(days: int | None, hours: int | None, default: timedelta) -> timedelta:
    """Resolve ``--days`` / ``--hours`` (mutually exclusive) to a validity period."""
    if days is not None and hours is not None:
        raise UsageError("give either --days or --hours, not both")
    if days is not None:
        if days <= 0:
            raise UsageError("--days must be positive")
        return timedelta(days=days)
    if hours is not None:
        if hours <= 0:
            raise UsageError("--hours must be positive")
        return timedelta(hours=hours)
    return default
